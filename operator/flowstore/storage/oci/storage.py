"""The ``OCI`` storage: each stored flow revision is its own small image in a registry, made to
be mounted read-only by digest into a run Pod (`volumes[].image`; docs/oci-volumes.md).

An image holds the file at the location (the script, the pickle envelope or the bundle as
stored) plus, for a bundle, its files unpacked, and the file manifest (:mod:`.image`). The
location names a tag too (:func:`location_tag`), so the seed's interface (``put_bytes`` /
``get_bytes`` / ``stat`` / ``delete`` by location) works as on any object store; what status
records, and what agents and Pods read, is the image *digest* (``storage_state.imageDigest``),
which no later push can move.

Credentials are a ``kubernetes.io/dockerconfigjson`` Secret (the same Secret can serve the
kubelet as an imagePullSecret). Without one the operator is anonymous to the registry; an
agent reading ``status.storage`` uses its Docker config file, as ``docker login`` writes it.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Mapping
from typing import Any

from flowstore.artifacts import bundle
from flowstore.artifacts.signing import Signer
from flowstore.storage.base import ObjectInfo, Storage, StoredArtifact, sha256_hex
from flowstore.storage.docker import cosign
from flowstore.storage.docker.credentials import registry_credentials
from flowstore.storage.docker.oci import RegistryClient
from flowstore.storage.errors import InvalidConfig, NotFound, Unavailable
from flowstore.storage.oci.image import FlowImage, FlowImageError, build_flow_image, check_path
from flowstore.storage.oci.registry import StoredImage, push_flow_image, read_flow_image
from flowstore.storage.policy import ServePolicy

#: ``host[:port]/path`` with no tag and no digest (the distribution spec's repository names)
_REPOSITORY = re.compile(r"^(?P<host>[A-Za-z0-9.-]+(:[0-9]{1,5})?)/(?P<path>[a-z0-9]+([._-][a-z0-9]+)*"
                         r"(/[a-z0-9]+([._-][a-z0-9]+)*)*)$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
#: where a bundle's bytes, as stored, sit in its image (its files are unpacked at the root)
BUNDLE_LOCATION = ".flowstore/bundle.tar.gz"


def location_tag(location: str) -> str:
    """The tag a location's newest image carries: the location's sha256, shortened (a tag is at
    most 128 characters of ``[A-Za-z0-9_.-]``; a location may be anything)."""
    return "loc-" + hashlib.sha256(location.encode("utf-8")).hexdigest()[:40]


def parse_repository(repository: Any) -> tuple[str, str]:
    """(registry host, repository path) of ``host[:port]/path``; InvalidConfig otherwise."""
    match = _REPOSITORY.match(repository) if isinstance(repository, str) else None
    if match is None:
        raise InvalidConfig(f"oci `repository` {repository!r} must be REGISTRY_HOST[:PORT]/PATH in lower case, "
                            "with no tag or digest (e.g. registry.example.com/flows/etl)")
    return match.group("host"), match.group("path")


def image_files(location: str, data: bytes) -> dict[str, bytes]:
    """What the image of the artifact `data` stored at `location` holds: that file and, for a
    bundle, its files unpacked beside it (checked as the bundle format checks them)."""
    try:
        check_path(location)
    except FlowImageError as exc:
        raise InvalidConfig(f"an OCI storage cannot store at {location!r}: {exc}") from None
    files = {location: data}
    if location == BUNDLE_LOCATION:
        try:
            unpacked = bundle.unpack(data)
        except bundle.BundleError as exc:
            raise InvalidConfig(f"the bundle cannot be unpacked into its image: {exc}") from None
        clash = sorted(set(unpacked.files) & set(files))
        if clash:
            raise InvalidConfig(f"the bundle holds {clash[0]!r}, where its image keeps the bundle itself")
        files.update(unpacked.files)
    return files


class OCI(Storage):
    """Flows stored as one small OCI image per revision in `repository`.

    Args:
        repository: ``host[:port]/path`` (no tag, no digest).
        plain_http: talk to the registry over plain HTTP (a local registry), not HTTPS.
        credentials: a ``kubernetes.io/dockerconfigjson`` Secret's data; None: anonymous, or for
            an agent (`docker_config`) the Docker config file.
        image_digest: the image a revision was stored in (``status.storage.imageDigest``):
            reads of a location this instance did not push go there.
        stored_flow: ``NAMESPACE/NAME`` of the StoredFlow, labelled on the images pushed.
        **kwargs: the base :class:`Storage` options.
    """

    type_name = "OCI"
    default_label = "oci-flow-storage"
    family = "oci"

    def __init__(self, repository: str, *, plain_http: bool = False, credentials: Mapping[str, str] | None = None,
                 docker_config: bool = False, image_digest: str | None = None, stored_flow: str = "",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.host, self.path = parse_repository(repository)
        self.repository = repository
        self.plain_http = bool(plain_http)
        if image_digest is not None and not _DIGEST.match(str(image_digest)):
            raise InvalidConfig(f"oci imageDigest {image_digest!r} is not sha256:<64 hex digits>")
        self.image_digest = image_digest
        self.stored_flow = stored_flow
        username = password = source = None
        if credentials is not None or docker_config:
            username, password, source = registry_credentials(self.host, credentials)
        self.credentials_source = source
        hint = f"check the registry credentials in {source}" if source else \
            "set spec.oci.credentialsSecretRef to a kubernetes.io/dockerconfigjson Secret"
        self._client = RegistryClient(self.host, username, password, scheme="http" if self.plain_http else "https",
                                      auth_hint=hint)
        self._lock = threading.Lock()
        self._digests: dict[str, str] = {}  # location -> digest of the image this instance pushed there

    def __repr__(self) -> str:  # never shows credentials
        return f"OCI(repository={self.repository!r}, plain_http={self.plain_http!r})"

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, credentials: Mapping[str, str] | None = None) -> OCI:
        # a document with `type` is an agent's (status.storage): it may use its own Docker config;
        # the operator (a FlowStorage spec) never does: anonymous without the spec's Secret
        return cls(config.get("repository"),  # type: ignore[arg-type]  # checked by parse_repository
                   plain_http=bool(config.get("plainHTTP", False)), credentials=credentials,
                   docker_config=credentials is None and "type" in config,
                   image_digest=config.get("imageDigest"), **cls.common_kwargs(config))

    @classmethod
    def for_operator(cls, config: Mapping[str, Any], *, credentials: Mapping[str, str] | None,
                     policy: ServePolicy) -> OCI:
        """A FlowStorage's OCI storage in the operator: its registry host checked against the
        operator's endpoint policy (never a metadata or link-local address; loopback and private
        ones only with --allow-private-endpoints). Checked when the storage is opened (a clear
        error), then on every connection of the registry client, which connects only to the
        addresses it checked: redirects, token services and upload locations included."""
        if "type" in config:
            raise InvalidConfig("a FlowStorage spec has no `type`")
        storage = cls.from_config(config, credentials=credentials)
        host, _, port = storage.host.rpartition(":") if ":" in storage.host else (storage.host, "", "")
        try:
            policy.endpoints.check_host(host, int(port) if port else None)
        except OSError as exc:
            raise Unavailable(f"cannot resolve registry host {host}: {exc.strerror or exc}") from None
        storage._client.restrict(policy.endpoints)
        return storage

    @classmethod
    def _config_from_seed(cls, doc: Mapping[str, Any]) -> dict[str, Any]:
        return {"repository": doc.get("repository"), "plainHTTP": bool(doc.get("plain_http") or False),
                **({"imageDigest": doc["image_digest"]} if doc.get("image_digest") else {})}

    def _status_config(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"repository": self.repository, "plainHTTP": self.plain_http}
        if self.image_digest:
            doc["imageDigest"] = self.image_digest
        return doc

    def _seed_config(self) -> dict[str, Any]:
        # Prefect 1.4.1 has no OCI storage: its schema cannot load this type whatever we write
        return {"repository": self.repository, "plain_http": self.plain_http, "image_digest": self.image_digest,
                "stored_as_script": self.stored_as_script}

    def restore_state(self, state: Mapping[str, Any] | None) -> None:
        digest = (state or {}).get("imageDigest")
        self.image_digest = str(digest) if digest and _DIGEST.match(str(digest)) else None

    # ------------------------------------------------------------------ images
    def reference(self, digest: str) -> str:
        """``host/path@sha256:…``: what a Pod's image volume names."""
        return f"{self.repository}@{digest}"

    def push_revision(self, location: str, data: bytes, *, stored_flow: str | None = None) -> StoredArtifact:
        """Push the image of `data` at `location` (labelled with `stored_flow`, else this
        storage's) under its own digest, then move the location's tag to it. The artifact's
        ``storage_state`` names the digest; pushing the same bytes again sends nothing."""
        files = image_files(location, data)
        try:
            image: FlowImage = build_flow_image(files, stored_flow=self.stored_flow if stored_flow is None
                                                else stored_flow, flow_digest="sha256:" + sha256_hex(data))
        except FlowImageError as exc:
            raise InvalidConfig(f"cannot make the image of {location!r}: {exc}") from None
        pushed = push_flow_image(self._client, self.path, image)
        push_flow_image(self._client, self.path, image, tag=location_tag(location))  # the blobs are there
        with self._lock:
            self._digests[location] = pushed.digest
        return StoredArtifact(location=location, url=self.url_for(location), sha256=sha256_hex(data),
                              size=len(data), storage_state={"imageDigest": pushed.digest})

    def read_image(self, digest: str) -> StoredImage:
        """The flow image `digest` of this repository, checked (labels, file manifest)."""
        return read_flow_image(self._client, self.path, digest)

    def sign_image(self, image_digest: str, signer: Signer, *, image_name: str | None = None,
                   annotations: Mapping[str, str] | None = None) -> str:
        """Sign the image `image_digest` of this repository as cosign does and push the signature
        beside it (the Docker storage's :mod:`flowstore.storage.docker.cosign`, so ``cosign verify
        --key`` accepts it offline); the signature's tag. `image_name` (``host/path`` as status
        records it; default: this repository) must be on this storage's registry."""
        if not _DIGEST.match(image_digest or ""):
            raise InvalidConfig(f"{image_digest!r} is not an image manifest digest (sha256:…)")
        host, path = parse_repository(image_name or self.repository)
        if host != self.host:
            raise InvalidConfig(f"image {image_name} is not on this storage's registry {self.host}: not signed")
        return cosign.sign_image(self._client, path, f"{host}/{path}", image_digest, signer, annotations=annotations)

    def delete_image(self, digest: str) -> None:
        """Delete the manifest `digest` (and the tags on it); gone counts as deleted. Blobs go at
        the registry's garbage collection."""
        self._client.delete_manifest(self.path, digest)

    def _digest_for(self, location: str) -> str | None:
        with self._lock:
            known = self._digests.get(location)
        return known or self.image_digest or self._client.manifest_digest(self.path, location_tag(location))

    # ------------------------------------------------------------------ primitives
    def put_bytes(self, location: str, data: bytes, *, idempotency_key: str | None = None) -> StoredArtifact:
        return self.push_revision(location, data)

    def get_bytes(self, location: str) -> bytes:
        digest = self._digest_for(location)
        if digest is None:
            raise NotFound(f"no flow artifact at {self.url_for(location)}; was the flow built (stored)?")
        try:
            check_path(location)
        except FlowImageError:
            raise NotFound(f"no flow artifact at {self.url_for(location)} (not a path an image holds)") from None
        return self._client.read_file(self.path, digest, "/" + location)

    def stat(self, location: str) -> ObjectInfo | None:
        try:
            data = self.get_bytes(location)
        except NotFound:
            return None
        return ObjectInfo(size=len(data), sha256=sha256_hex(data))

    def delete(self, location: str) -> None:
        with self._lock:
            known = self._digests.pop(location, None)
        digest = known or self._client.manifest_digest(self.path, location_tag(location))
        if digest is not None:
            self.delete_image(digest)

    def url_for(self, location: str) -> str:
        return f"oci://{self.repository}:{location_tag(location)}/{location}"

    def check_container(self) -> None:
        self._client.ping()


__all__ = ["BUNDLE_LOCATION", "OCI", "image_files", "location_tag", "parse_repository"]
