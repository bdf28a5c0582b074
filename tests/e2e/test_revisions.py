"""Revisions end to end (docs/revisions.md): the real operator and kube-apiserver against the real
servers of every backend family, objects counted in the backends themselves.

A history bounded by revisionHistoryLimit (5 edits, limit 3, minAge 0s: 3 entries, 3 objects), a
revert that re-points (0 uploads), a pin that holds through edits and an operator restart (0
writes), `flowstore rollback --apply` then `--clear`, an agent downloading through a throttled
proxy while its revision is retired (minAge holds), and the same per family: object stores (S3,
GCS, Azure, Webhook with its deleteRequest), git-hosted (pinned commits, nothing deleted) and
Docker (image manifests, deleted when no StoredFlow names them).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from flowstore import client
from flowstore.agent import status as statuses
from flowstore.agent import trust
from tests.backends.git_conformance import flow_script
from tests.e2e.test_docker import agent_docker_config  # noqa: F401 - a fixture the Docker tests use
from tests.helpers.gitrepo import LocalGitRepo
from tests.helpers.kube import apply, condition, get, kubectl, wait_for, wait_ready
from tests.helpers.localcloud import ROOT
from tests.helpers.manifests import azure_storage, flow_storage, inline_flow, manifests, s3_storage, webhook_storage
from tests.helpers.objects import azure_blobs, gcs_blobs, s3_keys
from tests.helpers.operator import OperatorProcess
from tests.helpers.tcp_proxy import TcpProxy
from tests.helpers.webhook_server import WebhookServer

RETENTION = {"deletionPolicy": "Delete", "retention": {"minAge": "0s"}}


@pytest.fixture(autouse=True)
def _remove_flows(namespace: str) -> Iterator[None]:
    yield
    kubectl("delete", "storedflows,flowstorages", "--all", "-n", namespace, "--wait=false", check=False)


# --------------------------------------------------------------------------- helpers
def edit(namespace: str, version: int, *, name: str = "etl", storage: str = "store", **spec: Any) -> dict[str, Any]:
    """Apply the flow returning `version`, and wait until status describes that generation."""
    apply(inline_flow(namespace, name, name, body=f"return {version}", storage=storage, **spec))
    return wait_ready(namespace, name, timeout=120)


def settled(namespace: str, name: str = "etl", timeout: float = 60.0) -> dict[str, Any]:
    """The StoredFlow once nothing waits for deletion (status.retired is gone)."""
    return wait_for("storedflow", namespace, name,
                    lambda o: condition(o).get("status") == "True" and "retired" not in (o.get("status") or {}),
                    timeout, "to have deleted what it retired")


def revisions(obj: dict[str, Any]) -> list[int]:
    return [e["revision"] for e in obj["status"]["history"]]


def locations(obj: dict[str, Any]) -> list[str]:
    return sorted(e["location"] for e in obj["status"]["history"])


def metric(operator: OperatorProcess, name: str) -> float:
    """The sum of a metric's samples (every label set) on the operator's /metrics."""
    text = requests.get(operator.metrics_url, timeout=10).text
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def flowstore(*args: str) -> subprocess.CompletedProcess[str]:
    """The `flowstore` CLI, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "flowstore.cli", *args], capture_output=True, text=True,
                          env=os.environ, cwd=ROOT, timeout=120)


def five_edits_then_revert(namespace: str, objects: Callable[[], list[str]], operator: OperatorProcess, *,
                           storage: str = "store", timeout: float = 60.0) -> dict[str, Any]:
    """5 edits with revisionHistoryLimit 3 and minAge 0s: exactly 3 entries, exactly 3 objects in
    the backend, those the history names; then a revert to revision 4's content uploads nothing
    and makes revision 4 current again, same digest, at the top."""
    for version in range(1, 6):
        edit(namespace, version, storage=storage, revisionHistoryLimit=3)
    obj = settled(namespace, timeout=timeout)
    assert revisions(obj) == [5, 4, 3] and obj["status"]["lastRevision"] == 5
    held = objects()
    print(f"after 5 edits: history {revisions(obj)}, {len(held)} objects in the backend")
    assert len(held) == 3, held
    fourth = obj["status"]["history"][1]
    stored_before = metric(operator, "flowstore_artifacts_stored_total")
    reverted = edit(namespace, 4, storage=storage, revisionHistoryLimit=3)["status"]
    assert reverted["artifact"]["revision"] == 4 and reverted["artifact"]["digest"] == fourth["digest"]
    assert reverted["location"] == fourth["location"] and [e["revision"] for e in reverted["history"]] == [4, 5, 3]
    assert reverted["artifact"]["designation"] == 6 and reverted["lastRevision"] == 5
    assert metric(operator, "flowstore_artifacts_stored_total") == stored_before, "a revert must not upload"
    assert sorted(objects()) == sorted(held)
    assert client.load_flow("etl", namespace).run() == 4
    assert client.load_flow("etl", namespace, revision=5).run() == 5
    return get("storedflow", namespace, "etl")


# --------------------------------------------------------------------------- S3: the whole story
def test_history_retention_and_revert_on_s3(operator: OperatorProcess, namespace: str, s3_bucket: str,
                                            s3_endpoint: str) -> None:
    apply(s3_storage(namespace, s3_bucket, s3_endpoint, **RETENTION))
    obj = five_edits_then_revert(namespace, lambda: s3_keys(s3_endpoint, s3_bucket), operator)
    assert s3_keys(s3_endpoint, s3_bucket) == locations(obj)
    entry = obj["status"]["history"][2]  # revision 3
    assert {"revision", "digest", "size", "format", "url", "location", "storedAt", "supersededAt", "inputsDigest",
            "sourceDigest", "versions"} <= set(entry)
    printed = flowstore("history", "etl", "-n", namespace)
    print(printed.stdout)
    assert printed.returncode == 0 and printed.stdout.splitlines()[0].split()[:4] == ["REVISION", "DIGEST",
                                                                                         "STORED", "AT"]
    assert re.search(r"^4\s+sha256:\S+\s+\S+\s+sha256:\S+\s+current$", printed.stdout, re.M), printed.stdout
    listed = json.loads(flowstore("history", "etl", "-n", namespace, "-o", "json").stdout)
    assert listed["current"] == 4 and [e["revision"] for e in listed["history"]] == [4, 5, 3]
    got = flowstore("get", "etl", "-n", namespace, "--revision", "3", "-o", "/dev/null")
    assert got.returncode == 0 and entry["digest"] in got.stderr, got.stderr
    missing = flowstore("get", "etl", "-n", namespace, "--revision", "1")
    assert missing.returncode == 1 and "revision 1 is not in the StoredFlow's history" in missing.stderr
    assert "4 (sha256:" in missing.stderr and "\n" not in missing.stderr.strip()

    # Deleting the StoredFlow under Delete removes every object it still holds.
    kubectl("delete", "storedflow", "etl", "-n", namespace, "--timeout=60s")
    assert s3_keys(s3_endpoint, s3_bucket) == []


def test_a_pin_holds_through_edits_and_a_restart_then_rollback_and_clear(
        operator: OperatorProcess, namespace: str, s3_bucket: str, s3_endpoint: str) -> None:
    apply(s3_storage(namespace, s3_bucket, s3_endpoint))
    for version in (1, 2):
        edit(namespace, version)
    printed = flowstore("rollback", "etl", "-n", namespace, "--to", "1")
    assert printed.returncode == 0 and "spec:\n  pin:\n    revision: 1" in printed.stdout, printed.stderr
    assert "pin" not in get("storedflow", namespace, "etl")["spec"], "printing the patch must not apply it"
    applied = flowstore("rollback", "etl", "-n", namespace, "--to", "1", "--apply")
    assert applied.returncode == 0, applied.stderr
    pinned = wait_for("storedflow", namespace, "etl", lambda o: condition(o, "Pinned").get("status") == "True"
                      and (o.get("status") or {}).get("observedGeneration") == o["metadata"]["generation"])
    status = pinned["status"]
    print(f"pinned: {condition(pinned, 'Pinned')['message']} / Ready: {condition(pinned)['message']}")
    assert status["artifact"]["revision"] == 1 and status["latest"]["revision"] == 2
    assert condition(pinned)["status"] == "True" and "revision 1" in condition(pinned, "Pinned")["message"]
    assert client.load_flow("etl", namespace).run() == 1
    assert kubectl("get", "storedflow", "etl", "-n", namespace, "-o",
                   "custom-columns=REV:.status.artifact.revision", "--no-headers").stdout.strip() == "1"

    # New content is built and recorded; the pin stays current.
    apply(inline_flow(namespace, "etl", "etl", body="return 3", pin={"revision": 1}))
    moved = wait_for("storedflow", namespace, "etl", lambda o: (o.get("status") or {}).get("latest", {})
                     .get("revision") == 3 and condition(o).get("status") == "True")
    assert moved["status"]["artifact"]["revision"] == 1 and client.load_flow("etl", namespace).run() == 1
    assert client.load_flow("etl", namespace, revision=3).run() == 3

    # An operator restart writes nothing.
    before, keys = moved["metadata"]["resourceVersion"], s3_keys(s3_endpoint, s3_bucket)
    operator.restart()
    wait_for("storedflow", namespace, "etl", lambda o: metric(operator, "flowstore_reconciles_total") > 0, 60,
             "the restarted operator's first passes")
    time.sleep(5)
    assert get("storedflow", namespace, "etl")["metadata"]["resourceVersion"] == before, "a restart wrote status"
    assert s3_keys(s3_endpoint, s3_bucket) == keys

    # --clear: the newest revision is current again.
    cleared = flowstore("rollback", "etl", "-n", namespace, "--clear", "--apply")
    assert cleared.returncode == 0, cleared.stderr
    back = wait_for("storedflow", namespace, "etl", lambda o: "pin" not in o["spec"]
                    and (o.get("status") or {}).get("artifact", {}).get("revision") == 3)
    assert not condition(back, "Pinned") and "latest" not in back["status"]
    assert client.load_flow("etl", namespace).run() == 3

    # A pin that is not in the history: Ready=False with its own reason, naming what exists.
    apply(inline_flow(namespace, "etl", "etl", body="return 3", pin={"revision": 42}))
    lost = wait_for("storedflow", namespace, "etl", lambda o: condition(o).get("reason") == "PinNotFound")
    print(f"pin not found: {condition(lost)['message']}")
    assert condition(lost)["status"] == "False" and condition(lost, "Stalled")["status"] == "True"
    assert "revision 42" in condition(lost)["message"] and "3 (sha256:" in condition(lost)["message"]
    assert lost["status"]["artifact"]["revision"] == 3  # the last good one stays loadable


def test_an_agent_mid_download_keeps_its_bytes_while_its_revision_is_retired(
        operator: OperatorProcess, namespace: str, s3_bucket: str, s3_endpoint: str) -> None:
    """minAge holds: revision 1 leaves the history (limit 1) while an agent downloads it through a
    slow link; its object stays until minAge has passed, then goes."""
    apply(s3_storage(namespace, s3_bucket, s3_endpoint, deletionPolicy="Delete", retention={"minAge": "20s"}))
    big = "x" * 100_000  # a 100 kB constant: the pickle takes seconds through the throttled link
    apply(inline_flow(namespace, "etl", "etl", body=f"return {big!r}", revisionHistoryLimit=1))
    first = wait_ready(namespace, "etl", timeout=120)["status"]
    assert first["artifact"]["size"] > 100_000
    proxy = TcpProxy.for_url(s3_endpoint)
    proxy.rate = 25_000.0  # bytes a second: about 5 s for the artifact
    proxy.start()
    try:
        # the agent reaches S3 through the slow link: the FlowStorage it trusts names the proxy
        obj = get("storedflow", namespace, "etl")
        fs = get("flowstorage", namespace, "store")
        fs["spec"]["s3"]["endpointURL"] = proxy.url
        obj["status"]["storage"]["endpointURL"] = proxy.url
        located = client.check_location(statuses.parse(obj, namespace=namespace, name="etl"), api=None, sources=[
            lambda _: [trust.from_flowstorage(fs, namespace=namespace, name="store")]])
        result: dict[str, Any] = {}

        def download() -> None:
            started = time.monotonic()
            try:
                result["data"] = client.download(located)
            except Exception as exc:
                result["error"] = exc
            result["seconds"] = time.monotonic() - started

        agent = threading.Thread(target=download)
        agent.start()
        time.sleep(0.5)
        apply(inline_flow(namespace, "etl", "etl", body="return 3", revisionHistoryLimit=1))
        retired = wait_for("storedflow", namespace, "etl", lambda o: (o.get("status") or {}).get("retired"))
        print(f"retired while the agent downloads: {retired['status']['retired']}")
        assert retired["status"]["retired"][0]["location"] == first["location"]
        agent.join(timeout=60)
    finally:
        proxy.stop()
    assert "error" not in result, result.get("error")
    print(f"the agent downloaded {len(result['data'])} bytes in {result['seconds']:.1f}s, verified")
    assert result["seconds"] > 2 and len(result["data"]) == first["artifact"]["size"]
    assert first["location"] in s3_keys(s3_endpoint, s3_bucket), "deleted before minAge passed"
    gone = settled(namespace, timeout=60)
    assert s3_keys(s3_endpoint, s3_bucket) == [gone["status"]["location"]]


# --------------------------------------------------------------------------- the other object stores
@pytest.fixture
def gcs_bucket(gcs_endpoint: str) -> str:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs_sdk

    name = f"flows-{uuid.uuid4().hex[:12]}"
    gcs_sdk.Client(project="flowstore", credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
                   client_options={"api_endpoint": gcs_endpoint}).create_bucket(name)
    return name


def test_history_and_retention_on_gcs(operator: OperatorProcess, namespace: str, gcs_endpoint: str,
                                      gcs_bucket: str) -> None:
    apply(manifests(flow_storage(namespace, "store", "gcs", {"bucket": gcs_bucket, "endpointURL": gcs_endpoint},
                                 **RETENTION)))
    obj = five_edits_then_revert(namespace, lambda: gcs_blobs(gcs_endpoint, gcs_bucket), operator)
    assert gcs_blobs(gcs_endpoint, gcs_bucket) == locations(obj)


def test_history_and_retention_on_azure(operator: OperatorProcess, namespace: str,
                                        azure_connection_string: str) -> None:
    from azure.storage.blob import BlobServiceClient

    container = f"flows-{uuid.uuid4().hex[:12]}"
    BlobServiceClient.from_connection_string(azure_connection_string).create_container(container)
    apply(azure_storage(namespace, "store", container, azure_connection_string))
    kubectl("patch", "flowstorage", "store", "-n", namespace, "--type=merge", "-p", json.dumps({"spec": RETENTION}))
    obj = five_edits_then_revert(namespace, lambda: azure_blobs(azure_connection_string, container), operator)
    assert azure_blobs(azure_connection_string, container) == locations(obj)


def test_history_and_retention_on_a_webhook_with_a_delete_request(operator: OperatorProcess, namespace: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    token = f"tok-{uuid.uuid4().hex}"
    monkeypatch.setenv("TOKEN", token)  # the agent's own token (the status never carries it),
    monkeypatch.setenv("FLOWSTORE_ALLOWED_ENV", "TOKEN")  # which its templates may read
    with WebhookServer(token=token) as webhook:
        apply(webhook_storage(namespace, "store", webhook.url, token, delete=True, **RETENTION))
        obj = five_edits_then_revert(namespace, lambda: sorted(webhook.bodies), operator)
        # the service names objects by the ids it gave: those the history's states name
        ids = sorted(e["storageState"]["buildResponse"]["json"]["id"] for e in obj["status"]["history"])
        assert sorted(webhook.bodies) == ids


# --------------------------------------------------------------------------- git-hosted: pinned commits
def test_git_history_is_pinned_commits_and_nothing_is_deleted(
        operator: OperatorProcess, namespace: str, git_server: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.e2e.test_git import git_creds, git_flow, git_storage

    repo = LocalGitRepo(Path(git_server["root"]))
    monkeypatch.setenv("GIT_USERNAME", git_server["username"])  # the agent's own credentials
    monkeypatch.setenv("GIT_PASSWORD", git_server["password"])
    commits = [repo.commit({"flows/etl.py": flow_script("etl", 1)})]
    url = f"{git_server['url']}/{repo.name}.git"
    sflow = git_flow(namespace, "etl", "etl", "flows/etl.py")
    sflow["spec"]["revisionHistoryLimit"] = 3
    storage = git_storage(namespace, url, ref="main")
    storage["spec"].update(RETENTION)
    apply(manifests(git_creds(namespace, git_server["username"], git_server["password"]), storage, sflow))
    wait_ready(namespace, "etl", timeout=60)
    for value in range(2, 6):
        commits.append(repo.commit({"flows/etl.py": flow_script("etl", value)}))
        wait_for("storedflow", namespace, "etl", lambda o, c=commits[-1]: (o.get("status") or {}).get("git", {})
                 .get("commit") == c, timeout=60)
    obj = settled(namespace)
    assert revisions(obj) == [5, 4, 3]
    assert [e["git"]["commit"] for e in obj["status"]["history"]] == commits[:1:-1]
    assert repo.head() == commits[-1] and all(repo.show(c, "flows/etl.py") for c in commits)
    # A commit bringing back revision 4's file re-points to revision 4 at its own commit.
    repo.commit({"flows/etl.py": flow_script("etl", 4)})
    back = wait_for("storedflow", namespace, "etl",
                    lambda o: (o.get("status") or {}).get("artifact", {}).get("revision") == 4, timeout=60)
    assert back["status"]["git"]["commit"] == commits[3] and back["status"]["storage"]["ref"] == commits[3]
    assert client.load_flow("etl", namespace).run() == 4
    assert client.load_flow("etl", namespace, revision=5).run() == 5
    # A pin to revision 3: its commit is what agents read.
    kubectl("patch", "storedflow", "etl", "-n", namespace, "--type=merge", "-p",
            json.dumps({"spec": {"pin": {"revision": 3}}}))
    pinned = wait_for("storedflow", namespace, "etl",
                      lambda o: condition(o, "Pinned").get("status") == "True", timeout=60)
    assert pinned["status"]["git"]["commit"] == commits[2] and client.load_flow("etl", namespace).run() == 3


# --------------------------------------------------------------------------- Docker: image manifests
@pytest.mark.usefixtures("agent_docker_config")
def test_docker_history_is_image_digests_and_retention_deletes_manifests(
        operator: OperatorProcess, namespace: str, docker_env: dict[str, str]) -> None:
    from tests.e2e.test_docker import docker_storage, registry_secret, tags

    image = f"flows-{uuid.uuid4().hex[:8]}"
    storage = docker_storage(namespace, docker_env, name="store", image=image)
    storage["spec"].update(RETENTION)
    apply(manifests(registry_secret(namespace, docker_env), storage))
    obj = five_edits_then_revert(namespace, lambda: tags(docker_env, image), operator, timeout=180)
    digests = [e["image"]["digest"] for e in obj["status"]["history"]]
    assert len(set(digests)) == 3 and obj["status"]["image"]["digest"] == digests[0]
    for digest in digests:  # each revision's image is still in the registry, by digest
        r = requests.head(f"http://{docker_env['registry']}/v2/{image}/manifests/{digest}", timeout=10,
                          auth=(docker_env["username"], docker_env["password"]),
                          headers={"Accept": "application/vnd.oci.image.manifest.v1+json, "
                                             "application/vnd.docker.distribution.manifest.v2+json"})
        assert r.status_code == 200, (digest, r.status_code)


@pytest.mark.usefixtures("agent_docker_config")
def test_an_image_another_flow_still_names_is_not_deleted(
        operator: OperatorProcess, namespace: str, docker_env: dict[str, str]) -> None:
    """Every image of a storage holds all its flows: an image one flow retires stays while another
    flow's status still names it, and goes once none does."""
    from tests.e2e.test_docker import docker_storage, registry_secret, tags

    image = f"flows-{uuid.uuid4().hex[:8]}"
    storage = docker_storage(namespace, docker_env, name="store", image=image)
    storage["spec"].update(RETENTION)
    apply(manifests(registry_secret(namespace, docker_env), storage))
    apply(inline_flow(namespace, "other", "other", body="return 0", storedAsScript=True))
    wait_ready(namespace, "other", timeout=180)
    shared = edit(namespace, 1, revisionHistoryLimit=1)["status"]["image"]["digest"]  # etl v1 + other
    # the other flow's spec changes but not its bytes: its next image is exactly etl's, by digest
    apply(inline_flow(namespace, "other", "other", body="return 0", storedAsScript=True, objectName="flow"))
    other = wait_for("storedflow", namespace, "other", lambda o: (o.get("status") or {}).get(
        "observedGeneration") == 2 and condition(o).get("status") == "True", timeout=180)["status"]
    assert other["image"]["digest"] == shared, "the same flows make the same image"
    edit(namespace, 2, revisionHistoryLimit=1)  # etl retires the shared image...
    obj = settled(namespace, timeout=180)
    assert revisions(obj) == [2] and obj["status"]["image"]["digest"] != shared
    held = tags(docker_env, image)
    print(f"tags after etl moved on: {held}")
    assert client.load_flow("other", namespace).run() == 0, "...but the other flow still names it: it stays"
    r = requests.head(f"http://{docker_env['registry']}/v2/{image}/manifests/{shared}", timeout=10,
                      auth=(docker_env["username"], docker_env["password"]),
                      headers={"Accept": "application/vnd.oci.image.manifest.v1+json, "
                                         "application/vnd.docker.distribution.manifest.v2+json"})
    assert r.status_code == 200


# --------------------------------------------------------------------------- rollback and Argo CD
APPLICATION_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "applications.argoproj.io"},
    "spec": {"group": "argoproj.io", "scope": "Namespaced",
             "names": {"kind": "Application", "plural": "applications", "singular": "application"},
             "versions": [{"name": "v1alpha1", "served": True, "storage": True,
                           "schema": {"openAPIV3Schema": {"type": "object",
                                                          "x-kubernetes-preserve-unknown-fields": True}}}]},
}


@pytest.fixture
def argocd_applications() -> Iterator[None]:
    """Argo CD's Application CRD (the kind only: no Argo CD runs; rollback reads Applications)."""
    apply(json.dumps(APPLICATION_CRD))
    kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/applications.argoproj.io")
    yield
    kubectl("delete", "crd", "applications.argoproj.io", "--wait=false", check=False)


def test_rollback_apply_refuses_an_object_argo_cd_self_heals(
        operator: OperatorProcess, namespace: str, s3_bucket: str, s3_endpoint: str, argocd_applications: None) -> None:
    apply(s3_storage(namespace, s3_bucket, s3_endpoint))
    for version in (1, 2):
        edit(namespace, version)
    app = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Application",
           "metadata": {"name": "flows", "namespace": namespace},
           "spec": {"syncPolicy": {"automated": {"prune": True, "selfHeal": True}}}}
    apply(json.dumps(app))
    kubectl("annotate", "storedflow", "etl", "-n", namespace,
            f"argocd.argoproj.io/tracking-id=flows:flowstore.dev/StoredFlow:{namespace}/etl")
    refused = flowstore("rollback", "etl", "-n", namespace, "--to", "1", "--apply")
    print(refused.stderr)
    assert refused.returncode == 1 and "selfHeal: true" in refused.stderr and "--force" in refused.stderr
    assert refused.stderr.startswith("flowstore: ") and refused.stderr.count("\n") == 1
    assert "pin" not in get("storedflow", namespace, "etl")["spec"]
    # without self-heal Argo CD does not undo it: applied
    app["spec"]["syncPolicy"]["automated"]["selfHeal"] = False
    apply(json.dumps(app))
    assert flowstore("rollback", "etl", "-n", namespace, "--to", "1", "--apply").returncode == 0
    assert get("storedflow", namespace, "etl")["spec"]["pin"] == {"revision": 1}
    # self-heal again: --force applies all the same
    app["spec"]["syncPolicy"]["automated"]["selfHeal"] = True
    apply(json.dumps(app))
    forced = flowstore("rollback", "etl", "-n", namespace, "--clear", "--apply", "--force")
    assert forced.returncode == 0, forced.stderr
    assert "pin" not in get("storedflow", namespace, "etl")["spec"]
