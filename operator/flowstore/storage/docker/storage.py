"""The seed's ``Docker`` storage: flows baked into an image that is pushed to a registry.

All flows of a storage live in one image: a base image (dependencies, files, the runtime) built
through the Docker Engine API (any compatible daemon: dockerd, ``podman system service``) and
pushed with the registry credentials, and one layer per flow on top, made and pushed without
the daemon (:mod:`flowstore.storage.docker.dockerfile`, :mod:`flowstore.storage.docker.layers`). Changing a flow
uploads its layer, a configuration and a manifest; nothing is rebuilt. A healthcheck loads
every flow in a container of the base image first. An image's identity is the manifest digest
the *registry* reports. Reading a flow back needs no daemon: :meth:`Docker.read_flow` fetches
the manifest and layers through the registry HTTP API (:mod:`flowstore.storage.docker.oci`) and
verifies every blob digest.

An image's tag defaults to a digest of all build inputs, and :meth:`Docker.build_image` skips
building and pushing when the registry already has that tag built from the same inputs
(``dev.flowstore.inputs-digest`` label), so a controller may call it on every reconcile.

The ``docker`` SDK is an optional extra (``flowstore[docker]``) imported only to build, push or
run; ``requests`` (a core dependency) talks to the registry.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import json
import posixpath
import re
import sys
import tarfile
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from flowstore.artifacts import envelope, loading
from flowstore.artifacts.keys import slugify
from flowstore.storage.base import ObjectInfo, Storage, StoredArtifact, artifact_format, sha256_hex, verify_digest
from flowstore.storage.docker import dockerfile as df
from flowstore.storage.docker.credentials import registry_credentials
from flowstore.storage.docker.daemon import Daemon, DaemonTLS
from flowstore.storage.docker.errors import BuildFailed, PushFailed
from flowstore.storage.docker.layers import ImageAssemblyError, Layer, assemble, files_layer, parent_directories
from flowstore.storage.docker.oci import RegistryClient, split_registry
from flowstore.storage.docker.runner import DockerEnvRunner
from flowstore.storage.errors import InvalidConfig, NotFound

#: the image name when none is configured
DEFAULT_IMAGE_NAME = "flowstore-flows"
#: the base image when neither a base image nor a Dockerfile is configured: this Python's minor
DEFAULT_BASE_IMAGE = "python:{}.{}-slim".format(*sys.version_info[:2])
#: the image layout, part of the inputs digest: images built by another layout are rebuilt once
IMAGE_LAYOUT = "flowstore-image/2 (base image + one layer per flow)"
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_REPO = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclasses.dataclass(frozen=True)
class ImageFlow:
    """One flow to put in the image: `data` (envelope or script bytes) goes to `location`."""

    name: str
    location: str
    data: bytes


#: (registry, repository, base manifest digest) -> {directory: its tar header, or None when the
#: base has no such directory}: what :meth:`Docker.flow_layers` read from base images
_BASE_DIRECTORIES: collections.OrderedDict[tuple[str, str, str], dict[str, tarfile.TarInfo | None]] = \
    collections.OrderedDict()
_BASE_DIRECTORIES_LOCK = threading.Lock()


@dataclasses.dataclass(frozen=True)
class ImagePlan:
    """What one image is made of (:meth:`Docker.plan`)."""

    base: df.BuildContext  # built by the daemon
    flows: list[df.FlowFile]  # sorted by location; one layer each (:meth:`Docker.flow_layers`)
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
    #: every flow of a storage is a layer of its one image (built by the controller's image builder)
    family = "image"
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
                prefect_version=config.get("prefectVersion"),  # only the seed's schema has it
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

    def _seed_config(self) -> dict[str, Any]:
        """The seed's Docker fields: the image Prefect's agent runs is
        ``registry_url/image_name:image_tag`` (image references have no scheme, so an ``http://``
        of `registry_url` is dropped). The manifest digest has no field: the tag (by default a
        digest of every build input, never reused for other content) names the image."""
        registry = None
        if self.registry_url:
            _, host, prefix = split_registry(self.registry_url)
            registry = f"{host}/{prefix}" if prefix else host
        return {
            "registry_url": registry,
            "image_name": self.image_name or DEFAULT_IMAGE_NAME,
            "image_tag": self.image_tag,
            "path": self.path,
            "stored_as_script": self.stored_as_script,
            "prefect_version": self.prefect_version,
        }

    @classmethod
    def _config_from_seed(cls, doc: Mapping[str, Any]) -> dict[str, Any]:
        return {"registryURL": doc.get("registry_url"), "imageName": doc.get("image_name"),
                "imageTag": doc.get("image_tag"), "path": doc.get("path"),
                "prefectVersion": doc.get("prefect_version")}

    def _status_config(self) -> dict[str, Any]:
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
    def put_bytes(self, location: str, data: bytes, *, idempotency_key: str | None = None) -> StoredArtifact:
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

    def _image_flows(self) -> list[ImageFlow]:
        """Every flow of this storage to copy into its image: those added since the last build,
        and those of the previous image (read back from the registry). The seed's script at
        `path` is not among them: the files or the Dockerfile put it in the image."""
        self._load_local_scripts()
        flows: list[ImageFlow] = []
        for name, location in sorted(self.flows.items()):
            if name in self._pending:
                payload = self._pending[name]
                data = payload if self.stored_as_script else envelope.dumps(payload)
                flows.append(ImageFlow(name=name, location=location, data=data))
            elif self.image_digest and not self._in_image_already(location):
                flows.append(ImageFlow(name=name, location=location, data=self.read_flow(self.image_digest, location)))
        return flows

    def _in_image_already(self, location: str) -> bool:
        return self.stored_as_script and location == self.path

    def build(self, push: bool = True) -> Docker:
        """Build the image with every flow of this storage (flows built earlier are read back from
        the previous image) and push it when `push` and a registry is configured. Returns self."""
        flows = self._image_flows()
        built = self.build_image(flows) if push and self.registry_url else self._build_local(flows, None)
        self._pending.clear()
        self.image_tag = built.tag  # image_digest: recorded by build_image when it is in the registry
        return self

    def create_dockerfile_object(self, directory: str) -> str:
        """The seed's: write the Dockerfile of this storage's image into `directory`, with every
        file it copies, and return the Dockerfile's absolute path.

        Any builder (``docker build DIR``, buildah, kaniko) makes of it an image equivalent to
        the one :meth:`build_image` pushes: the base image (or Dockerfile), environment,
        dependencies, files, flowstore's runtime and the extra commands, then every flow at its
        location (those added since the last build and those of the previous image), then,
        unless `ignore_healthchecks`, a step that loads every flow with the image's Python (the
        seed's healthcheck; the build fails if one does not load), and the labels."""
        flows = self._image_flows()
        spec = self.image_spec(flows)
        checks = [*spec.flows, *(df.FlowFile(name=name, location=location, data=b"", kind="script")
                                 for name, location in sorted(self.flows.items())
                                 if self._in_image_already(location) and name not in self._pending)]
        try:
            context = df.render(spec, healthcheck=None if self.ignore_healthchecks else checks)
        except df.DockerfileError as exc:
            raise InvalidConfig(str(exc)) from None
        target = Path(directory).resolve()
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(context.tar)) as tar:
            tar.extractall(target, filter="data")
        return str(target / "Dockerfile")

    def push_image(self, image_name: str, image_tag: str) -> None:
        """The seed's: push ``image_name:image_tag`` from the daemon to its registry. `image_name`
        is the whole repository (``registry/…/name``, e.g. :attr:`image_repository`). This
        storage's registry credentials are used for its own registry, the Docker config's for
        another. Raises AuthFailed, RegistryUnavailable, PushFailed or DaemonUnavailable (the
        seed raised InterruptedError)."""
        if not image_name or not image_tag or not _TAG.match(image_tag):
            raise InvalidConfig(f"cannot push {image_name!r}:{image_tag!r}: name a repository and a valid tag")
        self._daemon_for(image_name).push(image_tag)

    def pull_image(self) -> None:
        """The seed's: pull `base_image` into the daemon, so that images can be built on it. Its
        registry's credentials are this storage's when it is `registry_url`'s, else the Docker
        config's. Raises BaseImageNotFound, AuthFailed, RegistryUnavailable or DaemonUnavailable
        (the seed raised InterruptedError); InvalidConfig without a base image (a Dockerfile's
        ``FROM`` images are the builder's to pull)."""
        if not self.base_image:
            raise InvalidConfig("there is no base_image to pull: with a dockerfile, its FROM images are pulled by "
                                "the build")
        self._daemon_for(_repository_of(self.base_image)).pull_image(self.base_image)

    def _daemon_for(self, repository: str) -> Daemon:
        """A daemon client for images of `repository` (``[host/]path``), with the credentials of
        the registry that holds it."""
        host = _registry_host_of(repository)
        username, password, source = self.registry_username, self._registry_password, self.credentials_source
        if host is None or host != self.registry_host:
            username, password, source = registry_credentials(host or "docker.io", None)
        auth = {"username": username, "password": password} if username and password is not None else None
        hint = (f"check the credentials for {host or 'docker.io'} in {source}" if source
                else f"no credentials were found for {host or 'docker.io'} (registry_username / registry_password "
                     "for the storage's own registry, else the Docker config)")
        return Daemon.connect(self.base_url, self.tls_config, repository=repository, registry_host=host,
                              auth_config=auth, auth_hint=hint, build_options=self.build_kwargs,
                              local_image=self.local_image)

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
        fmt = artifact_format(data, stored_as_script=self.stored_as_script or location.endswith(".py"))
        return loading.load(data, fmt, flow_name=flow_name, object_name=object_name)

    def get_env_runner(self, flow_location: str) -> DockerEnvRunner:  # type: ignore[override]
        return DockerEnvRunner(self, flow_location)

    # ------------------------------------------------------------------ build
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
        if not _TAG.match(tag):
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

    # ------------------------------------------------------------------ daemon
    def daemon(self) -> Daemon:
        """A client of the Docker daemon (`base_url`, else ``$DOCKER_HOST``) for this storage's images."""
        auth = ({"username": self.registry_username, "password": self._registry_password}
                if self.registry_username and self._registry_password is not None else None)
        return Daemon.connect(self.base_url, self.tls_config, repository=self.image_repository,
                              registry_host=self.registry_host, auth_config=auth, auth_hint=self._auth_hint(),
                              build_options=self.build_kwargs, local_image=self.local_image)

    def image_reference(self) -> str:
        """The current image: ``repository@digest`` when the digest is known, else ``repository:tag``."""
        host, repo = self._read_repository()
        name = f"{host}/{repo}" if host else repo
        if self.image_digest:
            return f"{name}@{self.image_digest}"
        return f"{name}:{self.image_tag or 'latest'}"


def _registry_host_of(repository: str) -> str | None:
    """The registry host of an image repository, by Docker's rule: a first component with a
    ``.`` or ``:``, or ``localhost``; None for Docker Hub names (``python``, ``library/python``)."""
    first, sep, _ = repository.partition("/")
    return first if sep and ("." in first or ":" in first or first == "localhost") else None


def _repository_of(reference: str) -> str:
    """``name`` of ``name[:tag][@digest]``."""
    name = reference.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name
