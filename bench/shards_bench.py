#!/usr/bin/env python3
"""Shards benchmark: StoredFlows spread over N shards plus the default one, one operator each.

    python3 bench/shards_bench.py [--shards 2] [--namespaces 30] [--flows 100] [--failover]

On a private local cloud (kube + S3). Namespace i goes to shard i mod (N+1) (the last is the
default shard: no label); its FlowStorage and StoredFlows carry `flowstore.dev/shard: shardK`. One
cluster-wide `flowstore operator --watch-label-selector ...` per shard (`flowstore.dev/shard=shardK`,
`!flowstore.dev/shard`), all started before the burst. Figures, per operator: flows it stored
(its upload metric), peak RSS over the burst; overall: create time, first create -> all Ready,
S3 objects (== flows: nothing stored twice).

With --failover, shard1 runs two replicas with leader election; after the burst its leader is
SIGKILLed, new flows arrive on shard1 and on the default shard, and the bench reports the time
from the kill to the first of shard1's new flows Ready (the other shard's flows are not held up),
and that the standby stored exactly shard1's new flows.

Reuses bench/load_bench.py's cluster client, watches and operator wrapper.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import load_bench
from harness import FS, RESULTS, SF, cloud, log, machine, machine_line, need_modules

SHARD = "flowstore.dev/shard"


def start_operator(name: str, *args: str) -> load_bench.Operator:
    """load_bench's operator wrapper, logging to a file of its own."""
    directory = RESULTS / f"shards-{name}"
    directory.mkdir(parents=True, exist_ok=True)
    saved, load_bench.RESULTS = load_bench.RESULTS, directory
    try:
        op = load_bench.Operator(list(args))
    finally:
        load_bench.RESULTS = saved
    return op


def labelled(body: dict[str, Any], shard: str | None) -> dict[str, Any]:
    if shard:
        body["metadata"]["labels"] = {SHARD: shard}
    return body


def run(args: argparse.Namespace, res: dict[str, Any]) -> None:
    from kubernetes import client as k

    c = load_bench.Cluster()
    shards: list[str | None] = [f"shard{i + 1}" for i in range(args.shards)] + [None]
    run_id = uuid.uuid4().hex[:6]
    namespaces = {f"shards-{run_id}-{i:02d}": shards[i % len(shards)] for i in range(args.namespaces)}
    sfw, fsw = load_bench.ClusterWatcher(c.custom, SF), load_bench.ClusterWatcher(c.custom, FS)
    sfw.synced.wait(30)
    fsw.synced.wait(30)
    ops: dict[str, load_bench.Operator] = {}
    lease_ns = "default"
    for shard in shards:
        selector = f"{SHARD}={shard}" if shard else f"!{SHARD}"
        name = shard or "default"
        elect = ["--leader-elect", "--lease-namespace", lease_ns] if args.failover and shard == "shard1" else []
        ops[name] = start_operator(name, "--watch-label-selector", selector, *elect, *args.operator_arg)
        if elect:
            ops["shard1-standby"] = start_operator("shard1-standby", "--watch-label-selector", selector, *elect,
                                                   *args.operator_arg)
    try:
        for op in ops.values():
            op.wait_metrics(120)
        log(f"setup: {len(namespaces)} namespaces over {len(shards)} shards ({args.shards} + default)")
        for ns, shard in namespaces.items():
            c.core.create_namespace(k.V1Namespace(metadata=k.V1ObjectMeta(name=ns)))
            c.s3.create_bucket(Bucket=ns)
            c.core.create_namespaced_secret(ns, k.V1Secret(
                metadata=k.V1ObjectMeta(name="creds", labels={"flowstore.dev/allow": "true"}),
                string_data={"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}))
            c.create(ns, FS, labelled(load_bench.storage_body(ns, ns, c.s3_endpoint, "10m"), shard))
        if not fsw.wait_ready([(ns, "store") for ns in namespaces], 300):
            raise TimeoutError("FlowStorages not Ready")

        keys = [(ns, f"f-{i:04d}") for i in range(args.flows) for ns in namespaces]
        log(f"burst: {len(keys)} StoredFlows from {args.threads} threads")
        t0 = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(args.threads) as pool:
            list(pool.map(lambda key: c.create(key[0], SF, labelled(load_bench.flow_body(*key), namespaces[key[0]])),
                          keys))
        t_created = time.monotonic()
        while not sfw.wait_ready(keys, 10):
            log(f"burst: {len(keys) - len(sfw.not_ready(keys))}/{len(keys)} Ready after {time.monotonic() - t0:.0f} s")
            if time.monotonic() - t0 > args.timeout:
                raise TimeoutError("not all Ready")
        t_ready = max(sfw.ready_at[x] for x in keys)
        time.sleep(2)
        per_op = {}
        for name, op in ops.items():
            uploads = load_bench.metric_sum(load_bench.operator_metrics(op.metrics_port),
                                            "flowstore_artifacts_stored_total")
            per_op[name] = {"uploads": uploads, "peak_rss_mib": op.peak(t0, t_ready + 1)[0]}
        expected = {name: sum(1 for ns, _ in keys if (namespaces[ns] or "default") == name) for name in ops}
        objects = sum(c.s3_count(ns) for ns in namespaces)
        res["burst"] = {"flows": len(keys), "namespaces": len(namespaces), "shards": args.shards,
                        "create_all_s": t_created - t0, "first_create_to_all_ready_s": t_ready - t0,
                        "operators": per_op, "expected_uploads": expected, "s3_objects": objects}
        log(f"burst: all {len(keys)} Ready in {t_ready - t0:.1f} s (created in {t_created - t0:.1f} s); "
            f"S3 objects {objects}")

        if args.failover:
            res["failover"] = failover(c, sfw, ops, namespaces, args)
    finally:
        for op in ops.values():
            op.stop()
        sfw.stop()
        fsw.stop()


def failover(c: load_bench.Cluster, sfw: load_bench.ClusterWatcher, ops: dict[str, load_bench.Operator],
             namespaces: dict[str, str | None], args: argparse.Namespace) -> dict[str, Any]:
    """SIGKILL shard1's leader; new flows on shard1 and on the default shard; how long until they are Ready."""
    pair = [ops["shard1"], ops["shard1-standby"]]
    uploads = {id(op): load_bench.metric_sum(load_bench.operator_metrics(op.metrics_port),
                                             "flowstore_artifacts_stored_total") for op in pair}
    leader = max(pair, key=lambda op: uploads[id(op)])
    standby = next(op for op in pair if op is not leader)
    shard1_ns = next(ns for ns, s in namespaces.items() if s == "shard1")
    default_ns = next(ns for ns, s in namespaces.items() if s is None)
    t_kill = time.monotonic()
    leader.proc.send_signal(signal.SIGKILL)
    new1 = [(shard1_ns, f"after-{i:02d}") for i in range(args.failover_flows)]
    new0 = [(default_ns, f"after-{i:02d}") for i in range(args.failover_flows)]
    for key in new1:
        c.create(key[0], SF, labelled(load_bench.flow_body(*key), "shard1"))
    for key in new0:
        c.create(key[0], SF, load_bench.flow_body(*key))
    if not sfw.wait_ready(new1 + new0, args.timeout):
        raise TimeoutError(f"after the failover not Ready: {sfw.not_ready(new1 + new0)[:5]}")
    first1 = min(sfw.ready_at[x] for x in new1) - t_kill
    all0 = max(sfw.ready_at[x] for x in new0) - t_kill
    standby_uploads = load_bench.metric_sum(load_bench.operator_metrics(standby.metrics_port),
                                            "flowstore_artifacts_stored_total") - uploads[id(standby)]
    out = {"kill_to_first_shard1_flow_ready_s": first1, "kill_to_all_default_flows_ready_s": all0,
           "standby_uploads": standby_uploads, "new_flows_per_shard": args.failover_flows,
           "s3_objects_shard1_namespace": c.s3_count(shard1_ns)}
    log(f"failover: shard1's first new flow Ready {first1:.1f} s after SIGKILL of its leader; the default "
        f"shard's {args.failover_flows} new flows all Ready after {all0:.1f} s; standby stored {standby_uploads:.0f}")
    return out


def report(res: dict[str, Any]) -> str:
    b = res["burst"]
    lines = [machine_line(res["machine"]),
             f"{b['flows']} flows in {b['namespaces']} namespaces over {b['shards']} shards + default: created in "
             f"{b['create_all_s']:.1f} s, all Ready {b['first_create_to_all_ready_s']:.1f} s after the first create; "
             f"S3 objects {b['s3_objects']} (== flows: nothing stored twice)",
             "| operator | flows it serves | uploads | peak RSS (MiB) |", "|---|---|---|---|"]
    for name, o in b["operators"].items():
        lines.append(f"| {name} | {b['expected_uploads'][name]} | {o['uploads']:.0f} | {o['peak_rss_mib']:.0f} |")
    if "failover" in res:
        f = res["failover"]
        lines.append(f"failover (shard1's leader SIGKILLed): its first new flow Ready after "
                     f"{f['kill_to_first_shard1_flow_ready_s']:.1f} s; the default shard's new flows all Ready after "
                     f"{f['kill_to_all_default_flows_ready_s']:.1f} s; the standby stored "
                     f"{f['standby_uploads']:.0f} of {f['new_flows_per_shard']}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=int, default=2, help="shards besides the default one (default 2)")
    ap.add_argument("--namespaces", type=int, default=30)
    ap.add_argument("--flows", type=int, default=100, help="StoredFlows per namespace (default 100)")
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--timeout", type=float, default=1800.0)
    ap.add_argument("--failover", action="store_true", help="shard1 with a standby; SIGKILL its leader after the burst")
    ap.add_argument("--failover-flows", type=int, default=5)
    ap.add_argument("--operator-arg", action="append", default=[], help="extra operator argument (repeatable)")
    ap.add_argument("--cloud-dir", default=str(RESULTS / "localcloud-shards"))
    args = ap.parse_args()
    need_modules("kubernetes", "boto3", "psutil")
    res: dict[str, Any] = {"machine": machine(), "args": vars(args)}
    with cloud(["kube", "s3"], state_dir=Path(args.cloud_dir), crds=True):
        run(args, res)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "shards-latest.json").write_text(json.dumps(res, indent=2, sort_keys=True) + "\n")
    print(report(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
