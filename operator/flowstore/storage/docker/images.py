"""What one image of a Docker storage is made of, and how it is built: a base image built
by the daemon and pushed, then one layer per flow made and pushed without the daemon
(:mod:`flowstore.storage.docker.dockerfile`, :mod:`flowstore.storage.docker.layers`).

An image's tag defaults to a digest of all build inputs, and :meth:`ImageAssembly.build_image`
skips building and pushing when the registry already has that tag built from the same inputs
(``dev.flowstore.inputs-digest`` label), so a controller may call it on every reconcile.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import posixpath
import sys
import tarfile
import threading
from collections.abc import Iterable
from pathlib import Path

from flowstore.storage.base import artifact_format
from flowstore.storage.docker import dockerfile as df
from flowstore.storage.docker.base import TAG_PATTERN, DockerBase
from flowstore.storage.docker.errors import BuildFailed, PushFailed
from flowstore.storage.docker.layers import ImageAssemblyError, Layer, assemble, files_layer, parent_directories
from flowstore.storage.docker.oci import RegistryClient
from flowstore.storage.errors import InvalidConfig, NotFound

#: the base image when neither a base image nor a Dockerfile is configured: this Python's minor
DEFAULT_BASE_IMAGE = "python:{}.{}-slim".format(*sys.version_info[:2])
#: the image layout, part of the inputs digest: images built by another layout are rebuilt once
IMAGE_LAYOUT = "flowstore-image/2 (base image + one layer per flow)"


@dataclasses.dataclass(frozen=True)
class ImageFlow:
    """One flow to put in the image: `data` (envelope or script bytes) goes to `location`."""

    name: str
    location: str
    data: bytes


#: (registry, repository, base manifest digest) -> {directory: its tar header, or None when the
#: base has no such directory}: what :meth:`ImageAssembly.flow_layers` read from base images
_BASE_DIRECTORIES: collections.OrderedDict[tuple[str, str, str], dict[str, tarfile.TarInfo | None]] = \
    collections.OrderedDict()
_BASE_DIRECTORIES_LOCK = threading.Lock()


@dataclasses.dataclass(frozen=True)
class ImagePlan:
    """What one image is made of (:meth:`ImageAssembly.plan`)."""

    base: df.BuildContext  # built by the daemon
    flows: list[df.FlowFile]  # sorted by location; one layer each (:meth:`ImageAssembly.flow_layers`)
    labels: dict[str, str]
    inputs_digest: str  # of everything: the default tag, and the dev.flowstore.inputs-digest label


@dataclasses.dataclass(frozen=True)
class BuiltImage:
    """The outcome of :meth:`ImageAssembly.build_image`."""

    name: str  # the repository: ``registry/[prefix/]image`` (image name alone without a registry)
    tag: str
    digest: str  # sha256:… manifest digest from the registry (the local image ID when not pushed)
    pushed: bool
    layers_pushed_bytes: int | None  # what the registry was sent; None for an image built only locally
    log_tail: str


class ImageAssembly(DockerBase):
    """Building a Docker storage's image: its plan, the base image, one layer per flow."""

    def image_spec(self, flows: Iterable[ImageFlow]) -> df.ImageSpec:
        """The :class:`~flowstore.storage.docker.dockerfile.ImageSpec` this storage builds `flows` into."""
        images_flows = [
            df.FlowFile(name=f.name, location=f.location, data=f.data,
                        kind=artifact_format(f.data, stored_as_script=self.stored_as_script
                                             or f.location.endswith(".py")))
            for f in flows
        ]
        dockerfile = self.dockerfile
        if dockerfile and not self.dockerfile_is_text and "\n" not in dockerfile and Path(dockerfile).is_file():
            dockerfile = Path(dockerfile).read_text()
        extra_inputs = {k: json.dumps(v, sort_keys=True, default=str) for k, v in sorted(self.build_kwargs.items())
                        if k in ("buildargs", "target", "platform")}
        return df.ImageSpec(
            base_image=None if dockerfile else (self.base_image or DEFAULT_BASE_IMAGE),
            dockerfile=dockerfile,
            env_vars=self.env_vars,
            python_dependencies=self.python_dependencies,
            files=self._file_contents(),
            flows=images_flows,
            extra_dockerfile_commands=self.extra_dockerfile_commands,
            extra_inputs=extra_inputs,
            flow_root=self.flows_root if self.confined else None,
        )

    def _file_contents(self) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for key, value in self.files.items():
            if isinstance(value, bytes):  # {image path: content}
                out[key] = value
                continue
            source, dest = Path(key), str(value)  # the seed's {local source: image path}
            try:
                if source.is_dir():
                    for item in sorted(source.rglob("*")):
                        if item.is_file() and "__pycache__" not in item.parts:
                            out[posixpath.join(dest, item.relative_to(source).as_posix())] = item.read_bytes()
                else:
                    out[dest] = source.read_bytes()
            except OSError as exc:
                raise InvalidConfig(f"cannot read the file {key} to copy into the image: {exc.strerror}") from None
        return out

    def plan(self, flows: Iterable[ImageFlow]) -> ImagePlan:
        """What :meth:`build_image` builds for `flows`: the base image's context, one layer per
        flow (sorted by location), and the digest of every input (the default tag)."""
        spec = self.image_spec(flows)
        try:
            files = df.checked_flows(spec)  # sorted by location; bad flows fail before anything is built
            base = df.render_base(spec)
        except df.DockerfileError as exc:
            raise InvalidConfig(str(exc)) from None
        labels = {df.LABEL_FLOWS: df.flows_label(files)}
        digest = hashlib.sha256(f"{IMAGE_LAYOUT}\0{base.inputs_digest}\0".encode())
        digest.update(json.dumps(labels, sort_keys=True).encode("utf-8"))
        for f in files:
            digest.update(f"\0{f.location}\0{f.kind}\0{f.name}\0{hashlib.sha256(f.data).hexdigest()}".encode())
        return ImagePlan(base=base, flows=files, labels=labels, inputs_digest=digest.hexdigest())

    def build_image(self, flows: list[ImageFlow], tag: str | None = None) -> BuiltImage:
        """Build an image holding exactly `flows`, push it, and return the registry's manifest
        digest. When the registry already has ``name:tag`` built from the same inputs, nothing
        is built or pushed (``pushed=False``).

        The daemon builds (and pushes) only the base image, when its inputs are new; each flow
        is a layer of its own pushed straight to the registry, so changing one flow uploads one
        small layer, a configuration and a manifest. Unless healthchecks are off, every flow is
        first loaded in a container of the base image. Raises the build errors of this module,
        AuthFailed, RegistryUnavailable or DaemonUnavailable."""
        if not self.registry_url:
            raise InvalidConfig("Docker storage needs `registryURL` to build images for the operator")
        plan = self.plan(flows)
        tag = tag or self._fixed_tag or f"fs-{plan.inputs_digest[:32]}"
        if not TAG_PATTERN.match(tag):
            raise InvalidConfig(f"image tag {tag!r} is not a valid tag")
        repo = self.repository
        client = self._registry()
        existing = client.manifest_digest(repo, tag)
        if existing and self._inputs_of(client, repo, existing) == plan.inputs_digest:
            self._record(tag, existing)
            return BuiltImage(name=self.image_repository, tag=tag, digest=existing, pushed=False,
                              layers_pushed_bytes=0, log_tail="")
        base_tag, log_tail = self._ensure_base(plan.base, local=not self.ignore_healthchecks)
        if not self.ignore_healthchecks:
            log_tail = self.daemon().healthcheck(f"{self.image_repository}:{base_tag}", plan.flows)
        base_manifest = client.manifest(repo, base_tag)
        base_config = client.config(repo, base_manifest)
        layers = self.flow_layers(client, base_manifest.digest, plan.flows)
        try:
            config, manifest, media_type = assemble(base_manifest.doc, base_config, layers,
                                                    {**plan.labels, df.LABEL_INPUTS: plan.inputs_digest})
        except ImageAssemblyError as exc:
            raise BuildFailed(f"cannot add the flow layers to the base image {self.image_repository}:{base_tag}: "
                              f"{exc}") from None
        pushed = sum(client.push_blob(repo, layer.blob) for layer in layers)
        pushed += client.push_blob(repo, config)
        digest = client.push_manifest(repo, tag, manifest, media_type)
        self._record(tag, digest)
        return BuiltImage(name=self.image_repository, tag=tag, digest=digest, pushed=True,
                          layers_pushed_bytes=pushed + len(manifest), log_tail=log_tail)

    def flow_layers(self, client: RegistryClient, base_digest: str, flows: list[df.FlowFile]) -> list[Layer]:
        """One layer per flow, carrying the base image's directories above the flow's files as
        the base has them (:func:`flowstore.storage.docker.layers.file_layer`). The same flows on
        the same base give the same layers."""
        files = [f.image_files() for f in flows]  # a bundle is unpacked for this: once
        parents = {parent for image_files in files for path in image_files for parent in parent_directories(path)}
        key = (client.host, self.repository, base_digest)
        with _BASE_DIRECTORIES_LOCK:
            known = dict(_BASE_DIRECTORIES.get(key) or {})
        missing = parents - known.keys()
        if missing:  # read once per base image and process: the walk may read every layer of it
            found = client.directory_entries(self.repository, base_digest, missing)
            known.update({path: found.get(path) for path in missing})
            with _BASE_DIRECTORIES_LOCK:
                _BASE_DIRECTORIES[key] = known
                _BASE_DIRECTORIES.move_to_end(key)
                while len(_BASE_DIRECTORIES) > 32:
                    _BASE_DIRECTORIES.popitem(last=False)
        directories = {path: meta for path, meta in known.items() if meta is not None and path in parents}
        return [files_layer(image_files, comment=f"flow {f.name}", created_by=f"flowstore: COPY {f.location}",
                            directories=directories) for f, image_files in zip(flows, files, strict=True)]

    def _ensure_base(self, base: df.BuildContext, *, local: bool) -> tuple[str, str]:
        """Make sure the registry has the base image (and the daemon too when `local`): build it
        with the daemon (its layer cache makes a rebuild cheap) and push it, unless both have
        it already; a daemon without it (another node, a pruned cache) pulls it from the
        registry rather than building it again. Returns (base tag, build log tail)."""
        base_tag = f"fs-base-{base.inputs_digest[:32]}"
        repo = self.repository
        client = self._registry()
        existing = client.manifest_digest(repo, base_tag)
        in_registry = bool(existing) and self._inputs_of(client, repo, existing or "") == base.inputs_digest
        if in_registry and not local:
            return base_tag, ""
        daemon = self.daemon()
        ref = f"{self.image_repository}:{base_tag}"
        if in_registry and (daemon.inputs_label(ref) == base.inputs_digest or daemon.pull(base_tag)):
            return base_tag, ""
        _, tail = daemon.build(base, ref)
        if not in_registry:
            daemon.push(base_tag)
            if client.manifest_digest(repo, base_tag) is None:
                raise PushFailed(f"pushed {ref}, but the registry does not have the tag")
        return base_tag, tail

    def _build_local(self, flows: list[ImageFlow], tag: str | None) -> BuiltImage:
        """The whole image, as one Dockerfile, built by the daemon and kept there (no registry)."""
        spec = self.image_spec(flows)
        try:
            context = df.render(spec)
        except df.DockerfileError as exc:
            raise InvalidConfig(str(exc)) from None
        tag = tag or self._fixed_tag or f"fs-{context.inputs_digest[:32]}"
        if not TAG_PATTERN.match(tag):
            raise InvalidConfig(f"image tag {tag!r} is not a valid tag")
        ref = f"{self.image_repository}:{tag}"
        daemon = self.daemon()
        image_id, tail = daemon.build(context, ref)
        if not self.ignore_healthchecks:
            tail = daemon.healthcheck(ref, list(spec.flows))
        self.image_tag = tag
        return BuiltImage(name=self.image_repository, tag=tag, digest=image_id, pushed=False,
                          layers_pushed_bytes=None, log_tail=tail)

    def _record(self, tag: str, digest: str) -> None:
        self.image_tag, self.image_digest = tag, digest
        self._state_repository = self.image_repository

    @staticmethod
    def _inputs_of(client: RegistryClient, repo: str, digest: str) -> str | None:
        """The inputs digest label of image `repo@digest`, or None."""
        try:
            config = client.config(repo, client.manifest(repo, digest))
        except NotFound:
            return None
        labels = (config.get("config") or {}).get("Labels") or {}
        value = labels.get(df.LABEL_INPUTS)
        return str(value) if value else None
