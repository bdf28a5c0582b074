"""The registries a FlowStorage names, as an attacker would name them: the Docker and OCI storages
the operator opens reach only addresses its endpoint policy allows, lend no credentials of the
operator's own, and their registry client connects only to the address it checked — the
registry, a redirect, the token service its challenge names (a hostile registry chooses all of
these; tests/helpers/hostile_registry.py plays one, on 127.0.0.1)."""

from __future__ import annotations

import base64
import json
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from flowstore.storage.docker import Docker
from flowstore.storage.docker.oci import RegistryClient
from flowstore.storage.endpoints import EndpointNotAllowed, EndpointPolicy
from flowstore.storage.oci.storage import OCI
from flowstore.storage.policy import ServePolicy
from tests.helpers.hostile_registry import HostileRegistry

PRIVATE_OK = ServePolicy(endpoints=EndpointPolicy(allow_private=True))
STRICT = ServePolicy(endpoints=EndpointPolicy(allow_private=False))
METADATA = "169.254.169.254"
#: public addresses (TEST-NET-3) that need no DNS: the policy allows them
REGISTRY, OTHER_REGISTRY = "203.0.113.10", "203.0.113.11"


def docker_spec(**extra: Any) -> dict[str, Any]:
    return {"registryURL": f"{REGISTRY}/flows", "imageName": "team", "baseImage": "python:3.11-slim",
            **extra}


# ---------------------------------------------------------------------- Docker: what a spec may name
@pytest.mark.parametrize(("field", "value"), [
    ("registryURL", f"{METADATA}:5000/flows"),
    ("registryURL", "http://[::ffff:169.254.169.254]:80/flows"),
    ("registryURL", "metadata.google.internal/flows"),
    ("baseImage", f"{METADATA}/python:3.11"),
    ("daemonURL", f"tcp://{METADATA}:2375"),
])
def test_docker_refuses_metadata_addresses_whatever_the_policy(field: str, value: str) -> None:
    with pytest.raises(EndpointNotAllowed, match=field):
        Docker.for_operator(docker_spec(**{field: value}), credentials=None, policy=PRIVATE_OK)
    Docker.from_config(docker_spec(**{field: value}))  # a library user's storage: their own network


@pytest.mark.parametrize(("field", "value"), [
    ("registryURL", "127.0.0.1:5000/flows"),
    ("baseImage", "10.1.2.3:5000/python:3.11"),
    ("daemonURL", "tcp://192.168.1.10:2375"),
])
def test_docker_reaches_private_addresses_only_with_the_operators_flag(field: str, value: str) -> None:
    with pytest.raises(EndpointNotAllowed, match="--allow-private-endpoints"):
        Docker.for_operator(docker_spec(**{field: value}), credentials=None, policy=STRICT)
    Docker.for_operator(docker_spec(**{field: value}), credentials=None, policy=PRIVATE_OK)


def test_a_daemon_socket_must_be_the_operators_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///run/podman/podman.sock")
    with pytest.raises(EndpointNotAllowed, match="not this operator's Docker daemon"):
        Docker.for_operator(docker_spec(daemonURL="unix:///run/containerd/containerd.sock"), credentials=None,
                            policy=PRIVATE_OK)
    Docker.for_operator(docker_spec(daemonURL="unix:///run/podman/podman.sock"), credentials=None, policy=PRIVATE_OK)
    Docker.for_operator(docker_spec(), credentials=None, policy=PRIVATE_OK)  # no daemonURL: the operator's


def test_without_a_secret_the_operator_lends_no_docker_config(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator's own Docker config (its pull secrets) is nobody's to push or pull with: a
    FlowStorage without credentialsSecretRef is anonymous, for its registry and its base image's."""
    auth = base64.b64encode(b"operator:operators-own-password").decode()
    (tmp_path / "config.json").write_text(json.dumps({"auths": {
        REGISTRY: {"auth": auth}, OTHER_REGISTRY: {"auth": auth}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    spec = docker_spec(baseImage=f"{OTHER_REGISTRY}/base:1")
    assert Docker.from_config(spec).registry_username == "operator"  # what a library user gets: theirs
    served = Docker.for_operator(spec, credentials=None, policy=PRIVATE_OK)
    assert served.registry_username is None and served._registry_password is None
    assert served._registry().username is None
    connected: dict[str, Any] = {}
    monkeypatch.setattr("flowstore.storage.docker.storage.Daemon.connect",
                        lambda *args, **kwargs: connected.update(kwargs))
    served._daemon_for(f"{OTHER_REGISTRY}/base")
    assert connected["registry_host"] == OTHER_REGISTRY and connected["auth_config"] is None
    Docker.from_config(spec)._daemon_for(f"{OTHER_REGISTRY}/base")
    assert connected["auth_config"] == {"username": "operator", "password": "operators-own-password"}


# ---------------------------------------------------------------------- the registry client's connections
def test_a_registry_cannot_send_the_client_to_the_metadata_service() -> None:
    """A hostile registry answers with a token realm, then a redirect, on the metadata address:
    the operator's client refuses both before connecting; an agent's client (no policy) follows."""
    with HostileRegistry(realm=f"http://{METADATA}/latest/meta-data/iam/security-credentials/") as registry:
        client = RegistryClient(registry.host, "user", "pw", scheme="http", endpoints=PRIVATE_OK.endpoints)
        with pytest.raises(EndpointNotAllowed, match="metadata"):
            client.ping()
    with HostileRegistry(redirect=f"http://{METADATA}/latest/meta-data/") as registry:
        client = RegistryClient(registry.host, scheme="http", endpoints=PRIVATE_OK.endpoints)
        client.ping()
        with pytest.raises(EndpointNotAllowed, match="metadata"):
            client.blob("flows/x", "sha256:" + "0" * 64)
        assert registry.requests == ["GET /v2/", f"GET /v2/flows/x/blobs/sha256:{'0' * 64}"]


def test_the_oci_storage_checks_every_connection_not_only_the_first() -> None:
    with HostileRegistry(redirect=f"http://{METADATA}/latest/meta-data/") as registry:
        storage = OCI.for_operator({"repository": f"{registry.host}/flows/x", "plainHTTP": True}, credentials=None,
                                   policy=PRIVATE_OK)
        with pytest.raises(EndpointNotAllowed, match="metadata"):
            storage._client.blob("flows/x", "sha256:" + "0" * 64)


@pytest.mark.parametrize("backend", ["docker", "oci"])
def test_dns_rebinding_cannot_move_the_registry_after_the_check(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A name whose first lookup (the policy's check) gives an allowed address and any later one
    the metadata service (a rebinding attacker's zero-TTL answers): the client connects to the
    address it checked and never looks the name up again."""
    name = "rebind.flowstore.test"
    real = socket.getaddrinfo
    lookups: list[str] = []

    def rebinding(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != name:
            return real(host, port, *args, **kwargs)
        checker = sys._getframe(1).f_globals.get("__name__") == "flowstore.storage.endpoints"
        lookups.append("check" if checker else "other")
        return real("127.0.0.1" if checker else METADATA, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    with HostileRegistry() as registry:
        host = f"{name}:{registry.port}"
        if backend == "docker":
            storage: Any = Docker.for_operator({"registryURL": f"http://{host}/flows", "imageName": "x"},
                                               credentials=None, policy=PRIVATE_OK)
            client = storage._registry()
        else:
            client = OCI.for_operator({"repository": f"{host}/flows/x", "plainHTTP": True}, credentials=None,
                                      policy=PRIVATE_OK)._client
        client.timeout = (2.0, 5.0)
        client.ping()
        client.ping()
    assert registry.requests == ["GET /v2/", "GET /v2/"]
    assert set(lookups) == {"check"}, lookups
