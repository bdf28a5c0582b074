"""Flow images to and from a registry, through the Docker storage's registry client
(:class:`flowstore.storage.docker.oci.RegistryClient`: basic or bearer auth, digests verified,
the storage error taxonomy)."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping

from flowstore.storage.docker.oci import RegistryClient
from flowstore.storage.errors import IntegrityError, Rejected
from flowstore.storage.oci.image import (
    LABEL_FLOW_DIGEST,
    LABEL_MANIFEST_DIGEST,
    LABEL_STORED_FLOW,
    MANIFEST_PATH,
    MEDIA_OCI_MANIFEST,
    FlowImage,
    sha256_digest,
)

# https://github.com/opencontainers/distribution-spec/blob/main/spec.md#pulling-manifests
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")


@dataclasses.dataclass(frozen=True)
class Pushed:
    """A pushed flow image: its digest and the bytes sent (0 when the registry had it all)."""

    digest: str
    bytes_sent: int


@dataclasses.dataclass(frozen=True)
class StoredImage:
    """What a registry holds under a flow image's digest, checked: the labels and the file
    manifest (whose sha256 matches the label)."""

    digest: str
    stored_flow: str
    flow_digest: str
    files: Mapping[str, str]  # path -> sha256:…


def push_flow_image(client: RegistryClient, repo: str, image: FlowImage, tag: str | None = None) -> Pushed:
    """Push `image` to `repo`: its blobs unless the registry has them, then the manifest under
    `tag` or, without one, under its own digest (nothing a later push can move)."""
    if tag is not None and not _TAG.match(tag):
        raise Rejected(f"{tag!r} is not a valid image tag")
    sent = client.push_blob(repo, image.layer) + client.push_blob(repo, image.config)
    digest = client.push_manifest(repo, tag or image.digest, image.manifest, MEDIA_OCI_MANIFEST)
    if digest != image.digest:  # push_manifest hashes what it sent: only a bug gets here
        raise IntegrityError(f"pushed {repo} as {digest}, expected {image.digest}")
    return Pushed(digest=digest, bytes_sent=sent)


def read_flow_image(client: RegistryClient, repo: str, digest: str) -> StoredImage:
    """The flow image `repo@digest`, read back and checked: the manifest by its digest, the
    configuration's flowstore labels, and the file manifest against the label's sha256. Anything
    else (another image, edited labels, a manifest file that does not match) is IntegrityError."""
    manifest = client.manifest(repo, digest)  # verified against `digest`
    config = client.config(repo, manifest)
    labels = (config.get("config") or {}).get("Labels") or {}
    if not isinstance(labels, Mapping):
        raise IntegrityError(f"{repo}@{digest}: the image configuration's labels are not a mapping")
    stored_flow, flow_digest, manifest_digest = (labels.get(k) for k in (LABEL_STORED_FLOW, LABEL_FLOW_DIGEST,
                                                                           LABEL_MANIFEST_DIGEST))
    if not isinstance(stored_flow, str) or not all(isinstance(v, str) and v for v in (flow_digest, manifest_digest)):
        raise IntegrityError(f"{repo}@{digest} is not a flow image (its flowstore labels are missing)")
    raw = client.read_file(repo, digest, "/" + MANIFEST_PATH)
    if sha256_digest(raw) != manifest_digest:
        raise IntegrityError(f"{repo}@{digest}: {MANIFEST_PATH} does not match the image's label")
    try:
        doc = json.loads(raw)
    except ValueError:
        raise IntegrityError(f"{repo}@{digest}: {MANIFEST_PATH} is not JSON") from None
    files = doc.get("files") if isinstance(doc, dict) else None
    if (not isinstance(files, dict) or doc.get("storedFlow") != stored_flow or doc.get("flowDigest") != flow_digest
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items())):
        raise IntegrityError(f"{repo}@{digest}: {MANIFEST_PATH} does not describe the labelled flow")
    return StoredImage(digest=manifest.digest, stored_flow=str(stored_flow), flow_digest=str(flow_digest),
                       files=dict(files))


__all__ = ["Pushed", "StoredImage", "push_flow_image", "read_flow_image"]
