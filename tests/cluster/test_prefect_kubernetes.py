"""Issue 26 with a real Prefect Kubernetes worker: a Prefect 3.9.1 server, a work pool of type
kubernetes (prefect-kubernetes 0.8.0) whose base job template is Prefect's default changed by
``python3 -m flowstore.oci_volumes prefect-base-job-template``, and ``prefect worker start --type
kubernetes`` against the local API server. A deployment whose job variables and pull step are what
``flowstore locate NAME -o prefect-job-variables`` prints runs as a Job on the local node, in a
Prefect 3 runtime image built here (examples/runtime/prefect3), with the flow mounted as an image
volume by digest: the run is COMPLETED in the Prefect API with the flow's own log line, and the
Job's Pod spec holds the image volume exactly as printed (prefect-kubernetes passes it through).
A run whose job variables mount another image (the location's tag re-pushed: another digest)
fails loudly: the pull step refuses it and none of its code runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from flowstore.storage.oci.storage import OCI
from tests.backends.test_oci import dockerconfigjson
from tests.helpers.kube import kubectl, wait_ready
from tests.helpers.localcloud import ROOT
from tests.helpers.manifests import manifests, stored_flow
from tests.helpers.operator import OperatorProcess
from tests.helpers.prefect3 import Prefect
from tests.helpers.prefect3 import python as prefect_python

pytestmark = pytest.mark.timeout(1200)

FLOW = textwrap.dedent("""\
    import os

    from prefect import flow, get_run_logger


    @flow(name="mounted-etl")
    def etl():
        here = os.path.dirname(os.path.abspath(__file__))
        get_run_logger().info("mounted etl says %s from %s", "{word}", here)
        return "{word}"
""")


@pytest.fixture(scope="module")
def prefect3_runtime_image(node_env: dict[str, str], docker_env: dict[str, str]) -> str:
    """The Prefect 3 runtime image (examples/runtime/prefect3), built here and pushed to the local
    registry by scripts/lib/prefect3-runtime-image.sh: `repo:tag@sha256:…`."""
    t0 = time.monotonic()
    done = subprocess.run(["bash", str(ROOT / "scripts" / "lib" / "prefect3-runtime-image.sh")],
                          capture_output=True, text=True, timeout=1800, check=False)
    assert done.returncode == 0, f"prefect3-runtime-image.sh failed:\n{done.stderr[-4000:]}"
    print(f"\nPrefect 3 runtime image ready in {time.monotonic() - t0:.0f}s")
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture
def prefect(tmp_path: Path, kube_env: dict[str, str]) -> Iterator[Prefect]:
    """A Prefect 3 server alone (its workers are the test's)."""
    stack = Prefect(tmp_path / "prefect3", dict(os.environ))
    stack.home.mkdir()
    try:
        stack.start(worker=False)
        yield stack
    finally:
        stack.stop()


def cli(*args: str, stdin: str | None = None, env: dict[str, str] | None = None,
        python: str = sys.executable) -> str:
    done = subprocess.run([python, *args], capture_output=True, text=True, timeout=180, check=False, input=stdin,
                          env=env)
    assert done.returncode == 0, f"{args}: {done.stderr[-3000:]}"
    return done.stdout


def kubernetes_pool(prefect: Prefect, name: str) -> dict[str, Any]:
    """A kubernetes work pool whose base job template is Prefect's default (from prefect-kubernetes)
    changed as docs/oci-volumes.md says; the returned template is what the pool holds."""
    default = cli("-m", "prefect", "work-pool", "get-default-base-job-template", "--type", "kubernetes",
                  env=prefect.env, python=str(prefect_python()))
    template = json.loads(cli("-m", "flowstore.oci_volumes", "prefect-base-job-template", stdin=default))
    # The local node only: the Prefect API and the registry listen on the machine's 127.0.0.1,
    # which a flow-run Pod reaches in the node's network (nothing flowstore needs).
    template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["hostNetwork"] = True
    path = prefect.home / f"{name}.json"
    path.write_text(json.dumps(template))
    cli("-m", "prefect", "work-pool", "create", name, "--type", "kubernetes", "--base-job-template", str(path),
        env=prefect.env, python=str(prefect_python()))
    pool: dict[str, Any] = prefect.get(f"/work_pools/{name}")
    return pool


def flow_run_job(ns: str, flow_run_id: str) -> dict[str, Any]:
    """The Job the worker made for this flow run (labelled with its id)."""
    jobs = json.loads(kubectl("get", "jobs", "-n", ns, "-l", f"prefect.io/flow-run-id={flow_run_id}",
                              "-o", "json").stdout)["items"]
    assert len(jobs) == 1, [j["metadata"]["name"] for j in jobs]
    job: dict[str, Any] = jobs[0]
    return job


def test_a_prefect_kubernetes_worker_runs_a_deployment_from_the_mounted_flow(
        ns: str, operator: OperatorProcess, prefect: Prefect, prefect3_runtime_image: str,
        docker_env: dict[str, str], tmp_path: Path) -> None:
    repository = f"{docker_env['registry']}/flows/prefect-k8s-{uuid.uuid4().hex[:8]}"
    source = FLOW.format(word="hello from a mounted prefect flow")
    kubectl("apply", "-f", "-", input=manifests(
        {"apiVersion": "flowstore.dev/v1alpha1", "kind": "FlowStorage", "metadata": {"name": "images", "namespace": ns},
         "spec": {"oci": {"repository": repository, "plainHTTP": True, "credentialsSecretRef": {"name": "registry"}}}},
        stored_flow(ns, "etl", "mounted etl", {"inline": source}, "images", storedAsScript=True)))
    status = wait_ready(ns, "etl", timeout=120)["status"]
    image_digest, flow_digest, location = status["image"]["digest"], status["artifact"]["digest"], status["location"]

    # what the user pastes into the deployment: the job variables and the pull step, as printed
    printed = yaml.safe_load(cli("-m", "flowstore.cli", "locate", "etl", "-n", ns, "-o", "prefect-job-variables",
                                 "--pull-secret", "registry"))
    job_variables, pull = printed["job_variables"], printed["pull"]
    assert job_variables["volumes"][0]["image"]["reference"] == f"{repository}@{image_digest}"
    assert pull == [{"flowstore.prefect.use_mounted_flow": {"path": "/flow", "digest": flow_digest}}]

    pool = kubernetes_pool(prefect, "k8s-flows")
    assert pool["type"] == "kubernetes"
    worker_env = {**prefect.env, "KUBECONFIG": os.environ["KUBECONFIG"]}
    prefect.start_worker("k8s-worker", "k8s-flows", worker_env, worker_type="kubernetes")
    deployment = prefect.create_deployment(
        f"etl-{ns}", "mounted-etl", f"{location}:etl", pull, pool="k8s-flows",
        job_variables={**job_variables, "image": prefect3_runtime_image, "namespace": ns,
                       "image_pull_policy": "IfNotPresent"})

    # 1. the run: a Job on the node mounting the image by digest; the flow ran from the checked copy
    t0 = time.monotonic()
    run = prefect.run(deployment, timeout=420)
    elapsed = time.monotonic() - t0
    assert run["state"]["type"] == "COMPLETED", (run["state"], prefect.logs(run["id"]),
                                                 prefect.log("k8s-worker")[-4000:])
    logs = prefect.wait_for_log(run["id"], "mounted etl says hello from a mounted prefect flow")
    assert any(f"running {ns}/etl {flow_digest}, mounted at /flow and checked" in m for m in logs), logs
    ran_from = next(m for m in logs if "mounted etl says" in m).rsplit(" from ", 1)[1]
    assert ran_from.endswith(f"/{ns}_etl") and not ran_from.startswith("/flow"), ran_from
    pod_spec = flow_run_job(ns, run["id"])["spec"]["template"]["spec"]
    # prefect-kubernetes passes the job variables through unchanged (the API server adds nothing here)
    assert pod_spec["volumes"] == job_variables["volumes"]
    assert pod_spec["containers"][0]["volumeMounts"] == job_variables["volume_mounts"]
    assert pod_spec["imagePullSecrets"] == job_variables["image_pull_secrets"]
    assert pod_spec["containers"][0]["image"] == prefect3_runtime_image
    print(f"\nflow run through the Kubernetes worker: created -> COMPLETED in {elapsed:.1f}s")

    # 2. a run whose job variables mount another image (the tag re-pushed with other code) fails
    tamperer = OCI(repository, plain_http=True, credentials=dockerconfigjson(docker_env), stored_flow=f"{ns}/etl")
    evil = tamperer.put_bytes(location, FLOW.format(word="owned by a re-pushed tag").encode())
    evil_digest = str(evil.storage_state["imageDigest"])
    assert evil_digest != image_digest
    forged = json.loads(json.dumps(job_variables["volumes"]))
    forged[0]["image"]["reference"] = f"{repository}@{evil_digest}"
    run = prefect.run(deployment, timeout=420, job_variables={"volumes": forged})
    assert run["state"]["type"] in ("FAILED", "CRASHED"), run["state"]
    job = flow_run_job(ns, run["id"])
    assert job["spec"]["template"]["spec"]["volumes"] == forged
    pod_logs = kubectl("logs", f"job/{job['metadata']['name']}", "-n", ns, check=False).stdout
    logs = prefect.wait_for_log(run["id"], f"not the recorded {flow_digest}", timeout=60)
    assert any("flowstore: not running the flow mounted at /flow" in m for m in logs), logs
    assert f"not the recorded {flow_digest}" in pod_logs, pod_logs[-3000:]
    assert "owned by" not in pod_logs and not any("owned by" in m for m in logs), logs
    print(f"a run mounting another image: {run['state']['type']} ({run['state'].get('message')})")
    assert operator.alive()
