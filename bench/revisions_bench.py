#!/usr/bin/env python3
"""Revisions benchmark: what status.history costs (docs/revisions.md), on the real operator
against the local cloud (kube + S3).

    python3 bench/revisions_bench.py [--rounds N] [--limit N]

Figures:
  1. edit -> Ready latency of a StoredFlow whose history is full (revisionHistoryLimit 10, ten
     revisions recorded) against one that keeps a single revision (limit 1: what a StoredFlow
     was before revisions), edited alternately in the same run; their ratio of medians;
  2. the size of a StoredFlow's status (JSON bytes, as the API server returns it) with 1, 10 and
     `--limit` (default 100, the CRD's maximum) revisions in its history.

Readiness is observed with a Kubernetes WATCH from the resourceVersion of the edit. Results:
printed table + bench/results/revisions.json (gitignored).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # the benches' shared harness
    FS,
    GROUP,
    RESULTS,
    SF,
    VERSION,
    Env,
    Operator,
    cloud,
    log,
    machine,
    machine_line,
    need_modules,
    ready,
    summary,
)


def flow(namespace: str, name: str, value: int, limit: int) -> dict[str, Any]:
    source = f"from flowstore.flow import Flow\n\ndef main():\n    return {value}\n\nflow = Flow({name!r}, main)\n"
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "StoredFlow",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"storageRef": {"name": "store"}, "flowName": name, "revisionHistoryLimit": limit,
                     "source": {"inline": source}}}


def edit_until_ready(env: Env, name: str, value: int, limit: int, timeout: float = 120.0) -> float:
    """Apply the flow returning `value`; seconds until the operator reported it Ready (a WATCH from
    the edit's resourceVersion)."""
    from kubernetes import watch

    body = flow(env.namespace, name, value, limit)
    t0 = time.monotonic()
    try:  # a merge patch of the spec: a get-then-replace raced the operator's own metadata writes (409)
        done = env.custom.patch_namespaced_custom_object(GROUP, VERSION, env.namespace, SF, name,
                                                         {"spec": body["spec"]})
    except Exception as exc:
        if getattr(exc, "status", None) != 404:
            raise
        done = env.custom.create_namespaced_custom_object(GROUP, VERSION, env.namespace, SF, body)
    generation = done["metadata"]["generation"]
    w = watch.Watch()
    for event in w.stream(env.custom.list_namespaced_custom_object, GROUP, VERSION, env.namespace, SF,
                          field_selector=f"metadata.name={name}", resource_version=done["metadata"]["resourceVersion"],
                          timeout_seconds=int(timeout)):
        obj = event["object"]
        if obj["metadata"].get("generation") == generation and ready(obj):
            w.stop()
            return time.monotonic() - t0
    raise TimeoutError(f"{name} not Ready {timeout:.0f}s after edit {value}")


def status_bytes(env: Env, name: str) -> int:
    obj = env.custom.get_namespaced_custom_object(GROUP, VERSION, env.namespace, SF, name)
    return len(json.dumps(obj.get("status") or {}, separators=(",", ":")))


def settle(env: Env, name: str, timeout: float = 120.0) -> dict[str, Any]:
    """The StoredFlow once status.retired is empty (nothing waits for deletion)."""
    deadline = time.monotonic() + timeout
    while True:
        obj: dict[str, Any] = env.custom.get_namespaced_custom_object(GROUP, VERSION, env.namespace, SF, name)
        if not (obj.get("status") or {}).get("retired"):
            return obj
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name}: status.retired still names {obj['status']['retired']} after {timeout:.0f}s")
        time.sleep(0.2)


def unnamed_objects(env: Env, names: list[str]) -> list[str]:
    """Objects in the bucket that no StoredFlow's history names (what retention failed to delete)."""
    named = {e["location"] for name in names for e in (settle(env, name).get("status") or {}).get("history") or []}
    keys = [o["Key"] for page in env.s3.get_paginator("list_objects_v2").paginate(Bucket=env.bucket)
            for o in page.get("Contents", [])]
    return sorted(set(keys) - named)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=15, help="alternating edits measured per flow (default 15)")
    ap.add_argument("--limit", type=int, default=100, help="the largest history whose status size is measured")
    args = ap.parse_args()
    need_modules("kubernetes", "boto3", "psutil")
    with cloud(["kube", "s3"], crds=True):
        result = measure(args.rounds, args.limit)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "revisions.json").write_text(json.dumps(result, indent=2))
    print(machine_line(result["machine"]))
    full, single = result["edit_to_ready_full_history_s"], result["edit_to_ready_single_revision_s"]
    print(f"edit -> Ready, history full (limit 10): median {full['median']:.3f}s p95 {full['p95']:.3f}s "
          f"(n={full['n']})")
    print(f"edit -> Ready, one revision (limit 1):  median {single['median']:.3f}s p95 {single['p95']:.3f}s "
          f"(n={single['n']})")
    print(f"ratio of medians (full / one):         {result['ratio_of_medians']:.2f}")
    for length, size in result["status_bytes_by_history_length"].items():
        print(f"status size with {length:>3} revision(s):      {size} bytes")
    print(f"objects in the bucket at the end:      {result['objects_in_bucket']} (1 + 10 + {args.limit} expected); "
          f"named by no history: {len(result['objects_no_history_names'])}")
    return 0


def measure(rounds: int, limit: int) -> dict[str, Any]:
    env = Env("bench-rev")
    op = Operator(env.namespace, "revisions")
    result: dict[str, Any] = {"machine": machine()}
    try:
        env.storage("store", script=True, prefix="rev/")
        env.custom.patch_namespaced_custom_object(GROUP, VERSION, env.namespace, FS, "store",
                                                  {"spec": {"deletionPolicy": "Delete", "retention": {"minAge": "0s"}}})
        op.start()
        op.wait_live()
        log("filling the history of 'full' (10 revisions) and storing 'single'")
        for value in range(10):
            edit_until_ready(env, "full", value, 10)
        edit_until_ready(env, "single", 0, 1)
        with_history: list[float] = []
        without: list[float] = []
        for i in range(rounds):  # alternate, so both see the same load
            with_history.append(edit_until_ready(env, "full", 100 + i, 10))
            without.append(edit_until_ready(env, "single", 100 + i, 1))
        settle(env, "full")
        settle(env, "single")
        result["edit_to_ready_full_history_s"] = summary(with_history)
        result["edit_to_ready_single_revision_s"] = summary(without)
        result["ratio_of_medians"] = statistics.median(with_history) / statistics.median(without)
        sizes = {1: status_bytes(env, "single"), 10: status_bytes(env, "full")}
        log(f"filling a history of {limit} revisions")
        for value in range(limit):
            edit_until_ready(env, "big", value, limit)
        sizes[limit] = status_bytes(env, "big")
        result["status_bytes_by_history_length"] = sizes
        result["objects_in_bucket"] = env.s3_count()
        result["objects_no_history_names"] = unnamed_objects(env, ["full", "single", "big"])
    finally:
        env.cleanup()
        op.stop()
        env.delete_namespace()
    return result


if __name__ == "__main__":
    sys.exit(main())
