"""Images assembled without a daemon: layers appended to a base image (pure: bytes in, bytes out).

The Docker storage builds its base image (dependencies, files, runtime) with a daemon once, and
puts each flow on top as a layer of its own made here, the way ko and Jib add application
layers: a deterministic tar of the flow file (and its parent directories), gzip-compressed
with a fixed header, so the same flow always gives the same layer digest and a registry that
has it is never sent it again. :func:`assemble` writes the image configuration (the base's, with
the new layers' diff IDs, history entries and labels) and the manifest (the base's media types).

Specifications: the image manifest v2 schema 2 and OCI image spec (layers, ``rootfs.diff_ids``
= digests of the uncompressed layer tars, ``history`` entries for non-empty layers):
https://distribution.github.io/distribution/spec/manifest-v2-2/ and
https://github.com/opencontainers/image-spec/blob/main/config.md
"""

from __future__ import annotations

import copy
import dataclasses
import gzip
import hashlib
import json
import posixpath
import tarfile
from collections.abc import Mapping, Sequence
from typing import Any

from flowstore.storage.docker.dockerfile import deterministic_tar

MEDIA_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MEDIA_DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MEDIA_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


class ImageAssemblyError(ValueError):
    """The base image cannot be extended (an unsupported manifest or configuration)."""


@dataclasses.dataclass(frozen=True)
class Layer:
    """One layer: `blob` is the gzip-compressed tar whose digest is `digest`; `diff_id` is the
    digest of the uncompressed tar (the image configuration lists those)."""

    blob: bytes
    digest: str
    diff_id: str
    created_by: str
    comment: str = ""

    @property
    def size(self) -> int:
        return len(self.blob)


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def file_layer(path: str, data: bytes, *, comment: str = "",
               directories: Mapping[str, tarfile.TarInfo] | None = None) -> Layer:
    """A layer holding the file `path` (absolute, in the image) with `data`, mode 0644, owned
    by root. Like ``COPY``, it leaves the directories above it as the layers below have them:
    `directories` (absolute path -> the base image's tar header of that directory, see
    :meth:`flowstore.storage.docker.oci.RegistryClient.directory_entries`) go in the layer as the base
    has them. That matters on overlay stores (Docker's overlay2, podman's and containerd's
    overlay): a layer is unpacked on its own there, a parent it lacks is created root-owned 0755,
    and the merged image shows that directory instead of the base's. Parents missing from
    `directories` (not in the base) are left out and created 0755 when the layer is unpacked."""
    return files_layer({path: data}, comment=comment, created_by=f"flowstore: COPY {path}",
                       directories=directories)


def files_layer(files: Mapping[str, bytes], *, comment: str = "", created_by: str = "",
                directories: Mapping[str, tarfile.TarInfo] | None = None) -> Layer:
    """A layer holding `files` (absolute image path -> content), each as :func:`file_layer`
    holds one, with those of `directories` that are parents of its files."""
    for path in files:
        if not path.startswith("/") or posixpath.normpath(path) != path:
            raise ImageAssemblyError(f"{path!r} is not a normalized absolute path")
    wanted = {parent for path in files for parent in parent_directories(path)}
    tar = deterministic_tar({path.lstrip("/"): data for path, data in files.items()}, parents=False,
                            directories={d.lstrip("/"): meta for d, meta in (directories or {}).items()
                                         if d in wanted})
    # mtime=0 and no file name in the gzip header: the same tar always compresses the same way
    blob = gzip.compress(tar, compresslevel=6, mtime=0)
    return Layer(blob=blob, digest=_sha256(blob), diff_id=_sha256(tar),
                 created_by=created_by or f"flowstore: COPY {' '.join(sorted(files))}", comment=comment)


def parent_directories(path: str) -> list[str]:
    """The directories above absolute `path`, nearest first, ``/`` left out."""
    out, parent = [], posixpath.dirname(path)
    while parent not in ("/", ""):
        out.append(parent)
        parent = posixpath.dirname(parent)
    return out


def _layer_media_type(manifest_type: str) -> str:
    return MEDIA_OCI_LAYER if manifest_type == MEDIA_OCI_MANIFEST else MEDIA_DOCKER_LAYER


def assemble(base_manifest: Mapping[str, Any], base_config: Mapping[str, Any], layers: Sequence[Layer],
             labels: Mapping[str, str]) -> tuple[bytes, bytes, str]:
    """(config blob, manifest, manifest media type) of the base image with `layers` on top and
    `labels` merged into its labels. Deterministic: the same inputs give the same bytes (the
    creation time is the base image's)."""
    media_type = str(base_manifest.get("mediaType") or "")
    if not media_type:  # OCI manifests may leave it out; the config's type tells
        config_type = str((base_manifest.get("config") or {}).get("mediaType") or "")
        media_type = MEDIA_OCI_MANIFEST if config_type == MEDIA_OCI_CONFIG else MEDIA_DOCKER_MANIFEST
    if media_type not in (MEDIA_DOCKER_MANIFEST, MEDIA_OCI_MANIFEST):
        raise ImageAssemblyError(f"cannot add layers to a manifest of type {media_type!r}")
    rootfs = base_config.get("rootfs")
    if not isinstance(rootfs, Mapping) or rootfs.get("type") != "layers":
        raise ImageAssemblyError("the base image configuration has no layer list (rootfs)")
    base_layers = list(base_manifest.get("layers") or [])
    if len(base_layers) != len(rootfs.get("diff_ids") or []):
        raise ImageAssemblyError(f"the base image has {len(base_layers)} layers but its configuration lists "
                                 f"{len(rootfs.get('diff_ids') or [])} diff IDs")
    config = copy.deepcopy(dict(base_config))
    config["rootfs"] = {"type": "layers", "diff_ids": [*rootfs.get("diff_ids", []), *(x.diff_id for x in layers)]}
    created = config.get("created")
    history = list(config.get("history") or [])
    for layer in layers:
        entry = {"created_by": layer.created_by}
        if created:
            entry["created"] = created
        if layer.comment:
            entry["comment"] = layer.comment
        history.append(entry)
    config["history"] = history
    runtime = dict(config.get("config") or {})
    runtime["Labels"] = {**(runtime.get("Labels") or {}), **labels}
    config["config"] = runtime
    config_blob = json.dumps(config, sort_keys=True, separators=(",", ":")).encode("utf-8")
    config_type = str((base_manifest.get("config") or {}).get("mediaType") or
                      (MEDIA_OCI_CONFIG if media_type == MEDIA_OCI_MANIFEST else MEDIA_DOCKER_CONFIG))
    layer_type = _layer_media_type(media_type)
    manifest = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {"mediaType": config_type, "size": len(config_blob), "digest": _sha256(config_blob)},
        "layers": [*(dict(x) for x in base_layers),
                   *({"mediaType": layer_type, "size": x.size, "digest": x.digest} for x in layers)],
    }
    return config_blob, json.dumps(manifest, indent=3).encode("utf-8"), media_type


__all__ = ["ImageAssemblyError", "Layer", "assemble", "file_layer", "files_layer", "parent_directories"]
