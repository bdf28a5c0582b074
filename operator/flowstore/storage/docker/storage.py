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

:class:`Docker` is written in three floors: :class:`~flowstore.storage.docker.base.DockerBase`
(configuration, naming, state, registry reads), :class:`~flowstore.storage.docker.images.ImageAssembly`
(what an image is made of and how it is built and pushed) and, here, the seed's interface
(``add_flow``, ``build``, ``get_flow``, ``create_dockerfile_object``, ``push_image``, ``pull_image``).

The ``docker`` SDK is an optional extra (``flowstore[docker]``) imported only to build, push or
run; ``requests`` (a core dependency) talks to the registry.
"""

from __future__ import annotations

import io
import os
import tarfile
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

from flowstore.artifacts import envelope, loading
from flowstore.storage.base import artifact_format, verify_digest
from flowstore.storage.docker import dockerfile as df
from flowstore.storage.docker.base import TAG_PATTERN
from flowstore.storage.docker.credentials import registry_credentials
from flowstore.storage.docker.daemon import Daemon
from flowstore.storage.docker.images import ImageAssembly, ImageFlow
from flowstore.storage.docker.oci import split_registry
from flowstore.storage.docker.runner import DockerEnvRunner
from flowstore.storage.endpoints import EndpointNotAllowed, EndpointPolicy
from flowstore.storage.errors import InvalidConfig, Unavailable
from flowstore.storage.policy import ServePolicy
from flowstore.storage.refs import FileRefs, KeyRef, SecretKeys


class Docker(ImageAssembly):
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
    #: the FlowStorage's Dockerfile, files and daemon TLS come from ConfigMaps and Secrets
    config_refs = (
        KeyRef("dockerfile", text=True),
        FileRefs("files"),
        SecretKeys("daemonTLSSecretRef", into="daemonTLS", keys=("ca.crt", "tls.crt", "tls.key"),
                   hint="create it with ca.crt, tls.crt and tls.key"),
    )

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

    @classmethod
    def for_operator(cls, config: Mapping[str, Any], *, credentials: Mapping[str, str] | None,
                     policy: ServePolicy) -> Self:
        """A FlowStorage's Docker storage in the operator, which lends its author nothing:

        * registries are reached with the referenced Secret's credentials or anonymously, never
          with the operator's own Docker config (the base image's registry too);
        * the registry, the base image's registry and a ``daemonURL`` of ``tcp://`` must pass the
          operator's endpoint policy (never a metadata or link-local address; loopback and private
          ones only with --allow-private-endpoints), and the registry client connects only to
          addresses it checked (redirects, token services and upload locations included);
        * a ``daemonURL`` of ``unix://`` may only be the operator's own daemon (its ``DOCKER_HOST``):
          another socket in the operator's file system is not the author's to talk to.

        The daemon connects to the registries itself: it is given names checked here, but resolves
        them on its own (docs/security.md)."""
        storage = cls.from_config(config, credentials=credentials)
        if credentials is None:  # no Secret: anonymous, not whatever the operator's Docker config holds
            storage.registry_username = storage._registry_password = storage.credentials_source = None
        storage.endpoint_policy = policy.endpoints
        hosts = [(storage.registry_host, "registryURL")]
        if storage.base_image:
            hosts.append((_registry_host_of(_repository_of(storage.base_image)), "baseImage"))
        for host, field in hosts:
            if host:
                _check_host(policy.endpoints, host, field)
        daemon = str(config.get("daemonURL") or "")
        if daemon:
            _check_daemon(policy.endpoints, daemon)
        return storage

    def push_image(self, image_name: str, image_tag: str) -> None:
        """The seed's: push ``image_name:image_tag`` from the daemon to its registry. `image_name`
        is the whole repository (``registry/…/name``, e.g. :attr:`image_repository`). This
        storage's registry credentials are used for its own registry, the Docker config's for
        another. Raises AuthFailed, RegistryUnavailable, PushFailed or DaemonUnavailable (the
        seed raised InterruptedError)."""
        if not image_name or not image_tag or not TAG_PATTERN.match(image_tag):
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
            username = password = source = None
            if self.endpoint_policy is None:  # a library user's: their Docker config; the operator lends none
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


def _check_host(policy: EndpointPolicy, host_port: str, field: str) -> None:
    """`host_port` (``host[:port]``, IPv6 in brackets) passes `policy`, else EndpointNotAllowed."""
    parsed = urllib.parse.urlsplit(f"//{host_port}")
    try:
        port = parsed.port
    except ValueError:
        raise InvalidConfig(f"{field}: {host_port!r} has no valid port") from None
    try:
        policy.check_host(parsed.hostname or host_port, port)
    except EndpointNotAllowed as exc:
        raise EndpointNotAllowed(f"{field}: {exc.message}") from None
    except OSError as exc:
        raise Unavailable(f"cannot resolve the host of {field} {host_port}: {exc.strerror or exc}") from None


def _check_daemon(policy: EndpointPolicy, url: str) -> None:
    """A spec's ``daemonURL``: a TCP daemon passes `policy`; a socket is the operator's own only."""
    scheme, _, rest = url.partition("://")
    if scheme in ("tcp", "http", "https"):
        _check_host(policy, split_registry(rest)[1] or rest, "daemonURL")
    elif url != (os.environ.get("DOCKER_HOST") or ""):
        raise EndpointNotAllowed(f"daemonURL {url!r} is not this operator's Docker daemon: a FlowStorage may name a "
                                 "daemon by tcp://host:port, or leave daemonURL out to use the operator's own")
