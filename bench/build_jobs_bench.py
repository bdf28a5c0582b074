#!/usr/bin/env python3
"""Builder Jobs benchmark (spec.build): flows built in their own image on the local node.

    python3 bench/build_jobs_bench.py [--runs 20] [--burst 50] [--max-build-jobs 4]

Runs on the local cloud's kube, s3, docker and node (the node runs the Jobs): the bench brings
them up (reusing what runs; what it started stops at the end), applies the CRDs, and pushes the
example runtime image (scripts/lib/runtime-image.sh; built when missing). It warms the node by one
build first, so the image is already on the node as the figures assume. Run it with the
project's environment (`make bootstrap`; `.venv/bin/python bench/build_jobs_bench.py`).

Figures (see bench/README.md):
  1. apply -> Ready of one pickled flow built by a Job, one at a time: median and p95 of N;
  2. M flows applied at once with --max-build-jobs K: time to all Ready, the most Jobs seen at once;
  3. the operator's peak RSS while Jobs build, and while the same flows build in its sandbox.
Readiness is observed with a WATCH (operator_bench.Watcher). Results: bench/results/build-jobs.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # the benches' shared harness: local cloud, CRDs, watch, operator process, S3 namespace

ROOT = harness.ROOT
PREFECT_FLOW = '''\
from prefect import Flow, task


@task
def extract():
    return [1, 2, 3]


@task
def load(rows):
    return sum(rows)


with Flow("{name}") as flow:
    load(extract())
'''


def runtime_image() -> str:
    done = subprocess.run(["bash", str(ROOT / "scripts" / "lib" / "runtime-image.sh")], capture_output=True,
                          text=True, check=True)
    return done.stdout.strip().splitlines()[-1]


def build_policy(image: str) -> list[str]:
    """The operator's flags that allow builder Jobs in the runtime image (docs/security.md)."""
    return ["--enable-build-jobs", "--build-image", image.rsplit(":", 1)[0] + "*"]


def registry_secret(env: harness.Env) -> None:
    from kubernetes import client as c

    auth = {"auths": {os.environ["FLOWSTORE_REGISTRY"]: {"username": os.environ["FLOWSTORE_REGISTRY_USERNAME"],
                                                         "password": os.environ["FLOWSTORE_REGISTRY_PASSWORD"]}}}
    env.core.create_namespaced_secret(env.namespace, c.V1Secret(
        metadata=c.V1ObjectMeta(name="regcred"), type="kubernetes.io/dockerconfigjson",
        string_data={".dockerconfigjson": json.dumps(auth)}))


def storage(env: harness.Env, name: str, image: str | None) -> None:
    spec: dict[str, Any] = {"s3": {"bucket": env.bucket, "endpointURL": env.endpoint, "region": "us-east-1",
                                   "keyPrefix": f"{name}/", "credentialsSecretRef": {"name": "creds"}}}
    if image:
        spec["build"] = {"image": image, "imagePullPolicy": "IfNotPresent", "imagePullSecrets": [{"name": "regcred"}]}
    env.custom.create_namespaced_custom_object(harness.GROUP, harness.VERSION, env.namespace, harness.FS, {
        "apiVersion": f"{harness.GROUP}/{harness.VERSION}", "kind": "FlowStorage",
        "metadata": {"name": name, "namespace": env.namespace}, "spec": spec})


def flow(env: harness.Env, name: str, storage_name: str, source: str) -> None:
    env.custom.create_namespaced_custom_object(harness.GROUP, harness.VERSION, env.namespace, harness.SF, {
        "apiVersion": f"{harness.GROUP}/{harness.VERSION}", "kind": "StoredFlow",
        "metadata": {"name": name, "namespace": env.namespace},
        "spec": {"storageRef": {"name": storage_name}, "flowName": name, "source": {"inline": source}}})


class JobCounter:
    """The most builder Jobs seen at once in the namespace (polled)."""

    def __init__(self, env: harness.Env) -> None:
        from kubernetes import client

        self.batch, self.namespace, self.most, self.stopping = client.BatchV1Api(env.api), env.namespace, 0, False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping:
            try:
                jobs = self.batch.list_namespaced_job(self.namespace,
                                                      label_selector="app.kubernetes.io/managed-by=flowstore")
                active = sum(1 for j in jobs.items if not (j.status and (j.status.succeeded or j.status.failed)))
                self.most = max(self.most, active)
            except Exception:  # noqa: S110 - a missed sample only
                pass
            time.sleep(0.2)


def run(args: argparse.Namespace, results: dict[str, Any]) -> None:
    image = runtime_image()
    harness.log(f"runtime image {image}")
    env = harness.Env("bench-jobs")
    registry_secret(env)
    storage(env, "jobs", image)
    storage(env, "sandbox", None)
    sfw = harness.Watcher(env.custom, env.namespace, harness.SF)
    sfw.synced.wait(30)
    op = harness.Operator(env.namespace, "build-jobs")
    results.update({"machine": harness.machine(), "image": image, "args": vars(args)})
    try:
        op.start(*build_policy(image))
        op.wait_live()
        # warm: the image on the node, the operator's first Job
        flow(env, "warm", "jobs", PREFECT_FLOW.format(name="warm"))
        assert sfw.wait_ready(["warm"], 300), "the warm-up build never became Ready"
        harness.log("warm-up done")
        latencies = []
        for i in range(args.runs):
            name = f"one-{i:02d}"
            flow(env, name, "jobs", PREFECT_FLOW.format(name=name))
            t0 = time.monotonic()
            assert sfw.wait_ready([name], 300), f"{name} not Ready"
            latencies.append(sfw.ready_at[name] - t0)
        results["one_at_a_time"] = harness.summary(latencies) | {"samples_s": latencies}
        harness.log(f"one at a time: median {statistics.median(latencies):.2f}s")
        op.stop()
        op.start("--max-build-jobs", str(args.max_build_jobs), *build_policy(image))
        op.wait_live()
        counter = JobCounter(env)
        names = [f"burst-{i:03d}" for i in range(args.burst)]
        t0 = time.monotonic()
        for name in names:
            flow(env, name, "jobs", PREFECT_FLOW.format(name=name))
        assert sfw.wait_ready(names, 1800), "the burst never became Ready"
        t_ready = max(sfw.ready_at[n] for n in names)
        counter.stopping = True
        own, kids = op.peak(t0, t_ready + 1)
        results["burst"] = {"n": args.burst, "max_build_jobs": args.max_build_jobs, "all_ready_s": t_ready - t0,
                            "most_jobs_at_once": counter.most, "operator_peak_rss_mib": own / 2**20,
                            "children_peak_rss_mib": kids / 2**20}
        harness.log(f"burst of {args.burst}: all Ready in {t_ready - t0:.1f}s, at most {counter.most} Jobs at once")
        plain = [f"sandbox-{i:03d}" for i in range(args.burst)]
        t0 = time.monotonic()
        script = "from flowstore.flow import Flow\nflow = Flow({name!r}, lambda: 42)\n"
        for name in plain:
            flow(env, name, "sandbox", script.format(name=name))
        assert sfw.wait_ready(plain, 600), "the sandbox burst never became Ready"
        t_ready = max(sfw.ready_at[n] for n in plain)
        own, kids = op.peak(t0, t_ready + 1)
        results["sandbox_burst"] = {"n": args.burst, "all_ready_s": t_ready - t0,
                                    "operator_peak_rss_mib": own / 2**20, "children_peak_rss_mib": kids / 2**20}
        harness.log(f"same burst in the sandbox: {t_ready - t0:.1f}s")
    finally:
        env.cleanup()
        op.stop()
        sfw.stop()
        env.delete_namespace()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--burst", type=int, default=50)
    parser.add_argument("--max-build-jobs", type=int, default=4)
    args = parser.parse_args()
    harness.need_modules("kubernetes", "boto3", "psutil", "flowstore")
    results: dict[str, Any] = {}
    with harness.cloud(["kube", "s3", "docker", "node"], crds=True):
        run(args, results)
    harness.RESULTS.mkdir(parents=True, exist_ok=True)
    (harness.RESULTS / "build-jobs.json").write_text(json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in results.items() if k != "machine"}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
