"""Docker storage end to end: the real operator and kube-apiserver, the Docker Engine API
(podman) and a registry with htpasswd auth (`scripts/localcloud up docker`). One image per
FlowStorage holds all its flows; a burst of changes builds once; the registry's digest is
recorded; agents load flows straight from the registry, verified; bad input gets its own
reason and leaves the last good image recorded."""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from flowstore import client
from tests.helpers.kube import apply, condition, delete_flows, get, kubectl, wait_for, wait_ready, wait_reason
from tests.helpers.manifests import manifests, stored_flow
from tests.helpers.operator import OperatorProcess

pytestmark = pytest.mark.timeout(600)


def registry_secret(namespace: str, docker_env: dict[str, str], password: str | None = None,
                    name: str = "registry-creds", registry: str | None = None) -> dict[str, Any]:
    user, pw = docker_env["username"], password or docker_env["password"]
    config = {"auths": {registry or docker_env["registry"]: {"username": user, "password": pw,
                                                 "auth": base64.b64encode(f"{user}:{pw}".encode()).decode()}}}
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
            "metadata": {"name": name, "namespace": namespace, "labels": {"flowstore.dev/allow": "true"}},
            "stringData": {".dockerconfigjson": json.dumps(config)}}


def docker_storage(namespace: str, docker_env: dict[str, str], *, name: str = "images", image: str = "",
                   secret: str = "registry-creds", **block: Any) -> dict[str, Any]:  # noqa: S107
    spec: dict[str, Any] = {
        "registryURL": docker_env["registry"],
        "imageName": image or f"flows-{uuid.uuid4().hex[:8]}",
        "daemonURL": docker_env["docker_host"],
        "credentialsSecretRef": {"name": secret},
        **block,
    }
    if "dockerfile" not in spec:
        spec.setdefault("baseImage", docker_env["base_image"])
    return {"apiVersion": "flowstore.dev/v1alpha1", "kind": "FlowStorage",
            "metadata": {"name": name, "namespace": namespace}, "spec": {"docker": spec, "interval": "10m"}}


def flow(namespace: str, name: str, body: str = "return 42", *, storage: str = "images", script: bool = False,
         prelude: str = "") -> dict[str, Any]:
    source = f"{prelude}from flowstore.flow import Flow\n\n\ndef main():\n    {body}\n\n\nflow = Flow({name!r}, main)\n"
    return stored_flow(namespace, name, name, {"inline": source}, storage, storedAsScript=script)


def all_tags(docker_env: dict[str, str], image: str) -> list[str]:
    r = requests.get(f"http://{docker_env['registry']}/v2/{image}/tags/list", timeout=10,
                     auth=(docker_env["username"], docker_env["password"]))
    return sorted(r.json().get("tags") or []) if r.status_code == 200 else []


def tags(docker_env: dict[str, str], image: str) -> list[str]:
    """The tags of flow images (not of the base images, fs-base-…, the flows are put on)."""
    return [t for t in all_tags(docker_env, image) if not t.startswith("fs-base-")]


def base_tags(docker_env: dict[str, str], image: str) -> list[str]:
    return [t for t in all_tags(docker_env, image) if t.startswith("fs-base-")]


@pytest.fixture
def agent_docker_config(docker_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent's own registry credentials, the standard way (DOCKER_CONFIG/config.json)."""
    (tmp_path / "config.json").write_text(registry_secret("x", docker_env)["stringData"][".dockerconfigjson"])
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))


@pytest.fixture(autouse=True)
def _remove_flows(namespace: str) -> Iterator[None]:
    yield
    delete_flows(namespace)


def test_one_image_per_storage_built_once_loaded_from_the_registry(
        operator: OperatorProcess, namespace: str, docker_env: dict[str, str], agent_docker_config: None) -> None:
    image = f"flows-{uuid.uuid4().hex[:8]}"
    names = ["etl", "report", "cleanup"]
    started = time.monotonic()
    apply(manifests(registry_secret(namespace, docker_env), docker_storage(namespace, docker_env, image=image),
                    flow(namespace, "etl", "return 1"), flow(namespace, "report", "return 2", script=True),
                    flow(namespace, "cleanup", "return 3")))
    statuses = {n: wait_ready(namespace, n, timeout=240)["status"] for n in names}
    took = time.monotonic() - started
    print(f"3 flows Ready in one image {took:.1f}s after the apply; tags: {tags(docker_env, image)}")
    digests = {s["image"]["digest"] for s in statuses.values()}
    assert len(digests) == 1, f"one image for the storage: {digests}"
    assert len(tags(docker_env, image)) == 1, "a burst of three flows builds one image"
    assert len(base_tags(docker_env, image)) == 1
    etl = statuses["etl"]
    assert etl["image"]["name"].endswith(image) and etl["image"]["path"] == etl["location"]
    assert etl["location"].startswith("/opt/prefect/flows/") and etl["artifact"]["url"].endswith(etl["image"]["digest"])
    assert statuses["report"]["artifact"]["format"] == "script"
    for i, n in enumerate(names, 1):  # from the registry, no daemon, digests verified
        assert client.load_flow(n, namespace).run() == i

    # One flow changes: one new image with all three; the others keep their (identical) entries.
    apply(manifests(flow(namespace, "report", "return 20", script=True)))
    changed = wait_for("storedflow", namespace, "report",
                       lambda o: (o.get("status") or {}).get("image", {}).get("digest") not in (None, *digests)
                       and condition(o).get("status") == "True", timeout=240)["status"]
    assert len(tags(docker_env, image)) == 2
    assert len(base_tags(docker_env, image)) == 1, "a changed flow does not rebuild the base image"
    assert client.load_flow("report", namespace).run() == 20
    assert client.load_flow("etl", namespace).run() == 1
    new_image = f"{changed['image']['name']}@{changed['image']['digest']}"
    from flowstore.storage import from_serialized

    storage = from_serialized(changed["storage"])
    held = storage.read_flow(changed["image"]["digest"], etl["location"])  # type: ignore[attr-defined]
    assert held, new_image
    # status.flows follows the flows once they were quiet 2 s (at most 30 s later: controller/runtime.py)
    wait_for("flowstorage", namespace, "images",
             lambda o: "etl" in json.dumps((o.get("status") or {}).get("flows") or {}), timeout=60)

    # Operator restart with nothing changed: no build, no push, no status change.
    before = {n: get("storedflow", namespace, n)["metadata"]["resourceVersion"] for n in names}
    operator.restart()
    time.sleep(5)
    assert len(tags(docker_env, image)) == 2
    assert {n: get("storedflow", namespace, n)["metadata"]["resourceVersion"] for n in names} == before


def test_a_flow_failing_its_healthcheck_does_not_stop_the_others(
        operator: OperatorProcess, namespace: str, docker_env: dict[str, str]) -> None:
    # `yaml` is importable in the operator's sandbox but not in the image: unpickling fails there.
    apply(manifests(registry_secret(namespace, docker_env), docker_storage(namespace, docker_env),
                    flow(namespace, "good", "return 1"),
                    flow(namespace, "needs-yaml", "return yaml.safe_dump({'a': 1})", prelude="import yaml\n")))
    failed = wait_reason(namespace, "needs-yaml", "HealthcheckFailed", timeout=240)
    message = condition(failed)["message"]
    print(f"healthcheck: {message[:300]}")
    assert "yaml" in message
    good = wait_ready(namespace, "good", timeout=240)
    assert good["status"]["image"]["digest"].startswith("sha256:")


@pytest.mark.parametrize("case", ["wrong-password", "missing-base-image", "daemon-unreachable",
                                  "registry-unreachable"])
def test_bad_input_gets_its_own_reason(operator: OperatorProcess, namespace: str, docker_env: dict[str, str],
                                       case: str) -> None:
    block: dict[str, Any] = {}
    password = None
    if case == "wrong-password":
        password = "wrong"
    elif case == "missing-base-image":
        block["baseImage"] = "localhost/no-such-image:1"
    elif case == "daemon-unreachable":
        block["daemonURL"] = "tcp://127.0.0.1:9"
    else:
        block["registryURL"] = "127.0.0.1:9"
    expected = {"wrong-password": "AuthFailed", "missing-base-image": "BaseImageNotFound",
                "daemon-unreachable": "DaemonUnavailable", "registry-unreachable": "RegistryUnavailable"}[case]
    apply(manifests(registry_secret(namespace, docker_env, password=password, registry=block.get("registryURL")),
                    docker_storage(namespace, docker_env, **block), flow(namespace, "etl")))
    failed = wait_reason(namespace, "etl", expected, timeout=240)
    print(f"{case}: {expected}: {condition(failed)['message'][:300]}")
    assert docker_env["password"] not in json.dumps(failed)


def test_daemon_over_tls_from_a_secret(
        operator: OperatorProcess, namespace: str, docker_env: dict[str, str], agent_docker_config: None,
        tmp_path: Path) -> None:
    """The daemon is reached over TLS with a client certificate (dockerd --tlsverify): the CA,
    certificate and key come from the Secret daemonTLSSecretRef names, never from the
    operator's environment; without that Secret the flow says which Secret to create."""
    from tests.helpers.tls_certs import Authority, tls_daemon

    authority = Authority.create()
    proxy = tls_daemon(docker_env, authority, tmp_path)
    operator_cert = authority.issue("flowstore operator")
    tls_secret = {"apiVersion": "v1", "kind": "Secret",
                  "metadata": {"name": "docker-tls", "namespace": namespace, "labels": {"flowstore.dev/allow": "true"}},
                  "stringData": {"ca.crt": authority.cert_pem, "tls.crt": operator_cert.cert,
                                 "tls.key": operator_cert.key}}
    storage = docker_storage(namespace, docker_env, daemonURL=f"tcp://127.0.0.1:{proxy.port}",
                             daemonTLSSecretRef={"name": "docker-tls"})
    try:
        apply(manifests(registry_secret(namespace, docker_env), storage, flow(namespace, "etl", "return 5")))
        missing = wait_reason(namespace, "etl", "SourceNotFound", timeout=120)
        assert "docker-tls" in condition(missing)["message"] and proxy.accepted == 0
        apply(manifests(tls_secret))
        kubectl("annotate", "storedflow", "etl", "-n", namespace, f"flowstore.dev/requested-at={time.time()}",
                "--overwrite")
        ready = wait_ready(namespace, "etl", timeout=240)
        assert proxy.accepted > 0 and proxy.tls_refused == 0
        assert client.load_flow("etl", namespace).run() == 5
        text = json.dumps(ready) + json.dumps(get("flowstorage", namespace, "images"))
        assert operator_cert.key.splitlines()[1] not in text, "key material never reaches status"
    finally:
        proxy.stop()


def test_apply_time_validation(crds: None, namespace: str, docker_env: dict[str, str]) -> None:
    both = docker_storage(namespace, docker_env, dockerfile={"configMapRef": {"name": "df", "key": "Dockerfile"}},
                          baseImage="x")
    nowhere = docker_storage(namespace, docker_env)
    del nowhere["spec"]["docker"]["registryURL"]
    two_refs = docker_storage(namespace, docker_env, files=[{"path": "/x", "configMapRef": {"name": "a", "key": "b"},
                                                             "secretRef": {"name": "a", "key": "b"}}])
    tls_on_a_socket = docker_storage(namespace, docker_env, daemonURL="unix:///var/run/docker.sock",
                                     daemonTLSSecretRef={"name": "docker-tls"})
    for doc, message in ((both, "mutually exclusive"), (nowhere, "needs registryURL"), (two_refs, "exactly one of"),
                         (tls_on_a_socket, "daemonTLSSecretRef needs a daemonURL of tcp://")):
        done = kubectl("apply", "-f", "-", input=json.dumps(doc), check=False)
        assert done.returncode != 0 and message in done.stderr, done.stderr


def test_registry_outage_is_temporary_then_the_image_is_pushed_once(
        operator: OperatorProcess, namespace: str, docker_env: dict[str, str]) -> None:
    """Fault injection (issue 7, extended to Docker): the registry is down when the flow is
    applied; the StoredFlow says so (temporary, retrying), and once the registry is back the
    image is built and pushed, once."""
    import subprocess
    import sys

    from tests.helpers.localcloud import LOCALCLOUD, ROOT

    def localcloud(action: str) -> None:
        subprocess.run([sys.executable, str(LOCALCLOUD), action, "registry"], check=True, cwd=ROOT,
                       env=os.environ, capture_output=True)

    image = f"flows-{uuid.uuid4().hex[:8]}"
    localcloud("stop")
    try:
        apply(manifests(registry_secret(namespace, docker_env), docker_storage(namespace, docker_env, image=image),
                        flow(namespace, "etl", "return 7")))
        down = wait_reason(namespace, "etl", "RegistryUnavailable", timeout=120)
        print(f"registry outage: {condition(down)['message'][:200]}")
        assert condition(down, "Stalled") == {}, "an outage is temporary, never Stalled"
    finally:
        localcloud("start")
    started = time.monotonic()
    ready = wait_ready(namespace, "etl", timeout=240)["status"]
    print(f"registry outage: Ready {time.monotonic() - started:.1f}s after the registry came back")
    assert len(tags(docker_env, image)) == 1
    assert ready["image"]["digest"].startswith("sha256:")


def test_a_failing_change_keeps_the_previous_image_recorded_and_loadable(
        operator: OperatorProcess, namespace: str, docker_env: dict[str, str], agent_docker_config: None) -> None:
    apply(manifests(registry_secret(namespace, docker_env), docker_storage(namespace, docker_env),
                    flow(namespace, "etl", "return 1")))
    good = wait_ready(namespace, "etl", timeout=240)["status"]
    # The registry password is rotated wrongly, then the flow changes: the push is refused.
    apply(manifests(registry_secret(namespace, docker_env, password="rotated-wrongly"),
                    flow(namespace, "etl", "return 2")))
    failed = wait_reason(namespace, "etl", "AuthFailed", timeout=240)
    print(f"failed change: {condition(failed)['message'][:200]}")
    assert failed["status"]["image"] == good["image"] and failed["status"]["location"] == good["location"]
    assert client.load_flow("etl", namespace).run() == 1  # the last good flow, still verified and loadable
