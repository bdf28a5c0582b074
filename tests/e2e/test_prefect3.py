"""Prefect 3 runs flows that flowstore stored, against the real thing: a Prefect 3.9 server (SQLite)
and a process worker in their own venv (tests/helpers/prefect3.py), the real operator storing
StoredFlows in S3 (signed), deployments whose code comes only from a StoredFlow.

- a deployment made the way prefect-operator makes one (REST, pull steps only) from what
  ``flowstore locate -o prefect-pull-step`` prints: runs Completed with the verified digest in
  their logs in the Prefect API and in their labels; a bucket tampered with after the worker
  cached the artifact runs the verified bytes; a worker without the cache refuses the tampered
  bytes before any flow code runs; an updated StoredFlow is the next run's code;
- ``flow.from_source(FlowstoreStorage(...))`` in-process loads a bundle (a flow, a helper
  module, a SQL file it reads at run time) and ``.deploy()`` records the pull step; the worker
  runs it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from tests.helpers.kube import apply, kubectl, wait_for, wait_ready
from tests.helpers.manifests import inline_flow, manifests, s3_storage, secret, stored_flow
from tests.helpers.operator import OperatorProcess
from tests.helpers.prefect3 import Prefect
from tests.helpers.prefect3 import python as prefect_python

KEY = "prefect3-e2e-signing-key-0123456789"
FLOW = textwrap.dedent("""\
    from prefect import flow, get_run_logger

    VERSION = "{version}"


    @flow(name="etl-daily")
    def etl_daily():
        get_run_logger().info("etl daily ran version %s", VERSION)
        return VERSION
""")
SALES = textwrap.dedent("""\
    from pathlib import Path

    from prefect import flow, get_run_logger

    import helpers


    @flow(name="sales-report")
    def sales_report():
        query = (Path(__file__).parent / "queries" / "daily_sales.sql").read_text().strip()
        get_run_logger().info("sales report: %s", helpers.shout(query))
""")


@pytest.fixture(scope="module")
def prefect(tmp_path_factory: pytest.TempPathFactory, kube_env: dict[str, str], s3_endpoint: str) -> Iterator[Prefect]:
    """A Prefect 3 server and a process worker whose flow runs have the agent's environment:
    KUBECONFIG, the S3 credentials, flowstore's signing key and a cache of their own."""
    stack = Prefect(tmp_path_factory.mktemp("prefect3"), {**os.environ, "FLOWSTORE_SIGNING_KEY": KEY})
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


def storage_and_flows(namespace: str, bucket: str, endpoint: str, etl_version: str) -> None:
    """A signed S3 FlowStorage storing scripts; etl-daily from one ConfigMap key, sales-report
    from a whole ConfigMap (a bundle)."""
    apply(manifests(secret(namespace, "signing", {"FLOWSTORE_SIGNING_KEY": KEY})))
    apply(s3_storage(namespace, bucket, endpoint, name="team-s3", storedAsScript=True,
                     signing={"secretRef": {"name": "signing"}}))
    apply(manifests(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "flows", "namespace": namespace},
         "data": {"etl_daily.py": FLOW.format(version=etl_version)}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "sales", "namespace": namespace},
         "data": {"sales_report.py": SALES, "helpers.py": "def shout(text):\n    return text.upper() + '!'\n",
                  "daily_sales.sql": "select region, sum(amount) from sales\n"}},
        stored_flow(namespace, "etl-daily", "etl daily", {"configMapRef": {"name": "flows", "key": "etl_daily.py"}},
                    storage="team-s3"),
        stored_flow(namespace, "sales-report", "sales report",
                    {"configMapRef": {"name": "sales", "items": [
                        {"key": "sales_report.py", "path": "sales_report.py"},
                        {"key": "helpers.py", "path": "helpers.py"},
                        {"key": "daily_sales.sql", "path": "queries/daily_sales.sql"}]}},
                    storage="team-s3", entrypoint="sales_report.py:sales_report"),
    ))


def flowstore_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "flowstore.cli", *args], capture_output=True, text=True,
                          env=os.environ, timeout=120)


def state(flow_run: dict[str, Any]) -> str:
    return str(flow_run["state"]["type"])


def test_a_deployment_runs_the_verified_storedflow_and_follows_its_updates(
        operator: OperatorProcess, prefect: Prefect, namespace: str, s3_bucket: str, s3_endpoint: str,
        tmp_path: Path) -> None:
    storage_and_flows(namespace, s3_bucket, s3_endpoint, "v1")
    status = wait_ready(namespace, "etl-daily", timeout=60)["status"]
    artifact = status["artifact"]
    assert (artifact["format"], artifact["fileName"]) == ("script", "etl_daily.py")
    assert artifact["signature"].startswith("hmac-sha256:")
    first = artifact["digest"]

    printed = flowstore_cli("locate", "etl-daily", "-n", namespace, "-o", "prefect-pull-step")
    assert printed.returncode == 0, printed.stderr
    assert first in printed.stdout and "entrypoint: etl_daily.py:FLOW  (FLOW: the variable holding your @flow" \
        in printed.stdout  # no spec.objectName: the reader names the variable
    pull_steps = yaml.safe_load(printed.stdout)
    assert pull_steps == [{"flowstore.prefect.pull_flow": {"name": "etl-daily", "namespace": namespace,
                                                           "require_signature": True}}]
    deployment = prefect.create_deployment(f"etl-{namespace}", "etl-daily", "etl_daily.py:etl_daily", pull_steps)

    # 1. the first run downloads, verifies and runs v1; its logs and labels name the digest
    run = prefect.run(deployment)
    assert state(run) == "COMPLETED", prefect.logs(run["id"])
    logs = prefect.wait_for_log(run["id"], "etl daily ran version v1")
    assert any(first in m and "downloaded" in m and "signature verified" in m for m in logs), logs
    assert run["labels"]["flowstore.digest"] == first
    assert run["labels"]["flowstore.storedflow"] == f"{namespace}/etl-daily"

    # 2. the bucket is tampered with: this worker runs the bytes it verified (cached by digest)
    marker = tmp_path / "tampered-code-ran"
    evil = f"open({str(marker)!r}, 'w').write('pwned')\n" + FLOW.format(version="evil")
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    s3.put_object(Bucket=s3_bucket, Key=status["location"], Body=evil.encode())
    run = prefect.run(deployment)
    assert state(run) == "COMPLETED", prefect.logs(run["id"])
    logs = prefect.wait_for_log(run["id"], "etl daily ran version v1")
    assert any(first in m and "from the cache" in m for m in logs), logs

    # 3. a worker without that cache (a new pod) refuses the tampered bytes before any flow code
    # runs: they are longer than the recorded size, so the bounded download stops there (bytes of
    # the recorded size but another digest are refused by the digest check: test_storedflow)
    shutil.rmtree(prefect.worker_cache)
    run = prefect.run(deployment)
    assert state(run) in ("FAILED", "CRASHED"), run["state"]
    logs = prefect.wait_for_log(run["id"], f"holds more than the {artifact['size']} bytes recorded")
    assert not marker.exists(), "the tampered flow ran"
    assert not any("etl daily ran" in m for m in logs), logs

    # 4. the StoredFlow is updated (a new ConfigMap): the next run is the new code, downloaded
    apply(manifests({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "flows", "namespace": namespace},
                     "data": {"etl_daily.py": FLOW.format(version="v2")}}))
    second = wait_for("storedflow", namespace, "etl-daily",
                      lambda o: (o.get("status") or {}).get("artifact", {}).get("digest") not in (None, first),
                      timeout=60, what="to store v2")["status"]["artifact"]["digest"]
    run = prefect.run(deployment)
    assert state(run) == "COMPLETED", prefect.logs(run["id"])
    logs = prefect.wait_for_log(run["id"], "etl daily ran version v2")
    assert any(second in m and "downloaded" in m for m in logs), logs
    assert run["labels"]["flowstore.digest"] == second
    assert not marker.exists()

    # a pickled StoredFlow: no pull step to print, and a message saying what to do
    apply(inline_flow(namespace, "pickled", "pickled", storage="team-s3", storedAsScript=False))
    assert wait_ready(namespace, "pickled", timeout=60)["status"]["artifact"]["format"] == "pickle"
    refused = flowstore_cli("locate", "pickled", "-n", namespace, "-o", "prefect-pull-step")
    assert refused.returncode == 1 and "storedAsScript: true" in refused.stderr, refused.stderr
    assert operator.alive()


def test_from_source_loads_a_bundle_in_process_and_deploy_records_the_pull_step(
        operator: OperatorProcess, prefect: Prefect, namespace: str, s3_bucket: str, s3_endpoint: str) -> None:
    storage_and_flows(namespace, s3_bucket, s3_endpoint, "v1")
    artifact = wait_ready(namespace, "sales-report", timeout=60)["status"]["artifact"]
    assert (artifact["format"], artifact["fileCount"], artifact["entrypoint"]) == (
        "bundle", 3, "sales_report.py:sales_report")

    done = prefect.python(textwrap.dedent(f"""\
        import json, os
        from prefect import flow
        from prefect.runner.storage import RunnerStorage
        from flowstore.prefect import FlowstoreStorage

        storage = FlowstoreStorage("sales-report", {namespace!r}, signing_key=os.environ["FLOWSTORE_SIGNING_KEY"])
        assert isinstance(storage, RunnerStorage)
        loaded = flow.from_source(storage, entrypoint="sales_report.py:sales_report")
        deployment_id = loaded.deploy("sales-{namespace}", work_pool_name={prefect.pool!r}, print_next_steps=False)
        print("@@" + json.dumps({{"flow": loaded.name, "deployment": str(deployment_id),
                                 "digest": storage.prepared.digest, "fn": loaded.fn.__module__}}))
    """))
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("@@"))[2:])
    assert (result["flow"], result["digest"]) == ("sales-report", artifact["digest"])

    deployment = prefect.get(f"/deployments/{result['deployment']}")
    assert deployment["entrypoint"] == "sales_report.py:sales_report"
    assert deployment["pull_steps"] == [{"flowstore.prefect.pull_flow": {
        "name": "sales-report", "namespace": namespace, "require_signature": True}}]

    run = prefect.run(result["deployment"])
    assert state(run) == "COMPLETED", prefect.logs(run["id"])
    logs = prefect.wait_for_log(run["id"], "sales report: SELECT REGION, SUM(AMOUNT) FROM SALES!")
    assert any(artifact["digest"] in m and "bundle sales_report.py:sales_report" in m for m in logs), logs
    assert run["labels"]["flowstore.format"] == "bundle"
    assert operator.alive()


EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "prefect3"


def test_the_prefect3_example_deploys_with_its_prefect_yaml_and_runs(
        operator: OperatorProcess, prefect: Prefect, namespace: str, s3_bucket: str, s3_endpoint: str,
        tmp_path: Path) -> None:
    """docs/prefect.md's walkthrough with examples/prefect3 as it is (its namespace and work pool
    the test's): `kubectl apply -k` stores the Prefect 3 flow; the pull step the CLI prints, with
    the entrypoint it names, is prefect.yaml's; `prefect deploy --all` in that directory records
    it, and a run completes with the StoredFlow's verified code."""
    storage_and_flows(namespace, s3_bucket, s3_endpoint, "v1")  # team-s3 (signed), as the Quick start's
    rendered = kubectl("kustomize", str(EXAMPLE)).stdout.replace("namespace: data\n", f"namespace: {namespace}\n")
    assert f"namespace: {namespace}" in rendered
    apply(rendered)
    digest = wait_ready(namespace, "etl-daily-prefect", timeout=60)["status"]["artifact"]["digest"]

    printed = flowstore_cli("locate", "etl-daily-prefect", "-n", namespace, "-o", "prefect-pull-step")
    assert printed.returncode == 0, printed.stderr
    example = yaml.safe_load((EXAMPLE / "prefect.yaml").read_text())
    (deployment_spec,) = example["deployments"]
    assert f"# deployment entrypoint: {deployment_spec['entrypoint']}\n" in printed.stdout
    step = yaml.safe_load(printed.stdout)
    # the example's step is the printed one (the test's storage signs, so it also asks for a signature)
    assert step == [{"flowstore.prefect.pull_flow": {**example["pull"][0]["flowstore.prefect.pull_flow"],
                                                     "namespace": namespace, "require_signature": True}}]

    project = tmp_path / "project"
    shutil.copytree(EXAMPLE, project)
    example.update(pull=step)
    deployment_spec.update(name=f"etl-{namespace}", work_pool={"name": prefect.pool})
    (project / "prefect.yaml").write_text(yaml.safe_dump(example, sort_keys=False))
    deployed = subprocess.run([str(prefect_python()), "-m", "prefect", "--no-prompt", "deploy", "--all"],
                              capture_output=True, text=True, env=prefect.env, cwd=project, timeout=300)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    deployment = prefect.get(f"/deployments/name/etl-daily/etl-{namespace}")
    assert deployment["pull_steps"] == step

    run = prefect.run(deployment["id"])
    assert state(run) == "COMPLETED", prefect.logs(run["id"])
    logs = prefect.wait_for_log(run["id"], "etl daily: {'rows': 8, 'total': 31}")
    assert any(digest in m for m in logs), logs
