"""A run keeps its code (issue 22), against the real Prefect 3.9 server and process workers
(tests/helpers/prefect3.py) and the real operator storing signed StoredFlows in S3:

- a deployment made from the pinned step ``flowstore locate -o prefect-pull-step`` prints keeps
  running revision 1 after the StoredFlow moves to 2, a ``--track-latest`` one follows, a job
  variable runs one revision on demand, and a digest that is not in the history fails before any
  flow code, naming the revisions there are; the pinned digest's bytes swapped in the bucket (same
  size) are refused before any flow code runs;
- a run whose process crashes after its pull step recorded the digest is retried by Prefect
  (``prefect flow-run retry``) after the StoredFlow moved on, and loads the first digest again;
- a ``--self-contained`` step runs on a worker with no Kubernetes access at all (an empty
  KUBECONFIG, no in-cluster environment, an empty HOME).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from tests.e2e.test_prefect3 import FLOW, KEY, flowstore_cli, state, storage_and_flows
from tests.helpers import prefect1
from tests.helpers.kube import apply, wait_for, wait_ready
from tests.helpers.manifests import manifests, stored_flow
from tests.helpers.operator import OperatorProcess
from tests.helpers.prefect3 import Prefect
from tests.helpers.prefect3 import python as prefect_python

NO_KUBE_POOL = "flowstore-no-kube"
CRASHY = textwrap.dedent("""\
    import os
    from pathlib import Path

    from prefect import flow, get_run_logger

    VERSION = "{version}"


    @flow(name="crashy")
    def crashy():
        marker = Path({marker!r})
        if not marker.exists():  # the first attempt: its process dies after the pull step ran
            marker.write_text(VERSION)
            os._exit(17)
        get_run_logger().info("crashy ran version %s", VERSION)
        return VERSION
""")


@pytest.fixture(scope="module")
def prefect(tmp_path_factory: pytest.TempPathFactory, kube_env: dict[str, str], s3_endpoint: str) -> Iterator[Prefect]:
    """A Prefect 3 server, a process worker with the agent's environment (KUBECONFIG, the S3
    credentials, the signing key), and a second worker on NO_KUBE_POOL whose flow runs cannot
    reach any Kubernetes API: KUBECONFIG empty, no KUBERNETES_* variables, an empty HOME."""
    home = tmp_path_factory.mktemp("prefect3-runs")
    stack = Prefect(home, {**os.environ, "FLOWSTORE_SIGNING_KEY": KEY})
    try:
        stack.start()
        nobody = home / "no-kube-home"
        nobody.mkdir()
        env = {k: v for k, v in stack.env.items() if not k.startswith("KUBERNETES_")}
        env.update(KUBECONFIG="", HOME=str(nobody), FLOWSTORE_CACHE_DIR=str(home / "no-kube-cache"))
        stack.start_worker("worker-no-kube", NO_KUBE_POOL, env)
        stack.no_kube_env = env  # type: ignore[attr-defined]
        yield stack
    finally:
        stack.stop()


def step(name: str, namespace: str, *flags: str) -> list[dict[str, Any]]:
    printed = flowstore_cli("locate", name, "-n", namespace, "-o", "prefect-pull-step", *flags)
    assert printed.returncode == 0, printed.stderr
    return list(yaml.safe_load(printed.stdout))


def new_digest(namespace: str, name: str, old: str) -> str:
    return str(wait_for("storedflow", namespace, name,
                        lambda o: (o.get("status") or {}).get("artifact", {}).get("digest") not in (None, old),
                        timeout=60, what="to store the new revision")["status"]["artifact"]["digest"])


def etl_version(namespace: str, version: str) -> None:
    apply(manifests({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "flows", "namespace": namespace},
                     "data": {"etl_daily.py": FLOW.format(version=version)}}))


def test_pinned_steps_keep_their_revision_and_track_latest_follows(
        operator: OperatorProcess, prefect: Prefect, namespace: str, s3_bucket: str, s3_endpoint: str,
        tmp_path: Path) -> None:
    storage_and_flows(namespace, s3_bucket, s3_endpoint, "v1")
    status = wait_ready(namespace, "etl-daily", timeout=60)["status"]
    first = status["artifact"]["digest"]
    pinned = step("etl-daily", namespace)
    assert pinned == [{"flowstore.prefect.pull_flow": {"name": "etl-daily", "namespace": namespace,
                                                       "digest": first, "require_signature": True}}]
    latest = step("etl-daily", namespace, "--track-latest")
    assert "digest" not in latest[0]["flowstore.prefect.pull_flow"]
    on_pin = prefect.create_deployment(f"pinned-{namespace}", "etl-daily", "etl_daily.py:etl_daily", pinned)
    on_latest = prefect.create_deployment(f"latest-{namespace}", "etl-daily", "etl_daily.py:etl_daily", latest)

    etl_version(namespace, "v2")
    second = new_digest(namespace, "etl-daily", first)

    # Prefect 1: the storage of revision 1, as Prefect 1.4.1's own StorageSchema loads it, names
    # revision 1's object (a registration with it keeps loading revision 1)
    history = {e["revision"]: e for e in wait_ready(namespace, "etl-daily", timeout=60)["status"]["history"]}
    printed = flowstore_cli("locate", "etl-daily", "-n", namespace, "-o", "prefect", "--revision", "1")
    assert printed.returncode == 0, printed.stderr
    loaded = prefect1.run("""
        from prefect.serialization.storage import StorageSchema
        storage = StorageSchema().load(payload)
        answer({"type": type(storage).__name__, "bucket": storage.bucket, "flows": storage.flows})
    """, json.loads(printed.stdout))
    assert loaded == {"type": "S3", "bucket": s3_bucket, "flows": {"etl daily": history[1]["location"]}}
    assert history[1]["digest"] == first and history[1]["location"] != history[2]["location"]

    # the pinned deployment keeps revision 1; the tracking one runs revision 2
    run = prefect.run(on_pin)
    assert state(run) == "COMPLETED", prefect.logs(run["id"])
    prefect.wait_for_log(run["id"], "etl daily ran version v1")
    assert run["labels"]["flowstore.digest"] == first
    run = prefect.run(on_latest)
    assert state(run) == "COMPLETED", prefect.logs(run["id"])
    prefect.wait_for_log(run["id"], "etl daily ran version v2")
    assert run["labels"]["flowstore.digest"] == second

    # one run of the tracking deployment, on demand, at revision 1 (a job variable)
    run = prefect.run(on_latest, job_variables={"env": {"FLOWSTORE_RUN_REVISION": "1"}})
    assert state(run) == "COMPLETED", prefect.logs(run["id"])
    logs = prefect.wait_for_log(run["id"], "etl daily ran version v1")
    assert any("asks for revision 1 (FLOWSTORE_RUN_REVISION)" in m for m in logs), logs
    assert run["labels"]["flowstore.digest"] == first

    # a digest the history does not have: refused before any flow code, naming what exists
    gone = "sha256:" + "0" * 64
    bad = [{"flowstore.prefect.pull_flow": {**pinned[0]["flowstore.prefect.pull_flow"], "digest": gone}}]
    run = prefect.run(prefect.create_deployment(f"gone-{namespace}", "etl-daily", "etl_daily.py:etl_daily", bad))
    assert state(run) in ("FAILED", "CRASHED"), run["state"]
    logs = prefect.wait_for_log(run["id"], f"digest {gone} is not in the StoredFlow's history (revisions: 2 (")
    assert not any("etl daily ran" in m for m in logs), logs

    # revision 1's bytes swapped in the bucket for others of the same size: a worker without them
    # in its cache refuses them before any flow code runs (the digest check, not the size)
    marker = tmp_path / "swapped-code-ran"
    original = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").get_object(
        Bucket=s3_bucket, Key=status["location"])["Body"].read()
    evil = f"open({str(marker)!r}, 'w').write('pwned')\n".encode()
    evil = (evil + b"#" * len(original))[:len(original) - 1] + b"\n"
    assert len(evil) == len(original) and evil != original
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").put_object(
        Bucket=s3_bucket, Key=status["location"], Body=evil)
    shutil.rmtree(prefect.worker_cache)
    run = prefect.run(on_pin)
    assert state(run) in ("FAILED", "CRASHED"), run["state"]
    logs = prefect.wait_for_log(run["id"], "does not match the recorded")
    assert not marker.exists(), "the swapped flow ran"
    assert not any("etl daily ran" in m for m in logs), logs
    assert operator.alive()


def test_a_crashed_run_retried_after_the_storedflow_moved_on_runs_its_first_digest(
        operator: OperatorProcess, prefect: Prefect, namespace: str, s3_bucket: str, s3_endpoint: str,
        tmp_path: Path) -> None:
    storage_and_flows(namespace, s3_bucket, s3_endpoint, "v1")
    marker = tmp_path / "first-attempt-crashed"

    def crashy(version: str) -> None:
        apply(manifests({"apiVersion": "v1", "kind": "ConfigMap",
                         "metadata": {"name": "crashy", "namespace": namespace},
                         "data": {"crashy.py": CRASHY.format(version=version, marker=str(marker))}}))

    crashy("v1")
    apply(manifests(stored_flow(namespace, "crashy", "crashy", {"configMapRef": {"name": "crashy", "key": "crashy.py"}},
                                storage="team-s3")))
    first = wait_ready(namespace, "crashy", timeout=60)["status"]["artifact"]["digest"]
    deployment = prefect.create_deployment(f"crashy-{namespace}", "crashy", "crashy.py:crashy",
                                           step("crashy", namespace, "--track-latest"))

    run = prefect.run(deployment)
    assert state(run) == "CRASHED", (run["state"], prefect.logs(run["id"]))
    assert marker.read_text() == "v1"
    assert run["labels"]["flowstore.digest"] == first, run["labels"]

    crashy("v2")
    second = new_digest(namespace, "crashy", first)
    assert second != first
    retried = subprocess.run([str(prefect_python()), "-m", "prefect", "flow-run", "retry", run["id"]],
                             capture_output=True, text=True, env=prefect.env, timeout=120)
    assert retried.returncode == 0, retried.stdout + retried.stderr
    again = prefect.wait(run["id"])
    assert state(again) == "COMPLETED", (again["state"], prefect.logs(run["id"]))
    logs = prefect.wait_for_log(run["id"], "crashy ran version v1")
    assert any(f"already recorded {first}" in m and "an earlier attempt" in m for m in logs), logs
    assert not any("crashy ran version v2" in m for m in logs), logs
    assert again["labels"]["flowstore.digest"] == first

    # a fresh run of the same deployment takes the current revision
    fresh = prefect.run(deployment)
    assert state(fresh) == "COMPLETED", prefect.logs(fresh["id"])
    prefect.wait_for_log(fresh["id"], "crashy ran version v2")
    assert fresh["labels"]["flowstore.digest"] == second
    assert operator.alive()


def test_a_self_contained_step_runs_on_a_worker_without_kubernetes(
        operator: OperatorProcess, prefect: Prefect, namespace: str, s3_bucket: str, s3_endpoint: str) -> None:
    storage_and_flows(namespace, s3_bucket, s3_endpoint, "v1")
    digest = wait_ready(namespace, "etl-daily", timeout=60)["status"]["artifact"]["digest"]
    carried = step("etl-daily", namespace, "--self-contained")
    inputs = carried[0]["flowstore.prefect.pull_flow"]
    assert inputs["digest"] == digest and inputs["self_contained"]["status"]["artifact"]["signature"]
    assert KEY not in yaml.safe_dump(carried) and "AWS_SECRET" not in yaml.safe_dump(carried)

    # the worker's environment reaches no cluster: the CLI says so
    env = prefect.no_kube_env  # type: ignore[attr-defined]
    refused = subprocess.run([str(prefect_python()), "-m", "flowstore.cli", "locate", "etl-daily", "-n", namespace],
                             capture_output=True, text=True, env=env, timeout=120)
    assert refused.returncode == 2 and "no Kubernetes cluster configured" in refused.stderr, refused.stderr

    deployment = prefect.create_deployment(f"carried-{namespace}", "etl-daily", "etl_daily.py:etl_daily", carried,
                                           pool=NO_KUBE_POOL)
    run = prefect.run(deployment)
    assert state(run) == "COMPLETED", (prefect.logs(run["id"]), prefect.log("worker-no-kube")[-4000:])
    logs = prefect.wait_for_log(run["id"], "etl daily ran version v1")
    assert any(digest in m and "signature verified" in m and "downloaded" in m for m in logs), logs
    assert run["labels"]["flowstore.digest"] == digest

    # the step's storage edited to point elsewhere: refused by the signature, nothing requested
    edited = yaml.safe_load(yaml.safe_dump(carried))
    edited[0]["flowstore.prefect.pull_flow"]["self_contained"]["status"]["storage"]["endpointURL"] = \
        "http://127.0.0.1:9"
    run = prefect.run(prefect.create_deployment(f"edited-{namespace}", "etl-daily", "etl_daily.py:etl_daily", edited,
                                                pool=NO_KUBE_POOL))
    assert state(run) in ("FAILED", "CRASHED"), run["state"]
    logs = prefect.wait_for_log(run["id"], "not running StoredFlow")
    assert not any("etl daily ran" in m for m in logs), logs
    assert operator.alive()
