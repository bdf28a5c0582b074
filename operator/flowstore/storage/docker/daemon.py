"""The Docker Engine API as one Docker storage uses it: build and push its base image, pull it
on a daemon that lacks it, run the healthcheck, run a flow's container.

Any Engine-compatible daemon works (dockerd, ``podman system service``). The ``docker`` SDK is
imported only here, and only when a daemon is used. Every SDK and transport error becomes an
error of :mod:`flowstore.storage.docker.errors`.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flowstore.api.backends import install_hint
from flowstore.storage.docker import dockerfile as df
from flowstore.storage.docker.errors import (
    BaseImageNotFound,
    BuildFailed,
    DaemonUnavailable,
    HealthcheckFailed,
    PushFailed,
    RegistryUnavailable,
    RunFailed,
    classify_build_failure,
    format_tail,
    looks_like_build_error,
    one_line,
)
from flowstore.storage.errors import AuthFailed, InvalidConfig, MissingDependency, StorageError

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
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_STEP = re.compile(r"^(?:STEP|Step)\s+\d+/\d+\s*:\s*(.*)$")
#: a registry's or daemon's words for "no such image, repository or tag"
_BASE_IMAGE_MISSING = re.compile(r"manifest unknown|not found|does not exist|no such image|name unknown|"
                                 r"pull access denied", re.IGNORECASE)


class Daemon:
    """One Engine API client, for the images of one repository (``host/prefix/image``).

    `auth_config` is the registry's ``{"username", "password"}`` (None: anonymous); `auth_hint`
    ends authentication errors (which Secret to check); `build_options` are Engine API build
    options (``buildargs``, ``target``, ``platform``, ``pull``…)."""

    def __init__(self, api: Any, *, repository: str, registry_host: str | None,
                 auth_config: Mapping[str, str] | None, auth_hint: str,
                 build_options: Mapping[str, Any] | None = None, local_image: bool = False) -> None:
        self.api = api
        self.repository = repository
        self.registry_host = registry_host
        self._auth_config = dict(auth_config) if auth_config else None
        self.auth_hint = auth_hint
        self.build_options = dict(build_options or {})
        self.local_image = local_image

    def __repr__(self) -> str:  # never shows credentials
        return f"Daemon(repository={self.repository!r})"

    @classmethod
    def connect(cls, base_url: str | None, tls_config: Any, **kwargs: Any) -> Daemon:
        """A client of the daemon at `base_url` (default ``$DOCKER_HOST``, else the default
        socket). `tls_config`: a :class:`DaemonTLS`, a ``docker.tls.TLSConfig``, True, or False."""
        try:
            import docker
        except ImportError as exc:
            raise MissingDependency("building Docker storage images needs the docker SDK; "
                                    f"hint: {install_hint('docker')}") from exc
        base_url = base_url or os.environ.get("DOCKER_HOST") or None
        options: dict[str, Any] = {"base_url": base_url, "version": "auto", "timeout": DAEMON_TIMEOUT}
        hint = ""
        if isinstance(tls_config, DaemonTLS):
            options["tls"] = tls_config.client_config()
            hint = ("; check the TLS material in the daemonTLSSecretRef Secret (ca.crt must have signed the daemon's "
                    "certificate; tls.crt/tls.key must be a client certificate the daemon trusts)")
        elif tls_config:
            options["tls"] = tls_config
        client_class = docker.APIClient
        if isinstance(tls_config, DaemonTLS) and tls_config.ca_cert:
            client_class = _pinned_ca_client(docker.APIClient)
        try:
            api = client_class(**options)
        except docker.errors.DockerException as exc:
            raise DaemonUnavailable(f"the Docker daemon at {base_url or 'the default socket'} is unreachable: "
                                    f"{one_line(exc)}{hint if 'SSL' in str(exc) else ''}") from None
        return cls(api, **kwargs)

    # ------------------------------------------------------------------ images
    def build(self, context: df.BuildContext, ref: str) -> tuple[str, str]:
        """Build `context` as `ref`; returns (image id, build log tail). Raises the build
        errors (which step failed decides the kind) or DaemonUnavailable."""
        import docker
        import requests

        options: dict[str, Any] = {k: v for k, v in self.build_options.items()
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
            for chunk in self.api.build(fileobj=io.BytesIO(context.tar), custom_context=True, tag=ref, decode=True,
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
                    message = one_line(error.get("message") if isinstance(error, dict) else error)
                    tail.append(message)
                    raise classify_build_failure(message, step, list(tail), step_lines)
        except docker.errors.APIError as exc:
            message = one_line(getattr(exc, "explanation", None) or exc)
            if exc.status_code is not None and exc.status_code >= 500 and not looks_like_build_error(message):
                raise DaemonUnavailable(f"the Docker daemon failed the build request: {message}") from None
            raise classify_build_failure(message, step, [*tail, message], step_lines) from None
        except requests.exceptions.RequestException as exc:
            raise DaemonUnavailable(f"lost the Docker daemon during the build: {one_line(exc)}") from None
        if not image_id:
            found = [line for line in tail if line.startswith("Successfully built ")]
            if not found:
                raise BuildFailed(f"the build of {ref} ended without an image\n{format_tail(tail)}",
                                  log_tail="\n".join(tail))
            image_id = found[-1].split()[-1]
        return image_id, "\n".join(tail)

    def push(self, tag: str) -> None:
        """Push `tag` of the repository (the base image); errors arrive in the stream with HTTP 200."""
        import docker
        import requests

        try:
            for chunk in self.api.push(self.repository, tag=tag, auth_config=self._auth_config, stream=True,
                                       decode=True):
                if not isinstance(chunk, dict):
                    continue
                error = chunk.get("errorDetail") or ({"message": chunk["error"]} if chunk.get("error") else None)
                if error:
                    raise self._push_error(one_line(error.get("message") if isinstance(error, dict) else error))
        except docker.errors.APIError as exc:
            raise self._push_error(one_line(getattr(exc, "explanation", None) or exc)) from None
        except requests.exceptions.RequestException as exc:
            raise DaemonUnavailable(f"lost the Docker daemon during the push: {one_line(exc)}") from None

    def _push_error(self, message: str) -> StorageError:
        lowered = message.lower()
        if any(word in lowered for word in ("unauthorized", "authentication required", "denied", "forbidden",
                                            "401", "403")):
            return AuthFailed(f"registry {self.registry_host} rejected the push of {self.repository}: {message}; "
                              f"{self.auth_hint}")
        if any(word in lowered for word in ("connection refused", "dial tcp", "no such host", "timeout",
                                            "i/o", "connection reset", " 50", "eof", "unavailable")):
            return RegistryUnavailable(f"registry {self.registry_host} is unreachable for the push of "
                                       f"{self.repository}: {message}")
        return PushFailed(f"the push of {self.repository} to {self.registry_host} failed: {message}")

    def pull(self, tag: str) -> bool:
        """Whether the daemon pulled `tag` of the repository (False when it could not)."""
        import docker
        import requests

        try:
            for chunk in self.api.pull(self.repository, tag=tag, auth_config=self._auth_config, stream=True,
                                       decode=True):
                if isinstance(chunk, dict) and (chunk.get("error") or chunk.get("errorDetail")):
                    return False
        except (docker.errors.APIError, requests.exceptions.RequestException):
            return False
        return self.inputs_label(f"{self.repository}:{tag}") is not None

    def pull_image(self, ref: str) -> None:
        """Pull `ref` (``name[:tag|@digest]``) into the daemon, raising on failure: AuthFailed,
        BaseImageNotFound (no such image or tag), RegistryUnavailable, DaemonUnavailable."""
        import docker
        import requests

        try:
            for chunk in self.api.pull(ref, stream=True, decode=True, auth_config=self._auth_config):
                error = (chunk.get("errorDetail") or chunk.get("error")) if isinstance(chunk, dict) else None
                if error:
                    raise self._pull_error(ref, one_line(error.get("message") if isinstance(error, dict) else error))
        except docker.errors.APIError as exc:
            message = one_line(getattr(exc, "explanation", None) or exc)
            if exc.status_code is not None and exc.status_code >= 500 and not _BASE_IMAGE_MISSING.search(message):
                raise RegistryUnavailable(f"pulling {ref} failed: {message}") from None
            raise self._pull_error(ref, message) from None
        except requests.exceptions.RequestException as exc:
            raise DaemonUnavailable(f"lost the Docker daemon while pulling {ref}: {one_line(exc)}") from None

    def _pull_error(self, ref: str, message: str) -> StorageError:
        lowered = message.lower()
        if any(word in lowered for word in ("unauthorized", "authentication required", "401", "403")):
            return AuthFailed(f"the registry refused the pull of {ref}: {message}; {self.auth_hint}")
        if _BASE_IMAGE_MISSING.search(message):
            return BaseImageNotFound(f"the image {ref} cannot be found: {message}")
        if any(word in lowered for word in ("connection refused", "dial tcp", "no such host", "timeout",
                                            "i/o", "connection reset", "eof", "unavailable")):
            return RegistryUnavailable(f"the registry of {ref} is unreachable: {message}")
        return BaseImageNotFound(f"the image {ref} cannot be pulled: {message}")

    def inputs_label(self, ref: str) -> str | None:
        """The inputs digest label of the daemon's image `ref`, or None when it has no such image."""
        import docker
        import requests

        try:
            info = self.api.inspect_image(ref)
        except docker.errors.NotFound:
            return None
        except docker.errors.APIError as exc:
            raise DaemonUnavailable(f"the Docker daemon failed to inspect {ref}: {one_line(exc)}") from None
        except requests.exceptions.RequestException as exc:
            raise DaemonUnavailable(f"the Docker daemon is unreachable: {one_line(exc)}") from None
        labels = (info.get("Config") or {}).get("Labels") or {}
        value = labels.get(df.LABEL_INPUTS)
        return str(value) if value else None

    # ------------------------------------------------------------------ containers
    def healthcheck(self, image: str, flows: list[df.FlowFile]) -> str:
        """Load every flow with the image's own Python, in a healthcheck container of `image`.
        Returns the output; raises HealthcheckFailed naming the flows that do not load."""
        import docker
        import requests

        # this client is ours alone: wait for the check as long as its flows may take
        self.api.timeout = max(DAEMON_TIMEOUT, HEALTHCHECK_TIMEOUT * len(flows) + 60)
        check_id = uuid.uuid4().hex
        archive = df.healthcheck_archive(check_id, flows)
        command = df.healthcheck_command(check_id, HEALTHCHECK_TIMEOUT)
        try:
            image_id = str(self.api.inspect_image(image)["Id"])
            for attempt in (1, 2):
                cid = self._healthcheck_container(image_id, reuse=attempt == 1)
                try:
                    self.api.put_archive(cid, df.HEALTHCHECK_WORKDIR, archive)
                    exec_id = self.api.exec_create(cid, command, stdout=True, stderr=True)["Id"]
                    output = self.api.exec_start(exec_id)
                    code = self.api.exec_inspect(exec_id).get("ExitCode")
                except docker.errors.APIError as exc:
                    # it may have ended (idle) since it was found: once more with a new one
                    if attempt == 1 and exc.status_code in (404, 409, 500):
                        continue
                    raise
                break
        except docker.errors.APIError as exc:
            raise BuildFailed(f"the healthcheck container of {image} could not run: {one_line(exc)} (the daemon "
                              "must be able to start containers; ignoreHealthchecks: true skips the check)") from None
        except requests.exceptions.RequestException as exc:
            raise DaemonUnavailable(f"lost the Docker daemon during the healthcheck: {one_line(exc)}") from None
        text = output.decode("utf-8", "replace") if isinstance(output, bytes) else str(output)
        lines = [line for line in _ANSI.sub("", text).splitlines() if line.strip()][-LOG_TAIL_LINES:]
        if code != 0:
            failures = [line.split(df.HEALTHCHECK_MARKER, 1)[1].strip() for line in lines
                        if df.HEALTHCHECK_MARKER in line and " FAILED " in f" {line} "]
            names = [m.group(1) for m in (re.match(r"FAILED flow '(.*)' at ", f) for f in failures) if m]
            what = "; ".join(failures) or f"the check exited with status {code}"
            raise HealthcheckFailed(f"the image healthcheck failed: {what}\n{format_tail(lines, 'healthcheck')}",
                                    log_tail="\n".join(lines), flows=names)
        return "\n".join(lines)

    def _healthcheck_container(self, image_id: str, *, reuse: bool) -> str:
        """The id of a running healthcheck container of `image_id` for this repository: one
        started earlier (by this process or another: labels name both) when `reuse`, else a new one.

        Starting a container costs a copy of the image's filesystem on some storage drivers (vfs:
        seconds), so one container per base image and repository stays up and each check is an
        exec in it. Storages never share one (the same base image can serve several), so flows
        of one storage are never visible to code loaded for another. It has no network, no
        capabilities, limited memory and processes, and it ends, and is removed, after
        HEALTHCHECK_IDLE seconds without a check."""
        labels = {HEALTHCHECK_LABEL: image_id, HEALTHCHECK_REPOSITORY_LABEL: self.repository}
        if reuse:
            found = self.api.containers(filters={"label": [f"{k}={v}" for k, v in labels.items()],
                                                 "status": "running"})
            if found:
                return str(found[0]["Id"])
        host_config = self.api.create_host_config(auto_remove=True, network_mode="none", cap_drop=["ALL"],
                                                  security_opt=["no-new-privileges"], pids_limit=256,
                                                  mem_limit=HEALTHCHECK_MEMORY)
        container = self.api.create_container(image_id, command=df.healthcheck_serve_command(HEALTHCHECK_IDLE),
                                              network_disabled=True, host_config=host_config, labels=labels)
        cid = str(container["Id"])
        self.api.start(cid)
        return cid

    def run(self, image: str, command: list[str], env: Mapping[str, str] | None = None) -> int:
        """Run `command` in a new container of `image` (pulled first unless the image is local)
        with `env`; returns its exit code."""
        import docker

        try:
            if not self.local_image:
                self.api.pull(image, auth_config=self._auth_config)
            cid = self.api.create_container(image, command=command, environment=dict(env or {}))["Id"]
            try:
                self.api.start(cid)
                result = self.api.wait(cid)
                return int(result.get("StatusCode", 1)) if isinstance(result, dict) else int(result)
            finally:
                self.api.remove_container(cid, force=True)
        except docker.errors.APIError as exc:
            raise RunFailed(f"running {image} failed: {one_line(exc)}") from None


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
