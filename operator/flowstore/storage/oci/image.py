"""One flow revision as a small OCI image, written without a daemon (pure: bytes in, bytes out).

A Pod mounts such an image read-only by digest (`volumes[].image`, Kubernetes >= 1.35 with
containerd >= 2.1), so the image is made for mounting, not for running: one layer holding the
flow's files at the image root beside :data:`MANIFEST_PATH` (the sha256 of every file), and a
proper image configuration (containerd mounts images, not bare artifacts: containerd#11907)
whose labels name the StoredFlow and the flow's digest.

Deterministic by construction, so the same revision gives the same image digest on any machine:
the tar has fixed owners, modes and times and sorted entries (:func:`deterministic_tar`), the
layer is stored uncompressed (gzip output differs between zlib builds; flows are small), and the
configuration and manifest are compact JSON with sorted keys and no creation time.

Specifications: https://github.com/opencontainers/image-spec/blob/main/manifest.md,
https://github.com/opencontainers/image-spec/blob/main/config.md and layer.md (uncompressed
``application/vnd.oci.image.layer.v1.tar`` layers; ``diff_ids`` are the uncompressed digests).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import posixpath
import re
from collections.abc import Mapping
from typing import Any

from flowstore.storage.docker.dockerfile import deterministic_tar

MEDIA_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"

#: the file manifest, at the image root (so at the root of the mount)
MANIFEST_PATH = "flowstore-manifest.json"
MANIFEST_SCHEMA = 1
#: image configuration labels
LABEL_STORED_FLOW = "dev.flowstore.stored-flow"  # NAMESPACE/NAME
LABEL_FLOW_DIGEST = "dev.flowstore.flow-digest"  # the digest the revision was stored under
LABEL_MANIFEST_DIGEST = "dev.flowstore.manifest-digest"  # sha256 of MANIFEST_PATH's bytes
#: bounds on what one image holds (a flow is a script or a small bundle)
MAX_FILES = 10_000
MAX_PATH = 1024

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
# a Kubernetes namespace and object name (DNS subdomain), as the API server allows them
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


class FlowImageError(ValueError):
    """The files or names given cannot make a flow image (said in the message)."""


@dataclasses.dataclass(frozen=True)
class FlowImage:
    """A flow image ready to push: the layer (an uncompressed tar), the configuration and the
    manifest, each as the exact bytes whose sha256 the manifest (or, for the manifest, the
    image reference) names."""

    layer: bytes
    config: bytes
    manifest: bytes
    files_manifest: bytes

    @property
    def digest(self) -> str:
        """The image's digest: what a Pod pins (`repository@sha256:…`)."""
        return sha256_digest(self.manifest)

    @property
    def layer_digest(self) -> str:
        return sha256_digest(self.layer)

    @property
    def config_digest(self) -> str:
        return sha256_digest(self.config)


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _compact(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def check_path(path: str) -> str:
    """`path` if it can name a file of the image: relative, normalized, no ``..``, not the
    manifest's own name; else :class:`FlowImageError`."""
    if not isinstance(path, str) or not path or len(path) > MAX_PATH:
        raise FlowImageError(f"file name {path!r} is empty or longer than {MAX_PATH} characters")
    if path.startswith("/") or "\\" in path or "\x00" in path or posixpath.normpath(path) != path:
        raise FlowImageError(f"file name {path!r} is not a normalized relative path")
    if path == ".." or path.startswith("../") or path == ".":
        raise FlowImageError(f"file name {path!r} points outside the image")
    if path == MANIFEST_PATH:
        raise FlowImageError(f"file name {path!r} is reserved for the file manifest")
    return path


def files_manifest(files: Mapping[str, bytes], *, stored_flow: str, flow_digest: str) -> bytes:
    """The manifest file: which StoredFlow revision the files are and the sha256 of each (what
    a consumer checks the mounted files against)."""
    doc = {
        "schema": MANIFEST_SCHEMA,
        "storedFlow": stored_flow,
        "flowDigest": flow_digest,
        "files": {path: sha256_digest(files[path]) for path in sorted(files)},
    }
    return _compact(doc) + b"\n"


def _check_names(stored_flow: str, flow_digest: str) -> None:
    namespace, sep, name = stored_flow.partition("/")
    if stored_flow and (not sep or not _NAME.match(namespace) or not _NAME.match(name) or len(namespace) > 63):
        raise FlowImageError(f"stored flow {stored_flow!r} is not NAMESPACE/NAME")
    if not _DIGEST.match(flow_digest):
        raise FlowImageError(f"flow digest {flow_digest!r} is not sha256:<64 hex digits>")


def build_flow_image(files: Mapping[str, bytes], *, stored_flow: str, flow_digest: str) -> FlowImage:
    """The image of one revision: `files` (relative path -> content; at least one) in one layer
    with the file manifest, labelled with `stored_flow` (``NAMESPACE/NAME``; empty for a flow
    stored outside a cluster, through the seed's interface) and `flow_digest`.
    The same arguments always give the same bytes, hence the same :attr:`FlowImage.digest`."""
    _check_names(stored_flow, flow_digest)
    if not files:
        raise FlowImageError("a flow image needs at least one file")
    if len(files) > MAX_FILES:
        raise FlowImageError(f"a flow image holds at most {MAX_FILES} files, not {len(files)}")
    for path, data in files.items():
        check_path(path)
        if not isinstance(data, bytes):
            raise FlowImageError(f"file {path!r}: content must be bytes")
    directories = {posixpath.dirname(p) for p in files} - {""}
    clashes = sorted(p for p in files if p in directories or any(d.startswith(p + "/") for d in directories))
    if clashes:
        raise FlowImageError(f"{clashes[0]!r} is both a file and a directory")
    manifest_file = files_manifest(files, stored_flow=stored_flow, flow_digest=flow_digest)
    layer = deterministic_tar({**files, MANIFEST_PATH: manifest_file})  # parents: root-owned 0755
    config = _compact({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Labels": {
            LABEL_STORED_FLOW: stored_flow,
            LABEL_FLOW_DIGEST: flow_digest,
            LABEL_MANIFEST_DIGEST: sha256_digest(manifest_file),
        }},
        "rootfs": {"type": "layers", "diff_ids": [sha256_digest(layer)]},
        "history": [{"created_by": f"flowstore: {stored_flow} {flow_digest}"}],
    })
    manifest = _compact({
        "schemaVersion": 2,
        "mediaType": MEDIA_OCI_MANIFEST,
        "config": {"mediaType": MEDIA_OCI_CONFIG, "digest": sha256_digest(config), "size": len(config)},
        "layers": [{"mediaType": MEDIA_OCI_LAYER_TAR, "digest": sha256_digest(layer), "size": len(layer)}],
    })
    return FlowImage(layer=layer, config=config, manifest=manifest, files_manifest=manifest_file)


__all__ = [
    "LABEL_FLOW_DIGEST", "LABEL_MANIFEST_DIGEST", "LABEL_STORED_FLOW", "MANIFEST_PATH", "MEDIA_OCI_CONFIG",
    "MEDIA_OCI_LAYER_TAR", "MEDIA_OCI_MANIFEST", "FlowImage", "FlowImageError", "build_flow_image", "check_path",
    "files_manifest", "sha256_digest",
]
