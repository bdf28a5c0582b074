"""What a Docker storage is configured with and where its image is: the constructor and
``from_config``, the image's naming, the state StoredFlow status keeps, the registry reads
(:meth:`DockerBase.read_flow`, no daemon), the image's cosign signature
(:meth:`DockerBase.sign_image`) and the storage primitives.

:class:`~flowstore.storage.docker.images.ImageAssembly` builds on it, and
:class:`~flowstore.storage.docker.storage.Docker` (the class users know) on that.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

from flowstore.artifacts.keys import slugify
from flowstore.artifacts.signing import Signer
from flowstore.storage.base import ObjectInfo, Storage, StoredArtifact, stat_by_reading
from flowstore.storage.docker import cosign
from flowstore.storage.docker.credentials import registry_credentials
from flowstore.storage.docker.daemon import Daemon, DaemonTLS
from flowstore.storage.docker.oci import RegistryClient, split_registry
from flowstore.storage.endpoints import EndpointPolicy
from flowstore.storage.errors import InvalidConfig, NotFound

#: the image name when none is configured
DEFAULT_IMAGE_NAME = "flowstore-flows"
TAG_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_REPO = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


class DockerBase(Storage):
    """A Docker storage's configuration, naming, state and registry reads; the arguments are
    :class:`~flowstore.storage.docker.storage.Docker`'s."""

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
        #: registry clients by host, shared with the storage's per-pass forks (tokens kept)
        self._registries: dict[str, RegistryClient] = {}
        #: the operator's endpoint policy (Docker.for_operator): which addresses its registry
        #: requests may reach. None: a library user's or an agent's storage, which reaches its own network
        self.endpoint_policy: EndpointPolicy | None = None
        if image_name is not None and not _REPO.match(image_name):
            raise InvalidConfig(f"image name {image_name!r} is not a valid repository name (lowercase letters, "
                                "digits and . _ - separators, '/' between components)")
        if image_tag is not None and not TAG_PATTERN.match(image_tag):
            raise InvalidConfig(f"image tag {image_tag!r} is not a valid tag")
        if self.registry_url:
            _, host, prefix = split_registry(self.registry_url)
            if not host or (prefix and not _REPO.match(prefix)):
                raise InvalidConfig(f"registry URL {self.registry_url!r} is not host[:port][/path]")

    def __repr__(self) -> str:  # never shows credentials
        return f"Docker(registry_url={self.registry_url!r}, image_name={self.image_name or DEFAULT_IMAGE_NAME!r})"

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, credentials: Mapping[str, str] | None = None) -> Self:
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
        # a FlowStorage spec (no `type`): every flow it writes stays in its flows directory
        storage.confined = "type" not in config
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

    #: flows of a FlowStorage (not the seed's library use) go under :attr:`flows_root` only
    confined: bool = False

    @property
    def flows_root(self) -> str:
        """Where a FlowStorage's flows live in its image: ``<flow_directory>/flows``."""
        return f"{self.flow_directory}/flows"

    def location_for(self, flow_name: str, key: str | None = None) -> str:
        if key:
            location = key if key.startswith("/") else posixpath.join(self.flow_directory, key)
            if self.confined and (".." in key.split("/") or not posixpath.normpath(location).startswith(
                    self.flows_root + "/")):
                raise InvalidConfig(
                    f"spec.key {key!r} puts the flow at {location}, outside this storage's flows directory "
                    f"{self.flows_root}/ in the image: a key may only place a flow there (e.g. flows/etl.prefect, or "
                    f"{self.flows_root}/etl.prefect), so no StoredFlow overwrites the image's Python, its "
                    "site-packages or another flow's files")
            return location
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
            name = str(state["imageName"])
            # a FlowStorage's images are in its own repository: a status naming another (written by
            # someone else) would send its registry credentials there
            self._state_repository = name if self._is_own(name) else None

    def _is_own(self, name: str) -> bool:
        """Whether image `name` is in this storage's repository (always, for the seed's library
        use: an agent's storage is built from the status it reads)."""
        return not self.confined or name == self.image_repository

    def _read_repository(self, image_name: str | None = None) -> tuple[str | None, str]:
        """(host, repository path) to read the current image (or `image_name`) from."""
        full = image_name or self._state_repository or self.image_repository
        if not self._is_own(full):
            raise InvalidConfig(f"image {full!r} is not in this FlowStorage's repository {self.image_repository!r} "
                                "(status may have been written by someone else); nothing was sent to its registry")
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
        client = self._registries.get(host)
        if client is None:
            scheme = (split_registry(self.registry_url)[0] or None) if host == self.registry_host else None
            client = self._registries[host] = RegistryClient(host, self.registry_username, self._registry_password,
                                                             scheme=scheme, auth_hint=self._auth_hint(),
                                                             endpoints=self.endpoint_policy)
        return client

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

    def sign_image(self, image_digest: str, signer: Signer, *, image_name: str | None = None,
                   annotations: Mapping[str, str] | None = None) -> str:
        """Sign the image `image_digest` (of `image_name`, ``host/repo`` as status records it;
        default: this storage's repository) as cosign does and push the signature beside it
        (:mod:`flowstore.storage.docker.cosign`); the signature's tag."""
        if not _DIGEST.match(image_digest or ""):
            raise InvalidConfig(f"{image_digest!r} is not an image manifest digest (sha256:…)")
        host, repo = self._read_repository(image_name)
        client = self._registry(host)
        return cosign.sign_image(client, repo, f"{client.host}/{repo}", image_digest, signer, annotations=annotations)

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
        return stat_by_reading(self, location)

    def delete(self, location: str) -> None:
        """Images are immutable: a flow leaves the image when the next one is built without it
        (a whole image goes with :meth:`delete_image`)."""
        return None

    def delete_image(self, image_digest: str) -> None:
        """Delete the manifest `image_digest` of this storage's repository (the one its state
        names) from the registry, with every tag pointing at it. Already gone counts as done.
        Raises Rejected when the registry does not allow deletes; the layers stay until the
        registry's garbage collection."""
        if not _DIGEST.match(image_digest or ""):
            raise InvalidConfig(f"{image_digest!r} is not an image manifest digest (sha256:…)")
        host, repo = self._read_repository()
        self._registry(host).delete_manifest(repo, image_digest)

    def check_container(self) -> None:
        if self.registry_url:
            self._registry().ping()

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
