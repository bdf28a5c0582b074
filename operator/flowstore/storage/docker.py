"""The seed's ``Docker`` storage: flows baked into an image that is pushed to a registry.

All flows of a storage live in one image: a base image (dependencies, files, the runtime) built
through the Docker Engine API (any compatible daemon: dockerd, ``podman system service``) and
pushed with the registry credentials, and one layer per flow on top, made and pushed without
the daemon (:mod:`flowstore.build.dockerfile`, :mod:`flowstore.build.image`). Changing a flow
uploads its layer, a configuration and a manifest; nothing is rebuilt. A healthcheck loads
every flow in a container of the base image first. An image's identity is the manifest digest
the *registry* reports. Reading a flow back needs no daemon: :meth:`Docker.read_flow` fetches
the manifest and layers through the registry HTTP API (:mod:`flowstore.storage.registry`) and
verifies every blob digest.

An image's tag defaults to a digest of all build inputs, and :meth:`Docker.build_image` skips
building and pushing when the registry already has that tag built from the same inputs
(``dev.flowstore.inputs-digest`` label), so a controller may call it on every reconcile.

The ``docker`` SDK is an optional extra (``flowstore[docker]``) imported only to build, push or
run; ``requests`` (a core dependency) talks to the registry.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import functools
import hashlib
import io
import json
import os
import posixpath
import re
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from flowstore.build import dockerfile as df
from flowstore.build import envelope
from flowstore.build.image import ImageAssemblyError, Layer, assemble, file_layer
from flowstore.build.keys import slugify
from flowstore.storage.base import ObjectInfo, Storage, StoredArtifact, sha256_hex, verify_digest
from flowstore.storage.errors import (
    AuthFailed,
    InvalidConfig,
    MissingDependency,
    NotFound,
    StorageError,
    Unavailable,
)
from flowstore.storage.registry import RegistryClient, RegistryUnavailable, split_registry

#: the image name when none is configured
DEFAULT_IMAGE_NAME = "flowstore-flows"
#: the base image when neither a base image nor a Dockerfile is configured: this Python's minor
DEFAULT_BASE_IMAGE = "python:{}.{}-slim".format(*sys.version_info[:2])
#: lines of build output kept for error messages and BuiltImage.log_tail
LOG_TAIL_LINES = 30
#: the Engine API timeout for one call (a build streams for as long as it needs)
DAEMON_TIMEOUT = 600
#: the healthcheck: how long loading one flow may take; its container's memory, how long the
#: container stays up without a check, and the labels that find it again (the image id, and the
#: repository of the storage it checks for)
HEALTHCHECK_TIMEOUT = 60
HEALTHCHECK_MEMORY = "1g"
HEALTHCHECK_IDLE = 600
HEALTHCHECK_LABEL = "dev.flowstore.healthcheck-of"
HEALTHCHECK_REPOSITORY_LABEL = "dev.flowstore.healthcheck-repository"
#: the image layout, part of the inputs digest: images built by another layout are rebuilt once
IMAGE_LAYOUT = "flowstore-image/2 (base image + one layer per flow)"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_STEP = re.compile(r"^(?:STEP|Step)\s+\d+/\d+\s*:\s*(.*)$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_REPO = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


# --------------------------------------------------------------------------- errors
class BuildError(StorageError):
    """Base of the image build failures; `log_tail` holds the last lines of the build output."""

    reason = "BuildFailed"

    def __init__(self, message: str, *, log_tail: str = "", retry_after: float | None = None) -> None:
        super().__init__(message, retry_after=retry_after)
        self.log_tail = log_tail


class HealthcheckFailed(BuildError):
    """A flow does not load in the image (with the image's own Python). `flows` names them."""

    reason = "HealthcheckFailed"

    def __init__(self, message: str, *, log_tail: str = "", flows: Iterable[str] = ()) -> None:
        super().__init__(message, log_tail=log_tail)
        self.flows = tuple(flows)


class BaseImageNotFound(BuildError):
    """The base image (``FROM``) cannot be found or pulled."""

    reason = "BaseImageNotFound"


class DependencyInstallFailed(BuildError):
    """``pip install`` of the python dependencies failed."""

    reason = "DependencyInstallFailed"


class DockerfileInvalid(BuildError):
    """The Dockerfile (the user's, or the extra commands) is not valid."""

    reason = "DockerfileInvalid"


class BuildFailed(BuildError):
    """Any other build failure (a user ``RUN`` step failed, the daemon refused the build)."""

    reason = "BuildFailed"


class PushFailed(StorageError):
    """The registry did not take the image for a reason other than auth or reachability."""

    retryable = True
    reason = "PushFailed"


class RunFailed(StorageError):
    """The daemon could not run the flow's container (pull, create or start failed)."""

    reason = "RunFailed"


class DaemonUnavailable(Unavailable):
    """The Docker daemon (Engine API) cannot be reached."""

    reason = "DaemonUnavailable"


# --------------------------------------------------------------------------- controller API
@dataclasses.dataclass(frozen=True)
class ImageFlow:
    """One flow to put in the image: `data` (envelope or script bytes) goes to `location`."""

    name: str
    location: str
    data: bytes


@dataclasses.dataclass(frozen=True)
class ImagePlan:
    """What one image is made of (:meth:`Docker.plan`)."""

    base: df.BuildContext  # built by the daemon
    flows: list[df.FlowFile]  # sorted by location
    layers: list[Layer]  # one per flow, same order
    labels: dict[str, str]
    inputs_digest: str  # of everything: the default tag, and the dev.flowstore.inputs-digest label


@dataclasses.dataclass(frozen=True)
class BuiltImage:
    """The outcome of :meth:`Docker.build_image`."""

    name: str  # the repository: ``registry/[prefix/]image`` (image name alone without a registry)
    tag: str
    digest: str  # sha256:… manifest digest from the registry (the local image ID when not pushed)
    pushed: bool
    layers_pushed_bytes: int | None  # what the registry was sent; None for an image built only locally
    log_tail: str


class Docker(Storage):
    """Flows stored in a Docker image (the seed's ``Docker`` storage).

    Args:
        registry_url: ``host[:port][/prefix]`` (``http(s)://`` allowed) the image is pushed to;
            without it the image is only built locally.
        base_image: the ``FROM`` image (must have ``python3``; ``pip`` when there are
            `python_dependencies`). Exclusive with `dockerfile`.
        dockerfile: Dockerfile text (or the path of a Dockerfile) the flows are added on top of.
        python_dependencies: pip requirement strings installed in their own layer.
        image_name / image_tag: the repository under `registry_url` and a fixed tag. Without
            a tag, each build is tagged with a digest of its inputs.
        env_vars: environment variables of the image.
        files: the seed's ``{local source path: image path}`` (directories are copied whole), or
            ``{image path: bytes}`` (contents given directly, as the controller does).
        prefect_directory / flow_directory: where flows go: ``<dir>/flows/<slug>.prefect|.py``.
        path: with `stored_as_script`, the script's path in the image (already there).
        extra_dockerfile_commands: Dockerfile lines of the base image, run after the dependencies
            and files, before the flows are added (a flow change never reruns them).
        ignore_healthchecks: do not load every flow in the image at build time.
        base_url / tls_config: the Docker daemon (default ``$DOCKER_HOST``) and its TLS config (a
            ``docker.tls.TLSConfig``, True, or a :class:`DaemonTLS` of PEM text).
        build_kwargs: Engine API build options: ``buildargs``, ``target``, ``platform``, ``pull``…
        local_image: the base image is local: never pull it.
        registry_username / registry_password: registry credentials (else the Docker config).
        credentials_source: where the credentials came from, named in authentication errors.
    """

    type_name = "Docker"
    default_label = None

    def __init__(
        self,
        registry_url: str | None = None,
        base_image: str | None = None,
        dockerfile: str | None = None,
        python_dependencies: list[str] | None = None,
        image_name: str | None = None,
        image_tag: str | None = None,
        env_vars: Mapping[str, str] | None = None,
        files: Mapping[str, str | bytes] | None = None,
        prefect_version: str | None = None,
        local_image: bool = False,
        ignore_healthchecks: bool = False,
        base_url: str | None = None,
        tls_config: Any = False,
        build_kwargs: Mapping[str, Any] | None = None,
        prefect_directory: str | None = None,
        path: str | None = None,
        stored_as_script: bool = False,
        extra_dockerfile_commands: list[str] | None = None,
        *,
        flow_directory: str | None = None,
        registry_username: str | None = None,
        registry_password: str | None = None,
        credentials_source: str | None = None,
        image_digest: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(stored_as_script=stored_as_script, **kwargs)
        if base_image and dockerfile:
            raise ValueError("Only one of `base_image` and `dockerfile` can be provided.")
        self.registry_url = (registry_url or "").rstrip("/") or None
        self.base_image = base_image
        self.dockerfile = dockerfile
        self.python_dependencies = list(python_dependencies or [])
        self.image_name = image_name
        #: the tag of the last image built or restored (the seed's); `_fixed_tag` is the configured one
        self.image_tag = image_tag
        self._fixed_tag = image_tag
        self.env_vars = dict(env_vars or {})
        self.files: dict[str, str | bytes] = dict(files or {})
        self.prefect_version = prefect_version  # the seed's; unused (the runtime is vendored)
        self.local_image = local_image
        self.ignore_healthchecks = ignore_healthchecks
        self.base_url = base_url
        self.tls_config = tls_config
        self.build_kwargs = dict(build_kwargs or {})
        directory = flow_directory or prefect_directory or "/opt/prefect"
        if not directory.startswith("/"):
            raise InvalidConfig(f"the flow directory {directory!r} must be an absolute path in the image")
        self.flow_directory = posixpath.normpath(directory)
        self.path = path
        self.extra_dockerfile_commands = list(extra_dockerfile_commands or [])
        #: `dockerfile` is the Dockerfile's text, never a path to read (set by from_config: a
        #: resource must not make the operator read its local files)
        self.dockerfile_is_text = False
        self.registry_username = registry_username
        self._registry_password = registry_password
        self.credentials_source = credentials_source
        self.image_digest = image_digest
        #: the repository the last built / restored image is in (``host/repo``)
        self._state_repository: str | None = None
        self._registry_client: RegistryClient | None = None
        if image_name is not None and not _REPO.match(image_name):
            raise InvalidConfig(f"image name {image_name!r} is not a valid repository name (lowercase letters, "
                                "digits and . _ - separators, '/' between components)")
        if image_tag is not None and not _TAG.match(image_tag):
            raise InvalidConfig(f"image tag {image_tag!r} is not a valid tag")
        if self.registry_url:
            _, host, prefix = split_registry(self.registry_url)
            if not host or (prefix and not _REPO.match(prefix)):
                raise InvalidConfig(f"registry URL {self.registry_url!r} is not host[:port][/path]")

    def __repr__(self) -> str:  # never shows credentials
        return f"Docker(registry_url={self.registry_url!r}, image_name={self.image_name or DEFAULT_IMAGE_NAME!r})"

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, credentials: Mapping[str, str] | None = None) -> Docker:
        registry_url = config.get("registryURL")
        username = password = None
        source: str | None = None
        if registry_url:
            username, password, source = registry_credentials(str(registry_url), credentials)
        files = config.get("files") or {}
        if not isinstance(files, Mapping) or not all(isinstance(v, str | bytes) for v in files.values()):
            raise InvalidConfig("Docker `files` must map image paths to their contents")
        dockerfile = config.get("dockerfile")
        if dockerfile is not None and not isinstance(dockerfile, str):
            raise InvalidConfig("Docker `dockerfile` must be the Dockerfile's text")
        for key in ("pythonDependencies", "extraDockerfileCommands"):
            value = config.get(key)
            if value is not None and (not isinstance(value, list) or not all(isinstance(v, str) for v in value)):
                raise InvalidConfig(f"Docker `{key}` must be a list of strings")
        # serialized output (it has the digest): the tag is the built image's, not a fixed one
        restored = bool(config.get("imageDigest"))
        image_name = config.get("imageName")
        full_name = image_name
        if restored and image_name and registry_url:
            # StoredFlow status.storage carries the full repository (host/prefix/image) of the image
            # the flow is in; the constructor takes the name under registryURL
            _, host, prefix = split_registry(str(registry_url))
            under = f"{host}/{prefix}/" if prefix else f"{host}/"
            if str(image_name).startswith(under):
                image_name = str(image_name)[len(under):]
        env_vars = config.get("envVars") or {}
        if not isinstance(env_vars, Mapping):
            raise InvalidConfig("Docker `envVars` must be a mapping of names to values")
        build_kwargs: dict[str, Any] = {}
        if config.get("buildArgs"):
            build_kwargs["buildargs"] = {str(k): str(v) for k, v in dict(config["buildArgs"]).items()}
        for key in ("target", "platform", "pull"):
            if config.get(key) is not None:
                build_kwargs[key] = config[key]
        content_files: dict[str, str | bytes] = {}
        for image_path, content in files.items():
            content_files[str(image_path)] = content.encode("utf-8") if isinstance(content, str) else bytes(content)
        try:
            storage = cls(
                registry_url=registry_url,
                base_image=config.get("baseImage"),
                dockerfile=dockerfile,
                python_dependencies=list(config.get("pythonDependencies") or []),
                image_name=image_name,
                image_tag=None if restored else config.get("imageTag"),
                env_vars={str(k): str(v) for k, v in env_vars.items()},
                files=content_files,
                flow_directory=config.get("flowDirectory"),
                path=config.get("path"),
                extra_dockerfile_commands=list(config.get("extraDockerfileCommands") or []),
                ignore_healthchecks=bool(config.get("ignoreHealthchecks", False)),
                base_url=config.get("daemonURL"),
                build_kwargs=build_kwargs,
                local_image=bool(config.get("localImage", False)),
                registry_username=username,
                registry_password=password,
                credentials_source=source,
                **cls.common_kwargs(config),
            )
        except ValueError as exc:
            raise InvalidConfig(str(exc)) from None
        storage.dockerfile_is_text = True
        tls = config.get("daemonTLS")
        if tls is not None:
            if not isinstance(tls, Mapping) or not all(isinstance(v, str) for v in tls.values()):
                raise InvalidConfig("Docker `daemonTLS` must map ca.crt, tls.crt and tls.key to PEM text")
            if bool(tls.get("tls.crt")) != bool(tls.get("tls.key")):
                raise InvalidConfig("the daemon TLS Secret needs both tls.crt and tls.key (the client certificate "
                                    "and its key), or neither")
            storage.tls_config = DaemonTLS(ca_cert=tls.get("ca.crt") or None, client_cert=tls.get("tls.crt") or None,
                                           client_key=tls.get("tls.key") or None)
        if restored:
            storage.restore_state({"imageDigest": config.get("imageDigest"), "imageTag": config.get("imageTag"),
                                   "imageName": full_name})
        return storage

    # ------------------------------------------------------------------ naming
    @property
    def registry_host(self) -> str | None:
        return split_registry(self.registry_url)[1] if self.registry_url else None

    @property
    def repository(self) -> str:
        """The repository path in the registry (``prefix/image``)."""
        name = self.image_name or DEFAULT_IMAGE_NAME
        prefix = split_registry(self.registry_url)[2] if self.registry_url else ""
        return f"{prefix}/{name}" if prefix else name

    @property
    def image_repository(self) -> str:
        """The full repository name images are tagged with: ``host/prefix/image``."""
        host = self.registry_host
        return f"{host}/{self.repository}" if host else self.repository

    def location_for(self, flow_name: str, key: str | None = None) -> str:
        if key:
            return key if key.startswith("/") else posixpath.join(self.flow_directory, key)
        if self.stored_as_script and self.path:
            return self.path
        ext = "py" if self.stored_as_script else "prefect"
        return f"{self.flow_directory}/flows/{slugify(flow_name)}.{ext}"

    def url_for(self, location: str) -> str:
        ref = f"@{self.image_digest}" if self.image_digest else f":{self.image_tag or 'latest'}"
        host, repo = self._read_repository()
        return f"docker://{host + '/' if host else ''}{repo}{ref}#{location}"

    # ------------------------------------------------------------------ state
    def storage_state(self) -> dict[str, Any]:
        """What StoredFlow status keeps to find the image again (``restore_state`` reads it)."""
        state: dict[str, Any] = {"imageName": self._state_repository or self.image_repository}
        if self.image_tag:
            state["imageTag"] = self.image_tag
        if self.image_digest:
            state["imageDigest"] = self.image_digest
        return state

    def restore_state(self, state: Mapping[str, Any] | None) -> None:
        if not state:
            return
        digest = state.get("imageDigest")
        if digest:
            if not _DIGEST.match(str(digest)):
                raise InvalidConfig(f"imageDigest {digest!r} is not a sha256 manifest digest")
            self.image_digest = str(digest)
        if state.get("imageTag"):
            self.image_tag = str(state["imageTag"])
        if state.get("imageName"):
            self._state_repository = str(state["imageName"])

    def _read_repository(self) -> tuple[str | None, str]:
        """(host, repository path) to read the current image from."""
        full = self._state_repository or self.image_repository
        host = self.registry_host
        if host and full.startswith(host + "/"):
            return host, full[len(host) + 1:]
        first, sep, rest = full.partition("/")
        if sep and ("." in first or ":" in first or first == "localhost"):  # another registry's image
            return first, rest
        return host, full

    def _serialize_config(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "registryURL": self.registry_url,
            "imageName": self.image_name,
            "imageTag": self.image_tag,
            "imageDigest": self.image_digest,
            "flowDirectory": self.flow_directory,
            "path": self.path,
        }
        return {k: v for k, v in doc.items() if v is not None}

    # ------------------------------------------------------------------ registry
    def _auth_hint(self) -> str:
        host = self.registry_host
        if self.credentials_source:
            return f"check the credentials for {host} in {self.credentials_source}"
        if self.registry_username:
            return f"check registry_username/registry_password for {host}"
        return (f"no credentials were configured for {host}; reference a kubernetes.io/dockerconfigjson Secret "
                "with an entry for it")

    def _registry(self, host: str | None = None) -> RegistryClient:
        host = host or self.registry_host
        if not host or not self.registry_url:
            raise InvalidConfig("Docker storage needs `registryURL` to push images or read flows without a daemon")
        if self._registry_client is None or self._registry_client.host != host:
            scheme = (split_registry(self.registry_url)[0] or None) if host == self.registry_host else None
            self._registry_client = RegistryClient(host, self.registry_username, self._registry_password,
                                                   scheme=scheme, auth_hint=self._auth_hint())
        return self._registry_client

    def read_flow(self, image_digest: str, location: str) -> bytes:
        """The bytes at `location` in image `image_digest` of this storage's repository, read
        from the registry (no daemon) with every blob verified."""
        if not _DIGEST.match(image_digest or ""):
            raise InvalidConfig(f"{image_digest!r} is not an image manifest digest (sha256:…)")
        host, repo = self._read_repository()
        client = self._registry(host)
        try:
            return client.read_file(repo, image_digest, location)
        except NotFound as exc:
            raise NotFound(f"flow file {location} is not in image {client.host}/{repo}@{image_digest}: "
                           f"{exc.message}") from None

    # ------------------------------------------------------------------ primitives
    def put_bytes(self, location: str, data: bytes) -> StoredArtifact:
        raise InvalidConfig("Docker storage stores flows by building an image: use build() or build_image()")

    def get_bytes(self, location: str) -> bytes:
        if self.image_digest:
            return self.read_flow(self.image_digest, location)
        if Path(location).is_file():  # inside the image itself (the seed's get_flow)
            return Path(location).read_bytes()
        raise NotFound(f"{location}: no image digest is known for this storage (build() it, or restore_state() "
                       "from the StoredFlow status) and the file is not on this machine")

    def stat(self, location: str) -> ObjectInfo | None:
        try:
            data = self.get_bytes(location)
        except NotFound:
            return None
        return ObjectInfo(size=len(data), sha256=sha256_hex(data))

    def delete(self, location: str) -> None:
        """Images are immutable: a flow leaves the image when the next one is built without it."""
        return None

    def check_container(self) -> None:
        if self.registry_url:
            self._registry().ping()

    # ------------------------------------------------------------------ seed interface
    def add_flow(self, flow: Any, source: bytes | None = None) -> str:
        if self.stored_as_script and self.path and source is None:
            name = flow if isinstance(flow, str) else flow.name
            if name in self:
                raise ValueError(f'Name conflict: Flow with the name "{name}" is already present in this storage.')
            self.flows[name] = self.path  # the script is already in the image (files / Dockerfile)
            return self.path
        return super().add_flow(flow, source)

    def build(self, push: bool = True) -> Docker:
        """Build the image with every flow of this storage (flows built earlier are read back from
        the previous image) and push it when `push` and a registry is configured. Returns self."""
        self._load_local_scripts()
        flows: list[ImageFlow] = []
        for name, location in sorted(self.flows.items()):
            if name in self._pending:
                payload = self._pending[name]
                data = payload if self.stored_as_script else envelope.dumps(payload)
                flows.append(ImageFlow(name=name, location=location, data=data))
            elif self.image_digest and not (self.stored_as_script and location == self.path):
                flows.append(ImageFlow(name=name, location=location, data=self.read_flow(self.image_digest, location)))
        built = self.build_image(flows) if push and self.registry_url else self._build_local(flows, None)
        self._pending.clear()
        self.image_tag = built.tag  # image_digest: recorded by build_image when it is in the registry
        return self

    def get_flow(self, flow_location: str | None = None, *, sha256: str | None = None,
                 flow_name: str | None = None, object_name: str | None = None) -> Any:
        """The flow at `flow_location` (default: `path`, or the only flow), read from the image in
        the registry (or from this machine when running inside the image), verified against
        `sha256` before it is unpickled or executed."""
        location = flow_location or (self.path if self.stored_as_script and self.path else None) \
            or self._default_location()
        if self.flows and location not in self.flows.values():
            raise ValueError(f"Flow is not contained in this Storage: {location}")
        data = self.get_bytes(location)
        verify_digest(data, sha256, what=self.url_for(location))
        if flow_name is None:
            flow_name = next((n for n, loc in self.flows.items() if loc == location), None)
        if self.stored_as_script or location.endswith(".py"):
            return envelope.flow_from_script(data, flow_name=flow_name, object_name=object_name)
        return envelope.loads(data)

    def get_env_runner(self, flow_location: str) -> DockerEnvRunner:  # type: ignore[override]
        return DockerEnvRunner(self, flow_location)

    # ------------------------------------------------------------------ build
    def image_spec(self, flows: Iterable[ImageFlow]) -> df.ImageSpec:
        """The :class:`~flowstore.build.dockerfile.ImageSpec` this storage builds `flows` into."""
        images_flows = [
            df.FlowFile(name=f.name, location=f.location, data=f.data,
                        kind="script" if (self.stored_as_script or f.location.endswith(".py")) else "pickle")
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
        layers = [file_layer(f.location, f.data, comment=f"flow {f.name}") for f in files]
        labels = {df.LABEL_FLOWS: df.flows_label(files)}
        digest = hashlib.sha256(f"{IMAGE_LAYOUT}\0{base.inputs_digest}\0".encode())
        digest.update(json.dumps(labels, sort_keys=True).encode("utf-8"))
        for f in files:
            digest.update(f"\0{f.location}\0{f.kind}\0{f.name}\0{hashlib.sha256(f.data).hexdigest()}".encode())
        return ImagePlan(base=base, flows=files, layers=layers, labels=labels, inputs_digest=digest.hexdigest())

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
        if not _TAG.match(tag):
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
            log_tail = self._healthcheck(f"{self.image_repository}:{base_tag}", plan.flows)
        base_manifest = client.manifest(repo, base_tag)
        base_config = client.config(repo, base_manifest)
        try:
            config, manifest, media_type = assemble(base_manifest.doc, base_config, plan.layers,
                                                    {**plan.labels, df.LABEL_INPUTS: plan.inputs_digest})
        except ImageAssemblyError as exc:
            raise BuildFailed(f"cannot add the flow layers to the base image {self.image_repository}:{base_tag}: "
                              f"{exc}") from None
        pushed = sum(client.push_blob(repo, layer.blob) for layer in plan.layers)
        pushed += client.push_blob(repo, config)
        digest = client.push_manifest(repo, tag, manifest, media_type)
        self._record(tag, digest)
        return BuiltImage(name=self.image_repository, tag=tag, digest=digest, pushed=True,
                          layers_pushed_bytes=pushed + len(manifest), log_tail=log_tail)

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
        api = self._daemon()
        ref = f"{self.image_repository}:{base_tag}"
        if in_registry and (self._local_inputs(api, ref) == base.inputs_digest or self._pulled(api, base_tag)):
            return base_tag, ""
        _, tail = self._run_build(api, base, ref)
        if not in_registry:
            self._push(api, base_tag)
            if client.manifest_digest(repo, base_tag) is None:
                raise PushFailed(f"pushed {ref}, but the registry does not have the tag")
        return base_tag, tail

    def _pulled(self, api: Any, tag: str) -> bool:
        """Whether the daemon pulled `tag` of this storage's repository (False when it could not)."""
        import docker
        import requests

        try:
            for chunk in api.pull(self.image_repository, tag=tag, auth_config=self._credentials_config(),
                                  stream=True, decode=True):
                if isinstance(chunk, dict) and (chunk.get("error") or chunk.get("errorDetail")):
                    return False
        except (docker.errors.APIError, requests.exceptions.RequestException):
            return False
        return self._local_inputs(api, f"{self.image_repository}:{tag}") is not None

    @staticmethod
    def _local_inputs(api: Any, ref: str) -> str | None:
        """The inputs digest label of the daemon's image `ref`, or None when it has no such image."""
        import docker
        import requests

        try:
            info = api.inspect_image(ref)
        except docker.errors.NotFound:
            return None
        except docker.errors.APIError as exc:
            raise DaemonUnavailable(f"the Docker daemon failed to inspect {ref}: {_one_line(exc)}") from None
        except requests.exceptions.RequestException as exc:
            raise DaemonUnavailable(f"the Docker daemon is unreachable: {_one_line(exc)}") from None
        labels = (info.get("Config") or {}).get("Labels") or {}
        value = labels.get(df.LABEL_INPUTS)
        return str(value) if value else None

    def _healthcheck(self, image: str, flows: list[df.FlowFile]) -> str:
        """Load every flow with the image's own Python, in a healthcheck container of `image`.
        Returns the output; raises HealthcheckFailed naming the flows that do not load."""
        import docker
        import requests

        api = self._daemon()
        # this client is ours alone: wait for the check as long as its flows may take
        api.timeout = max(DAEMON_TIMEOUT, HEALTHCHECK_TIMEOUT * len(flows) + 60)
        check_id = uuid.uuid4().hex
        archive = df.healthcheck_archive(check_id, flows)
        command = df.healthcheck_command(check_id, HEALTHCHECK_TIMEOUT)
        try:
            image_id = str(api.inspect_image(image)["Id"])
            for attempt in (1, 2):
                cid = _healthcheck_container(api, image_id, self.image_repository, reuse=attempt == 1)
                try:
                    api.put_archive(cid, df.HEALTHCHECK_WORKDIR, archive)
                    exec_id = api.exec_create(cid, command, stdout=True, stderr=True)["Id"]
                    output = api.exec_start(exec_id)
                    code = api.exec_inspect(exec_id).get("ExitCode")
                except docker.errors.APIError as exc:
                    # it may have ended (idle) since it was found: once more with a new one
                    if attempt == 1 and exc.status_code in (404, 409, 500):
                        continue
                    raise
                break
        except docker.errors.APIError as exc:
            raise BuildFailed(f"the healthcheck container of {image} could not run: {_one_line(exc)} (the daemon "
                              "must be able to start containers; ignoreHealthchecks: true skips the check)") from None
        except requests.exceptions.RequestException as exc:
            raise DaemonUnavailable(f"lost the Docker daemon during the healthcheck: {_one_line(exc)}") from None
        text = output.decode("utf-8", "replace") if isinstance(output, bytes) else str(output)
        lines = [line for line in _ANSI.sub("", text).splitlines() if line.strip()][-LOG_TAIL_LINES:]
        if code != 0:
            failures = [line.split(df.HEALTHCHECK_MARKER, 1)[1].strip() for line in lines
                        if df.HEALTHCHECK_MARKER in line and " FAILED " in f" {line} "]
            names = [m.group(1) for m in (re.match(r"FAILED flow '(.*)' at ", f) for f in failures) if m]
            what = "; ".join(failures) or f"the check exited with status {code}"
            raise HealthcheckFailed(f"the image healthcheck failed: {what}\n{_format_tail(lines, 'healthcheck')}",
                                    log_tail="\n".join(lines), flows=names)
        return "\n".join(lines)

    def _build_local(self, flows: list[ImageFlow], tag: str | None) -> BuiltImage:
        """The whole image, as one Dockerfile, built by the daemon and kept there (no registry)."""
        spec = self.image_spec(flows)
        try:
            context = df.render(spec)
        except df.DockerfileError as exc:
            raise InvalidConfig(str(exc)) from None
        tag = tag or self._fixed_tag or f"fs-{context.inputs_digest[:32]}"
        if not _TAG.match(tag):
            raise InvalidConfig(f"image tag {tag!r} is not a valid tag")
        ref = f"{self.image_repository}:{tag}"
        image_id, tail = self._run_build(self._daemon(), context, ref)
        if not self.ignore_healthchecks:
            tail = self._healthcheck(ref, list(spec.flows))
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

    # ------------------------------------------------------------------ daemon
    def _daemon(self) -> Any:
        try:
            import docker
        except ImportError as exc:
            raise MissingDependency("building Docker storage images needs the docker SDK: "
                                    "pip install 'flowstore[docker]'") from exc
        base_url = self.base_url or os.environ.get("DOCKER_HOST") or None
        kwargs: dict[str, Any] = {"base_url": base_url, "version": "auto", "timeout": DAEMON_TIMEOUT}
        hint = ""
        if isinstance(self.tls_config, DaemonTLS):
            kwargs["tls"] = self.tls_config.client_config()
            hint = ("; check the TLS material in the daemonTLSSecretRef Secret (ca.crt must have signed the daemon's "
                    "certificate; tls.crt/tls.key must be a client certificate the daemon trusts)")
        elif self.tls_config:
            kwargs["tls"] = self.tls_config
        client_class = docker.APIClient
        if isinstance(self.tls_config, DaemonTLS) and self.tls_config.ca_cert:
            client_class = _pinned_ca_client(docker.APIClient)
        try:
            return client_class(**kwargs)
        except docker.errors.DockerException as exc:
            raise DaemonUnavailable(f"the Docker daemon at {base_url or 'the default socket'} is unreachable: "
                                    f"{_one_line(exc)}{hint if 'SSL' in str(exc) else ''}") from None

    def _run_build(self, api: Any, context: df.BuildContext, ref: str) -> tuple[str, str]:
        import docker
        import requests

        options: dict[str, Any] = {k: v for k, v in self.build_kwargs.items()
                                   if k not in ("fileobj", "custom_context", "tag", "decode", "path", "dockerfile")}
        options.setdefault("pull", False)
        if self.local_image:
            options["pull"] = False
        options.setdefault("rm", True)
        options.setdefault("forcerm", True)
        tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
        step_lines: list[str] = []  # output of the current step
        step = ""
        image_id = ""
        try:
            for chunk in api.build(fileobj=io.BytesIO(context.tar), custom_context=True, tag=ref, decode=True,
                                   **options):
                if not isinstance(chunk, dict):
                    continue
                text = str(chunk.get("stream") or chunk.get("status") or "")
                for line in _ANSI.sub("", text).splitlines():
                    if not line.strip():
                        continue
                    tail.append(line)
                    match = _STEP.match(line.strip())
                    if match:
                        step, step_lines = match.group(1), []
                    step_lines.append(line)
                aux = chunk.get("aux")
                if isinstance(aux, dict) and aux.get("ID"):
                    image_id = str(aux["ID"])
                error = chunk.get("errorDetail") or ({"message": chunk["error"]} if chunk.get("error") else None)
                if error:
                    message = _one_line(error.get("message") if isinstance(error, dict) else error)
                    tail.append(message)
                    raise _classify(message, step, list(tail), step_lines)
        except docker.errors.APIError as exc:
            message = _one_line(getattr(exc, "explanation", None) or exc)
            if exc.status_code is not None and exc.status_code >= 500 and not _looks_like_build_error(message):
                raise DaemonUnavailable(f"the Docker daemon failed the build request: {message}") from None
            raise _classify(message, step, [*tail, message], step_lines) from None
        except requests.exceptions.RequestException as exc:
            raise DaemonUnavailable(f"lost the Docker daemon during the build: {_one_line(exc)}") from None
        if not image_id:
            found = [line for line in tail if line.startswith("Successfully built ")]
            if not found:
                raise BuildFailed(f"the build of {ref} ended without an image\n{_format_tail(tail)}",
                                  log_tail="\n".join(tail))
            image_id = found[-1].split()[-1]
        return image_id, "\n".join(tail)

    def _credentials_config(self) -> dict[str, str] | None:
        if self.registry_username and self._registry_password is not None:
            return {"username": self.registry_username, "password": self._registry_password}
        return None

    def _push(self, api: Any, tag: str) -> None:
        """Push `tag` of this storage's repository through the daemon (the base image); errors
        arrive in the stream with HTTP 200."""
        import docker
        import requests

        try:
            for chunk in api.push(self.image_repository, tag=tag, auth_config=self._credentials_config(),
                                  stream=True, decode=True):
                if not isinstance(chunk, dict):
                    continue
                error = chunk.get("errorDetail") or ({"message": chunk["error"]} if chunk.get("error") else None)
                if error:
                    raise self._push_error(_one_line(error.get("message") if isinstance(error, dict) else error))
        except docker.errors.APIError as exc:
            raise self._push_error(_one_line(getattr(exc, "explanation", None) or exc)) from None
        except requests.exceptions.RequestException as exc:
            raise DaemonUnavailable(f"lost the Docker daemon during the push: {_one_line(exc)}") from None

    def _push_error(self, message: str) -> StorageError:
        lowered = message.lower()
        target = f"{self.image_repository}"
        if any(word in lowered for word in ("unauthorized", "authentication required", "denied", "forbidden",
                                            "401", "403")):
            return AuthFailed(f"registry {self.registry_host} rejected the push of {target}: {message}; "
                              f"{self._auth_hint()}")
        if any(word in lowered for word in ("connection refused", "dial tcp", "no such host", "timeout",
                                            "i/o", "connection reset", " 50", "eof", "unavailable")):
            return RegistryUnavailable(f"registry {self.registry_host} is unreachable for the push of {target}: "
                                       f"{message}")
        return PushFailed(f"the push of {target} to {self.registry_host} failed: {message}")


# --------------------------------------------------------------------------- daemon TLS
class DaemonTLS:
    """TLS to a Docker daemon from PEM text (a Secret's ca.crt, tls.crt, tls.key): the daemon's
    certificate is verified (against `ca_cert`, else the system CAs), and the client certificate
    is presented when given. The docker SDK reads certificates from files: they are written
    once per content to a private directory (0700, files 0600) and never logged."""

    def __init__(self, *, ca_cert: str | None = None, client_cert: str | None = None,
                 client_key: str | None = None) -> None:
        self.ca_cert, self.client_cert, self._client_key = ca_cert, client_cert, client_key

    def __repr__(self) -> str:
        return f"DaemonTLS(ca_cert={bool(self.ca_cert)}, client_cert={bool(self.client_cert)})"

    def _files(self) -> dict[str, str]:
        material = {"ca.pem": self.ca_cert, "cert.pem": self.client_cert, "key.pem": self._client_key}
        digest = hashlib.sha256(json.dumps(material, sort_keys=True).encode("utf-8")).hexdigest()[:32]
        root = Path(tempfile.gettempdir()) / f"flowstore-docker-tls-{os.getuid()}"
        root.mkdir(mode=0o700, exist_ok=True)
        if root.stat().st_uid != os.getuid() or root.stat().st_mode & 0o077:
            raise InvalidConfig(f"{root} is not a private directory of this user; cannot keep TLS material there")
        directory = root / digest
        paths = {name: str(directory / name) for name, text in material.items() if text}
        if not directory.is_dir():
            staging = Path(tempfile.mkdtemp(dir=root))
            for name, text in material.items():
                if text:
                    fd = os.open(staging / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    with os.fdopen(fd, "w") as fh:
                        fh.write(text)
            try:
                staging.rename(directory)
            except OSError:  # another thread wrote the same material first
                shutil.rmtree(staging, ignore_errors=True)
        return paths

    def client_config(self) -> Any:
        """A ``docker.tls.TLSConfig``."""
        import docker

        paths = self._files()
        cert = (paths["cert.pem"], paths["key.pem"]) if "cert.pem" in paths else None
        return docker.tls.TLSConfig(client_cert=cert, ca_cert=paths.get("ca.pem"), verify=paths.get("ca.pem") or True)


@functools.cache
def _pinned_ca_client(base: type) -> type:
    """`base` (docker.APIClient, a requests Session) verifying with its own CA file even when
    REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE are set: requests lets those replace a session's CA."""

    class PinnedCAClient(base):  # type: ignore[valid-type,misc]
        def merge_environment_settings(self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any) -> Any:
            settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
            if verify is None:
                settings["verify"] = self.verify
            return settings

    return PinnedCAClient


# --------------------------------------------------------------------------- healthcheck containers
def _healthcheck_container(api: Any, image_id: str, repository: str, *, reuse: bool) -> str:
    """The id of a running healthcheck container of `image_id` for the storage whose images
    go to `repository`: one started earlier (by this process or another: labels name both)
    when `reuse`, else a new one.

    Starting a container costs a copy of the image's filesystem on some storage drivers (vfs:
    seconds), so one container per base image and repository stays up and each check is an
    exec in it. Storages never share one (the same base image can serve several), so flows
    of one storage are never visible to code loaded for another. It has no network, no
    capabilities, limited memory and processes, and it ends, and is removed, after
    HEALTHCHECK_IDLE seconds without a check."""
    labels = {HEALTHCHECK_LABEL: image_id, HEALTHCHECK_REPOSITORY_LABEL: repository}
    if reuse:
        found = api.containers(filters={"label": [f"{k}={v}" for k, v in labels.items()], "status": "running"})
        if found:
            return str(found[0]["Id"])
    host_config = api.create_host_config(auto_remove=True, network_mode="none", cap_drop=["ALL"],
                                         security_opt=["no-new-privileges"], pids_limit=256,
                                         mem_limit=HEALTHCHECK_MEMORY)
    container = api.create_container(image_id, command=df.healthcheck_serve_command(HEALTHCHECK_IDLE),
                                     network_disabled=True, host_config=host_config,
                                     labels=labels)
    cid = str(container["Id"])
    api.start(cid)
    return cid


# --------------------------------------------------------------------------- build errors
def _one_line(value: object, limit: int = 1000) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[:limit] + "…"


def _format_tail(lines: Iterable[str], what: str = "build") -> str:
    return f"--- {what} log (tail) ---\n" + "\n".join(lines)


def _looks_like_build_error(message: str) -> bool:
    lowered = message.lower()
    return any(word in lowered for word in ("dockerfile", "instruction", "step", "parse", "pull", "manifest"))


_DOCKERFILE_ERRORS = re.compile(
    r"unknown instruction|dockerfile parse error|parse error|syntax error|unknown flag|"
    r"build error|cannot parse|invalid reference format|failed to process|empty continuation", re.IGNORECASE)
_BASE_IMAGE_ERRORS = re.compile(
    r"pull access denied|manifest unknown|repository does not exist|not found|initializing source|"
    r"no such image|error pulling|failed to resolve", re.IGNORECASE)


def _classify(message: str, step: str, tail: list[str], step_lines: list[str]) -> BuildError:
    """The error for a failed build: which step failed decides the kind."""
    where = f" at step {step!r}" if step else ""
    log_tail = "\n".join(tail)
    if df.PIP_INSTALL in step or df.PIP_INSTALL in message:
        pip_errors = [line.strip() for line in step_lines if line.strip().startswith("ERROR:")]
        what = "; ".join(pip_errors) or message
        return DependencyInstallFailed(f"installing the python dependencies failed: {what}\n{_format_tail(tail)}",
                                       log_tail=log_tail)
    if _DOCKERFILE_ERRORS.search(message):
        return DockerfileInvalid(f"the Dockerfile is not valid{where}: {message}\n{_format_tail(tail)}",
                                 log_tail=log_tail)
    if step.upper().startswith("FROM ") or (not step and _BASE_IMAGE_ERRORS.search(message)):
        image = step.split()[1] if step.upper().startswith("FROM ") and len(step.split()) > 1 else "the base image"
        return BaseImageNotFound(f"the base image {image} cannot be found or pulled: {message}\n{_format_tail(tail)}",
                                 log_tail=log_tail)
    return BuildFailed(f"the image build failed{where}: {message}\n{_format_tail(tail)}", log_tail=log_tail)


# --------------------------------------------------------------------------- credentials
def _normalize_host(key: str) -> str:
    _, host, _ = split_registry(key)
    return host.lower()


def registry_credentials(registry_url: str, credentials: Mapping[str, str] | None
                         ) -> tuple[str | None, str | None, str | None]:
    """(username, password, where they came from) for `registry_url`.

    `credentials` is the decoded data of a ``kubernetes.io/dockerconfigjson`` Secret (key
    ``.dockerconfigjson``; ``.dockercfg`` too). None: the Docker config file
    (``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json``); else anonymous."""
    host = split_registry(registry_url)[1].lower()
    if credentials is not None:
        raw = credentials.get(".dockerconfigjson") or credentials.get(".dockercfg")
        if not raw:
            raise InvalidConfig("the registry credentials Secret has no .dockerconfigjson key "
                                "(it must be of type kubernetes.io/dockerconfigjson)")
        source = "the kubernetes.io/dockerconfigjson Secret referenced by the FlowStorage (.dockerconfigjson)"
        user, password = _auth_entry(raw, host, source, strict=True)
        return user, password, source
    directory = os.environ.get("DOCKER_CONFIG") or str(Path.home() / ".docker")
    path = Path(directory) / "config.json"
    try:
        raw = path.read_text()
    except OSError:
        return None, None, None
    user, password = _auth_entry(raw, host, str(path), strict=False)
    return user, password, (str(path) if user else None)


def _auth_entry(raw: str, host: str, source: str, *, strict: bool) -> tuple[str | None, str | None]:
    try:
        doc = json.loads(raw)
    except ValueError:
        raise InvalidConfig(f"{source} is not valid JSON") from None
    auths = doc.get("auths", doc) if isinstance(doc, dict) else {}
    if not isinstance(auths, dict):
        raise InvalidConfig(f"{source}: `auths` must be a mapping of registry hosts")
    aliases = {host}
    if host in ("docker.io", "index.docker.io", "registry-1.docker.io"):
        aliases |= {"docker.io", "index.docker.io", "registry-1.docker.io"}
    entry = next((v for k, v in auths.items() if _normalize_host(str(k)) in aliases), None)
    if entry is None:
        if strict:
            known = ", ".join(sorted(_normalize_host(str(k)) for k in auths)) or "none"
            raise InvalidConfig(f"{source} has no entry for registry {host} (entries: {known})")
        return None, None
    if not isinstance(entry, dict):
        raise InvalidConfig(f"{source}: the entry for {host} is not a mapping")
    if entry.get("username") and entry.get("password") is not None:
        return str(entry["username"]), str(entry["password"])
    if entry.get("auth"):
        try:
            user, sep, password = base64.b64decode(str(entry["auth"])).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            sep, user, password = "", "", ""
        if not sep:
            raise InvalidConfig(f"{source}: the `auth` of {host} is not base64 of username:password")
        return user, password
    if entry.get("identitytoken") or entry.get("registrytoken"):
        raise InvalidConfig(f"{source}: token entries for {host} are not supported; give username and password")
    if strict:
        raise InvalidConfig(f"{source}: the entry for {host} has neither username/password nor auth")
    return None, None


# --------------------------------------------------------------------------- running
#: runs in the image: loads the flow at argv[1] (named argv[2]) with the vendored runtime, runs it
_RUN_BOOTSTRAP = """\
import sys
from flowstore.build import envelope
from flowstore.build.image import ImageAssemblyError, Layer, assemble, file_layer
location, name = sys.argv[1], sys.argv[2] or None
data = open(location, "rb").read()
if location.endswith(".py"):
    flow = envelope.flow_from_script(data, flow_name=name, object_name=None)
else:
    flow = envelope.loads(data)
flow.run()
"""


class DockerEnvRunner:
    """The seed's env runner for Docker storage: runs the flow in a container of the image
    (through the Engine API) with `env`; returns the container's exit code."""

    def __init__(self, storage: Docker, flow_location: str) -> None:
        self.storage = storage
        self.flow_location = flow_location

    @property
    def image(self) -> str:
        storage = self.storage
        host, repo = storage._read_repository()
        name = f"{host}/{repo}" if host else repo
        if storage.image_digest:
            return f"{name}@{storage.image_digest}"
        return f"{name}:{storage.image_tag or 'latest'}"

    def run(self, env: Mapping[str, str] | None = None) -> int:
        import docker

        api = self.storage._daemon()
        flow_name = next((n for n, loc in self.storage.flows.items() if loc == self.flow_location), "")
        command = ["python3", "-B", "-c", _RUN_BOOTSTRAP, self.flow_location, flow_name]
        try:
            if not self.storage.local_image:
                api.pull(self.image, auth_config=self.storage._credentials_config())
            container = api.create_container(self.image, command=command, environment=dict(env or {}))
            cid = container["Id"]
            try:
                api.start(cid)
                result = api.wait(cid)
                return int(result.get("StatusCode", 1)) if isinstance(result, dict) else int(result)
            finally:
                api.remove_container(cid, force=True)
        except docker.errors.APIError as exc:
            raise RunFailed(f"running {self.image} failed: {_one_line(exc)}") from None


__all__ = [
    "BaseImageNotFound",
    "BuildError",
    "BuildFailed",
    "BuiltImage",
    "DaemonTLS",
    "DaemonUnavailable",
    "DependencyInstallFailed",
    "Docker",
    "DockerEnvRunner",
    "DockerfileInvalid",
    "HealthcheckFailed",
    "ImageFlow",
    "PushFailed",
    "RegistryUnavailable",
    "RunFailed",
    "registry_credentials",
]
