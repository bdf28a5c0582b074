#!/usr/bin/env python3
"""Agent benchmark: the Prefect pull step cold and with a warm agent cache, and pruning the cache.

    python3 bench/agent_bench.py [--pulls 50] [--entries 1000]

Against the local cloud's real kube-apiserver and S3 (``scripts/localcloud up kube s3``: servers
already up are reused). No operator: the bench stores a script and a bundle in a bucket itself
and writes their StoredFlows' status as the operator would, so only the agent is timed. Each
pull is ``flowstore.prefect.prepare`` — what ``pull_flow`` does before Prefect runs the flow:
read the StoredFlow, parse its status, read its FlowStorage and check the status against it,
take the artifact from the agent cache (rehashed) or download it (bounded, verified), write the
working directory. Figures:

1. cold pull (empty cache: one download), median of N fresh caches;
2. warm pull (same digest: no download; asserted), median and p95 of N, in one process (a
   runner's periodic pull, or a worker's library call);
3. warm pull in a fresh Python process (a Prefect flow run's process: imports and the Kubernetes
   client's start included), median of a few;
4. ``flowstore cache ls`` (entries()) and ``prune`` of 1,000 entries (artifacts of 4 KiB; every
   10th also an extracted bundle), to nothing, and a dry run; and a prune that finds nothing to
   do over the same 1,000.

Prints a table and writes bench/results/agent-latest.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import harness
from harness import RESULTS, ROOT, log

sys.path.insert(0, str(ROOT / "operator"))
SCRIPT = b"from prefect import flow\n\n@flow\ndef etl():\n    return 42\n" + b"# padding\n" * 400


def kubectl(*args: str, input: str | None = None) -> str:
    return subprocess.run(["kubectl", *args], check=True, capture_output=True, text=True, input=input).stdout


def store(namespace: str, bucket: str, endpoint: str, name: str, data: bytes, fmt: str, **artifact: Any) -> None:
    """Upload `data`, make its FlowStorage and StoredFlow, and write the status the operator would."""
    from flowstore.storage.s3 import S3

    s3 = S3(bucket=bucket, key_prefix="bench/", region="us-east-1", endpoint_url=endpoint,
            credentials={"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"})
    location = f"bench/{name}/{uuid.uuid4().hex[:8]}"
    stored = s3.put_bytes(location, data)
    storage = s3.to_status()
    storage["flows"] = {name: location}
    storage["storedAsScript"] = fmt == "script"
    meta = {"namespace": namespace}
    docs = [
        {"apiVersion": "flowstore.dev/v1alpha1", "kind": "FlowStorage", "metadata": {"name": "store", **meta},
         "spec": {"s3": {"bucket": bucket, "keyPrefix": "bench/", "region": "us-east-1", "endpointURL": endpoint}}},
        {"apiVersion": "flowstore.dev/v1alpha1", "kind": "StoredFlow", "metadata": {"name": name, **meta},
         "spec": {"storageRef": {"name": "store"}, "flowName": name, "source": {"inline": "x"},
                  "storedAsScript": True}},
    ]
    kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}))
    status = {"location": location, "flowName": name, "storage": storage,
              "artifact": {"url": stored.url, "digest": f"sha256:{stored.sha256}", "size": stored.size, "format": fmt,
                           **artifact}}
    kubectl("patch", "storedflow", name, "-n", namespace, "--subresource=status", "--type=merge",
            "-p", json.dumps({"status": status}))


def pulls(namespace: str, name: str, count: int, work: Path) -> dict[str, Any]:
    from flowstore import client
    from flowstore import prefect as fp
    from flowstore.artifacts.cache import Cache, Settings

    api = client.cluster_api()
    cold = []
    for i in range(min(count, 10)):
        cache = Cache(Settings(root=work / f"cold-{i}"))
        start = time.perf_counter()
        prepared = fp.prepare(name, namespace, work / "cold-dir", api=api, cache=cache)
        cold.append(time.perf_counter() - start)
        assert prepared.downloaded
    cache = Cache(Settings(root=work / "warm"))
    fp.prepare(name, namespace, work / "warm-dir", api=api, cache=cache)
    warm = []
    for _ in range(count):
        start = time.perf_counter()
        prepared = fp.prepare(name, namespace, work / "warm-dir", api=api, cache=cache)
        warm.append(time.perf_counter() - start)
        assert not prepared.downloaded, "a warm pull downloaded"
    program = ("import sys, time; t = time.perf_counter(); from pathlib import Path; "
               "from flowstore import prefect as fp; p = fp.prepare(sys.argv[1], sys.argv[2], Path(sys.argv[3])); "
               "assert not p.downloaded; print(time.perf_counter() - t)")
    env = {**os.environ, "FLOWSTORE_CACHE_DIR": str(work / "warm"), "PYTHONPATH": str(ROOT / "operator")}
    process = []
    for _ in range(5):
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", program, name, namespace, str(work / "proc-dir")], env=env,
                             check=True, capture_output=True, text=True).stdout
        process.append((time.perf_counter() - start, float(out.strip())))
    return {"cold_median_ms": statistics.median(cold) * 1000, "warm_median_ms": statistics.median(warm) * 1000,
            "warm_p95_ms": harness.pct(warm, 95) * 1000, "warm_samples": len(warm),
            "process_total_median_ms": statistics.median(p[0] for p in process) * 1000,
            "process_in_python_median_ms": statistics.median(p[1] for p in process) * 1000}


def prune(entries: int, work: Path) -> dict[str, Any]:
    from flowstore.artifacts import bundle
    from flowstore.artifacts.cache import Cache, Settings

    cache = Cache(Settings(root=work / "prune", max_bytes=2**40, min_age=0))
    start = time.perf_counter()
    for i in range(entries):
        data = i.to_bytes(4, "big") * 1024
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        cache.artifact(digest, lambda data=data: data)
        if i % 10 == 0:
            packed = bundle.pack({"main.py": data, "helpers.py": b"X = 1\n"}, bundle.Entrypoint("main.py"))
            cache.bundle("sha256:" + hashlib.sha256(packed).hexdigest(), bundle.unpack(packed), pin=False)
    fill = time.perf_counter() - start
    start = time.perf_counter()
    listed = cache.entries()
    ls = time.perf_counter() - start
    start = time.perf_counter()
    nothing = cache.prune()
    idle = time.perf_counter() - start
    start = time.perf_counter()
    dry = cache.prune(dry_run=True, max_bytes=0)
    dry_time = time.perf_counter() - start
    start = time.perf_counter()
    done = cache.prune(max_bytes=0)
    evict = time.perf_counter() - start
    assert not nothing.evicted and len(dry.evicted) == len(listed) == len(done.evicted) and not cache.entries()
    return {"entries": len(listed), "fill_s": fill, "ls_ms": ls * 1000, "prune_nothing_to_do_ms": idle * 1000,
            "prune_dry_run_ms": dry_time * 1000, "prune_all_ms": evict * 1000, "freed_bytes": done.freed}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pulls", type=int, default=50)
    parser.add_argument("--entries", type=int, default=1000)
    args = parser.parse_args()
    harness.need_modules("boto3", "kubernetes", "yaml")
    with harness.cloud(["kube", "s3"], crds=True):
        results = run(args)
    print(harness.machine_line(results["machine"]))
    print(f"{'figure':<58} {'script':>12} {'bundle':>12}")
    s, b = results["script"], results["bundle"]
    rows = [("cold pull (download + verify + write), median ms", "cold_median_ms"),
            (f"warm pull, no download, median ms ({s['warm_samples']} pulls)", "warm_median_ms"),
            ("warm pull, p95 ms", "warm_p95_ms"),
            ("warm pull in a new process: total wall ms (imports too)", "process_total_median_ms"),
            ("  of which inside Python after start, ms", "process_in_python_median_ms")]
    for label, key in rows:
        print(f"{label:<58} {s[key]:>12.1f} {b[key]:>12.1f}")
    p = results["prune"]
    print(f"cache of {p['entries']} entries (4 KiB artifacts, every 10th with a bundle tree): "
          f"ls {p['ls_ms']:.0f} ms; prune with nothing to evict {p['prune_nothing_to_do_ms']:.0f} ms; "
          f"dry run {p['prune_dry_run_ms']:.0f} ms; prune all {p['prune_all_ms']:.0f} ms "
          f"({p['freed_bytes'] / 2**20:.1f} MiB)")
    return 0


def run(args: argparse.Namespace) -> dict[str, Any]:
    import boto3

    from flowstore.artifacts import bundle

    namespace, bucket = f"bench-agent-{uuid.uuid4().hex[:6]}", f"bench-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", namespace)
    endpoint = os.environ["FLOWSTORE_S3_ENDPOINT"]
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    store(namespace, bucket, endpoint, "etl-script", SCRIPT, "script", fileName="etl.py")
    files = {f"etl/m{i}.py": SCRIPT for i in range(20)} | {"etl/__init__.py": b"", "etl/main.py": SCRIPT}
    packed = bundle.pack(files, bundle.Entrypoint.parse("etl/main.py:etl"))
    store(namespace, bucket, endpoint, "etl-bundle", packed, "bundle", entrypoint="etl/main.py:etl", fileCount=22)
    results: dict[str, Any] = {"machine": harness.machine(), "script_bytes": len(SCRIPT), "bundle_bytes": len(packed)}
    try:
        with tempfile.TemporaryDirectory(prefix="flowstore-agent-bench-") as tmp:
            work = Path(tmp)
            log("pulls of a script")
            results["script"] = pulls(namespace, "etl-script", args.pulls, work / "script")
            log("pulls of a bundle (22 files)")
            results["bundle"] = pulls(namespace, "etl-bundle", args.pulls, work / "bundle")
            log(f"cache of {args.entries} entries")
            results["prune"] = prune(args.entries, work)
    finally:
        kubectl("delete", "namespace", namespace, "--wait=false")
    results["loadavg_at_end"] = Path("/proc/loadavg").read_text().split()[:3]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "agent-latest.json").write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    sys.exit(main())
