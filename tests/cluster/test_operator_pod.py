"""The operator as a Pod from the chart: Ready, storing StoredFlows in S3 in both RBAC modes with
its own ServiceAccount token (in-cluster config), never touching namespaces it does not watch,
no RBAC denial in its log, and its build sandbox holding inside the real container.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest

from tests.cluster.conftest import Release, pull_secret
from tests.cluster.test_builder_jobs import PREFECT_ETL, script_flow, wait_cleaned_up
from tests.helpers.kube import apply, condition, get, kubectl, wait_ready, wait_reason
from tests.helpers.manifests import inline_flow, s3_storage
from tests.helpers.objects import s3_keys

SA_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


def store_flows(namespace: str, bucket: str, endpoint: str, count: int = 2) -> list[dict]:
    apply(s3_storage(namespace, bucket, endpoint, key_prefix="prod/"))
    for i in range(count):
        apply(inline_flow(namespace, f"flow-{i}", f"flow {i}", body=f"return {i}"))
    return [wait_ready(namespace, f"flow-{i}", timeout=120)["status"] for i in range(count)]


def build_in_image(namespace: str, bucket: str, endpoint: str, image: str, docker_env: dict[str, str]) -> dict:
    """A Prefect flow built by a builder Job (spec.build) that the operator Pod starts, watches,
    reads the log of and deletes with the chart's RBAC."""
    pull_secret(namespace, docker_env)
    apply(s3_storage(namespace, bucket, endpoint, name="built", key_prefix="built/",
                     build={"image": image, "imagePullSecrets": [{"name": "registry"}]}))
    apply(script_flow(namespace, "prefect-etl", "prefect etl", PREFECT_ETL, storage="built"))
    status: dict = wait_ready(namespace, "prefect-etl", timeout=180)["status"]
    assert status["artifact"]["versions"]["prefect"] == "1.4.1", status
    wait_cleaned_up(namespace)
    return status


def assert_pod_as_the_chart_says(release: Release) -> None:
    """The running Pod: the chart's ServiceAccount, a projected token, the read-only root
    filesystem, non-root, and a liveness probe the kubelet runs (and that passes)."""
    (pod,) = release.pods()
    spec = pod["spec"]
    assert spec["serviceAccountName"] == release.deployment
    assert spec["hostNetwork"] is True
    (container,) = spec["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["livenessProbe"]["httpGet"]["host"] == "127.0.0.1"
    assert any(v.get("projected") for v in spec["volumes"]), "ServiceAccount token volume"
    (status,) = pod["status"]["containerStatuses"]
    assert status["ready"] and status["restartCount"] == 0, status
    # In the container: uid 10001, / read-only, the token there.
    done = kubectl("exec", "-n", release.namespace, pod["metadata"]["name"], "--", "python3", "-c",
                   "open('/probe', 'w')", check=False)
    assert "Read-only file system" in done.stderr, done
    out = kubectl("exec", "-n", release.namespace, pod["metadata"]["name"], "--", "sh", "-c",
                  f"id -u; test -s {SA_TOKEN} && echo token").stdout.split()
    assert out == ["10001", "token"], out


def test_cluster_wide_install_stores_flows(install: Callable[..., Release], new_namespace: Callable[[], str],
                                           s3_endpoint: str, s3_bucket: str, runtime_image: str,
                                           docker_env: dict[str, str]) -> None:
    release = install()
    namespace = new_namespace()
    statuses = store_flows(namespace, s3_bucket, s3_endpoint)
    statuses.append(build_in_image(namespace, s3_bucket, s3_endpoint, runtime_image, docker_env))
    keys = s3_keys(s3_endpoint, s3_bucket)
    assert sorted(s["location"] for s in statuses) == keys, keys
    assert_pod_as_the_chart_says(release)
    # The liveness probe has run several times by now (period 5 s) and never failed.
    time.sleep(6)
    (pod,) = release.pods()
    assert pod["status"]["containerStatuses"][0]["restartCount"] == 0
    events = kubectl("get", "events", "-n", release.namespace, "-o", "json").stdout
    # (a readiness probe may fail while the process starts: that is what it is for)
    assert not [e for e in json.loads(events)["items"] if e.get("reason") == "Unhealthy"
                and e.get("message", "").startswith("Liveness")], events
    logs = release.logs()
    assert "acquired Lease" in logs
    release.assert_no_denials(logs)


def test_namespaced_install_serves_only_its_namespaces(install: Callable[..., Release],
                                                       new_namespace: Callable[[], str], s3_endpoint: str,
                                                       s3_bucket: str, runtime_image: str,
                                                       docker_env: dict[str, str]) -> None:
    watched, elsewhere = new_namespace(), new_namespace()
    release = install(watch=(watched,))
    # Outside the watched namespaces first: if the operator were to touch it, it has had the
    # whole time of the watched flows' builds to do so.
    apply(s3_storage(elsewhere, s3_bucket, s3_endpoint, key_prefix="elsewhere/"))
    apply(inline_flow(elsewhere, "ignored", "ignored"))
    statuses = store_flows(watched, s3_bucket, s3_endpoint)
    statuses.append(build_in_image(watched, s3_bucket, s3_endpoint, runtime_image, docker_env))
    assert sorted(s["location"] for s in statuses) == s3_keys(s3_endpoint, s3_bucket)
    time.sleep(3)
    for kind, name in (("storedflow", "ignored"), ("flowstorage", "store")):
        obj = get(kind, elsewhere, name)
        assert "status" not in obj and not obj["metadata"].get("finalizers"), obj
        assert not [k for k in obj["metadata"].get("annotations") or {} if k.startswith("kopf.")], obj
    assert not [k for k in s3_keys(s3_endpoint, s3_bucket) if k.startswith("elsewhere/")]
    release.assert_no_denials()


PROBE_FLOW = '''
import json, socket
from flowstore.flow import Flow

def attempt(action):
    try:
        action()
        return "ALLOWED"
    except OSError as exc:
        return type(exc).__name__

def read_token():
    open("{token}").read()

def reach_api_server():
    socket.create_connection(("127.0.0.1", {port}), timeout=3).close()

# Runs while the operator builds the flow, in its sandbox: what could a flow script get at?
FOUND = {{"token": attempt(read_token), "apiserver": attempt(reach_api_server)}}

def main():
    return FOUND

flow = Flow("probe", main)
'''


def test_build_sandbox_holds_inside_the_pod(install: Callable[..., Release], new_namespace: Callable[[], str],
                                            s3_endpoint: str, s3_bucket: str, apiserver_port: int) -> None:
    """Under containerd's default seccomp profile (the chart's RuntimeDefault), as uid 10001
    with a read-only root: a flow script that, while being built, reads the mounted token or
    connects to the API server is refused, though the operator's own process can do both."""
    namespace = new_namespace()
    release = install(watch=(namespace,))
    (pod,) = release.pods()
    apply(s3_storage(namespace, s3_bucket, s3_endpoint))
    script = PROBE_FLOW.format(token=SA_TOKEN, port=apiserver_port)
    apply(script_flow(namespace, "probe", "probe", script))
    wait_ready(namespace, "probe", timeout=120)
    from flowstore.client import load_flow

    found = load_flow("probe", namespace).run()
    assert found == {"token": "PermissionError", "apiserver": "PermissionError"}, found
    # The same two things from the operator's own process in that container succeed, so the
    # refusals above are the sandbox's, not the Pod's.
    outside = (f"import socket; open('{SA_TOKEN}').read(); "
               f"socket.create_connection(('127.0.0.1', {apiserver_port}), timeout=3).close(); print('both')")
    assert kubectl("exec", "-n", release.namespace, pod["metadata"]["name"], "--", "python3", "-c",
                   outside).stdout.strip() == "both"
    # the operator probes its sandbox a few seconds after it starts (not in kopf's way): on a
    # loaded node the line may come after the first build
    deadline = time.monotonic() + 90
    logs = release.logs()
    while "build sandbox: confined" not in logs and "cannot confine builds" not in logs \
            and time.monotonic() < deadline:
        time.sleep(2)
        logs = release.logs()
    assert "build sandbox: confined" in logs and "cannot confine builds" not in logs
    release.assert_no_denials(logs)


def test_builds_without_rbac_for_jobs_say_which_permission_is_missing(
        install: Callable[..., Release], new_namespace: Callable[[], str], s3_endpoint: str, s3_bucket: str,
        runtime_image: str, docker_env: dict[str, str]) -> None:
    """A namespace whose Role (here: the chart's, with its Jobs rule taken out, as an
    administrator's own RBAC might be) does not let the operator run builder Jobs: the flow
    says which permission is missing, and the flows that need no Job are stored regardless."""
    namespace = new_namespace()
    release = install(watch=(namespace,))
    (role,) = json.loads(kubectl("get", "roles", "-n", namespace, "-l", f"app.kubernetes.io/instance={release.name}",
                                 "-o", "json").stdout)["items"]
    role["rules"] = [r for r in role["rules"] if "batch" not in r["apiGroups"]]
    kubectl("replace", "-f", "-", input=json.dumps(role))
    pull_secret(namespace, docker_env)
    apply(s3_storage(namespace, s3_bucket, s3_endpoint, name="built", key_prefix="built/",
                     build={"image": runtime_image, "imagePullSecrets": [{"name": "registry"}]}))
    apply(script_flow(namespace, "prefect-etl", "prefect etl", PREFECT_ETL, storage="built"))
    store_flows(namespace, s3_bucket, s3_endpoint, count=1)
    failed = wait_reason(namespace, "prefect-etl", "BuildForbidden", timeout=120)
    message = condition(failed)["message"]
    assert "jobs.batch" in message and repr(namespace) in message and "create" in message, message
    assert condition(failed, "Stalled").get("status") == "True"


@pytest.mark.parametrize("mode", ["cluster-wide", "namespaced"])
def test_without_builds_the_chart_grants_and_the_operator_makes_no_job(
        install: Callable[..., Release], new_namespace: Callable[[], str], s3_endpoint: str, s3_bucket: str,
        runtime_image: str, docker_env: dict[str, str], mode: str) -> None:
    """builds.enabled=false (the chart's default): a StoredFlow asking for spec.build is refused by
    the operator's policy (BuildNotAllowed, saying what to change), no Job appears, and the
    operator's ServiceAccount could not have made one: the chart granted nothing on Jobs."""
    namespace = new_namespace()
    release = install("--set", "builds.enabled=false", watch=(namespace,) if mode == "namespaced" else ())
    pull_secret(namespace, docker_env)
    apply(s3_storage(namespace, s3_bucket, s3_endpoint, name="built", key_prefix="built/",
                     build={"image": runtime_image, "imagePullSecrets": [{"name": "registry"}]}))
    apply(script_flow(namespace, "prefect-etl", "prefect etl", PREFECT_ETL, storage="built"))
    store_flows(namespace, s3_bucket, s3_endpoint, count=1)  # flows without spec.build are stored
    failed = wait_reason(namespace, "prefect-etl", "BuildNotAllowed", timeout=120)
    assert "builds.enabled" in condition(failed)["message"]
    assert kubectl("get", "jobs", "-n", namespace, "-o", "name").stdout.strip() == ""
    account = f"system:serviceaccount:{release.namespace}:{release.deployment}"  # the chart names both alike
    for verb, resource in (("create", "jobs.batch"), ("get", "pods/log"), ("create", "configmaps")):
        answer = kubectl("auth", "can-i", verb, resource, "-n", namespace, f"--as={account}", check=False)
        assert answer.stdout.strip() == "no", (verb, resource, answer.stdout)
    release.assert_no_denials()
