#!/usr/bin/env python3
"""Operator benchmark: the real `flowstore operator` against the local cloud (kube + S3).

    python3 bench/operator_bench.py [--quick]

Figures (see bench/README.md):
  1. apply -> Ready latency of one StoredFlow at a time (script mode, then pickle mode);
  2. N StoredFlows applied at once: time to all Ready, operator peak RSS;
  3. restart with those N Ready: time to operator up / first pass / idle, and the writes and
     uploads it made (must be 0).

Readiness is observed with a Kubernetes WATCH (never kubectl polling). The operator runs
scoped to the bench's namespace (`-n NS`): the local cloud has no namespace controller, so
objects of earlier test namespaces linger and a cluster-wide operator would reconcile them
too. Results: printed table + bench/results/latest.json (gitignored).
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import datetime as dt
import json
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # the benches' shared harness
    FS,
    RESULTS,
    SF,
    Env,
    Operator,
    Watcher,
    cloud,
    fmt_s,
    log,
    machine,
    machine_line,
    need_modules,
    other_operators,
    ready,
    summary,
    versions,
)


class Profiler:
    """`py-spy record` of the operator (collapsed stacks, all threads) while a phase runs; --profile only."""

    enabled = False

    def __init__(self, pid: int, name: str) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.path = RESULTS / f"profile-{name}.txt"
        if self.enabled:
            self.proc = subprocess.Popen(["py-spy", "record", "-p", str(pid), "-o", str(self.path), "--format", "raw",
                                          "-r", "100", "--nonblocking", "--threads"],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.proc:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


# ------------------------------------------------------------------------------ apiserver metrics
def delta(after: collections.Counter[Any], before: collections.Counter[Any]) -> dict[str, int]:
    return {f"{v} {r}": after[(v, r)] - before[(v, r)] for (v, r) in sorted(after)
            if after[(v, r)] - before[(v, r)] > 0}


# ------------------------------------------------------------------------------ manifests
# ------------------------------------------------------------------------------ phases
def timeline_breakdown(w: Watcher, names: list[str], created: dict[str, float]) -> dict[str, Any]:
    """Median create->first operator write (the Reconciling status; kopf's finalizer under Delete),
    ->Reconciling written, ->Ready."""
    first_mod, recon = [], []
    for n in names:
        tl = w.timeline.get(n, [])
        mods = [t for t, k in tl if k != "added"]
        if mods:
            first_mod.append(mods[0] - created[n])
        rs = [t for t, k in tl if k == "reconciling"]
        if rs:
            recon.append(rs[0] - created[n])
    return {"create_to_first_write_median_s": statistics.median(first_mod) if first_mod else None,
            "create_to_reconciling_median_s": statistics.median(recon) if recon else None}


def sequential(env: Env, w: Watcher, storage: str, prefix: str, n: int) -> dict[str, Any]:
    def one(name: str) -> tuple[float, float]:
        env.create_flow(name, storage)
        t0 = time.monotonic()
        if not w.wait_ready([name], 120):
            raise TimeoutError(f"{name} not Ready after 120 s")
        return t0, w.ready_at[name] - t0

    _, cold = one(f"{prefix}-warmup")
    lat, created, names = [], {}, []
    for i in range(n):
        name = f"{prefix}-{i:03d}"
        t0, d = one(name)
        created[name] = t0
        names.append(name)
        lat.append(d)
    return {"warmup_s": cold, **summary(lat), **timeline_breakdown(w, names, created), "samples_s": lat}


def burst(env: Env, w: Watcher, op: Operator, storage: str, n: int) -> dict[str, Any]:
    names = [f"b-{i:04d}" for i in range(n)]
    created: dict[str, float] = {}

    def create(name: str) -> None:
        env.create_flow(name, storage)
        created[name] = time.monotonic()

    prof = Profiler(op.proc.pid, "burst") if op.proc else None
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(create, names))
    t_created = time.monotonic()
    if not w.wait_ready(names, 600):
        missing = [x for x in names if x not in w.ready_at]
        raise TimeoutError(f"{len(missing)} of {n} not Ready after 600 s, e.g. {missing[:3]}")
    t_ready = max(w.ready_at[x] for x in names)
    if prof:
        prof.stop()
    own, kids = op.peak(t0, t_ready + 1)
    objects = env.s3_count()
    per = [w.ready_at[x] - created[x] for x in names]
    return {"n": n, "create_all_s": t_created - t0, "first_create_to_all_ready_s": t_ready - t0,
            "last_create_to_all_ready_s": t_ready - t_created, "per_flow_latency": summary(per),
            "throughput_flows_per_s": n / (t_ready - t0),
            "operator_peak_rss_mib": own / 2**20, "children_peak_rss_mib": kids / 2**20,
            "s3_objects_when_all_ready": objects}


def restart(env: Env, sfw: Watcher, fsw: Watcher, op: Operator, n_expected: int) -> dict[str, Any]:
    # Let the running operator finish its trailing writes (FlowStorage status.flows etc.).
    sfw.wait_quiet(3, 120)
    fsw.wait_quiet(3, 120)
    before_sf = {o["metadata"]["name"]: o["metadata"]["resourceVersion"] for o in env.list(SF)}
    before_fs = {o["metadata"]["name"]: o["metadata"]["resourceVersion"] for o in env.list(FS)}
    not_ready = [o["metadata"]["name"] for o in env.list(SF) if not ready(o)]
    s3_before = env.s3_count()
    changes_before = sum(sfw.changes.values()), sum(fsw.changes.values())
    m0 = env.metrics.read()

    shutdown_s = op.stop(signal.SIGTERM)
    m_stopped = env.metrics.read()
    t0 = op.start(*EXTRA)
    prof = Profiler(op.proc.pid, "restart") if op.proc else None
    t_live = op.wait_live()
    series: list[tuple[float, int, int, int]] = []  # (t, GET storedflows, GET flowstorages, LIST storedflows)
    # Poll the apiserver's request counters: the first pass of each StoredFlow loop GETs its object.
    n_sf = len(before_sf)
    get_key = ("GET", SF)
    t_first_pass = None
    last_change_t, last = t0, m_stopped
    deadline = t0 + 300
    while time.monotonic() < deadline:
        m = env.metrics.read()
        now = time.monotonic()
        series.append((round(now - t0, 2), m[get_key] - m_stopped[get_key], m[("GET", FS)] - m_stopped[("GET", FS)],
                       m[("LIST", SF)] - m_stopped[("LIST", SF)]))
        if m != last:
            last_change_t, last = now, m
        if t_first_pass is None and m[get_key] - m_stopped[get_key] >= n_sf:
            t_first_pass = now
        # idle: 5 s without a request, once every loop did its first GET or, where passes read the
        # watched body and make no GET, once the operator listed the StoredFlows
        listed = m[("LIST", SF)] - m_stopped[("LIST", SF)] >= 1
        if (t_first_pass is not None or listed) and now - last_change_t >= 5.0:
            break
        time.sleep(0.2)
    idle = not (time.monotonic() >= deadline)
    if prof:
        prof.stop()
    own, kids = op.peak(t0)
    after_sf_objs = env.list(SF)
    after_sf = {o["metadata"]["name"]: o["metadata"]["resourceVersion"] for o in after_sf_objs}
    after_fs = {o["metadata"]["name"]: o["metadata"]["resourceVersion"] for o in env.list(FS)}
    s3_after = env.s3_count()
    req = delta(last, m_stopped)  # the last read of the quiet window, before the bench's own LISTs
    writes = {k: v for k, v in req.items() if k.split()[0] in ("PATCH", "PUT", "POST", "DELETE", "CREATE", "UPDATE")}
    return {
        "storedflows": n_sf, "expected": n_expected, "not_ready_before": len(not_ready),
        "shutdown_s": shutdown_s,
        "start_to_live_s": t_live - t0,
        "start_to_first_pass_all_s": (t_first_pass - t0) if t_first_pass else None,
        "start_to_idle_s": last_change_t - t0, "idle_reached": idle,
        "peak_rss_mib": own / 2**20, "children_peak_rss_mib": kids / 2**20,
        "storedflow_rv_changed": sum(1 for k, v in before_sf.items() if after_sf.get(k) != v),
        "storedflow_rv_changes_watched": sum(sfw.changes.values()) - changes_before[0],
        "flowstorage_rv_changed": sum(1 for k, v in before_fs.items() if after_fs.get(k) != v),
        "flowstorage_rv_changes_watched": sum(fsw.changes.values()) - changes_before[1],
        "all_ready_after": all(ready(o) for o in after_sf_objs),
        "s3_objects_before": s3_before, "s3_objects_after": s3_after, "new_uploads": s3_after - s3_before,
        "apiserver_requests_during_shutdown": delta(m_stopped, m0),
        "apiserver_requests_after_start": req, "apiserver_writes_after_start": writes,
        "request_series_t_getsf_getfs_listsf": series,
    }


# ------------------------------------------------------------------------------ report
def report(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [
        f"machine: {m['nproc']} CPU ({m['cpu']}), {m['ram_gib']} GiB RAM, Python {m['python']}, "
        f"loadavg {' '.join(m['loadavg_at_start'])}; kopf {res['versions'].get('kopf')}, "
        f"kubernetes client {res['versions'].get('kubernetes')}; mode: {res['mode']}",
        *([f"WARNING: other flowstore operators ran during the bench (pids {res['other_operators_seen']}); "
           + ("they shared the CPU (isolated cloud: they could not touch the bench's objects)" if res.get("isolated")
              else "a cluster-wide one reconciles the bench's objects too: figures disturbed")]
          if res.get("other_operators_seen") else []),
        "",
        f"{'figure':<58} {'value':>22}",
        "-" * 81,
    ]

    def row(name: str, value: str) -> None:
        lines.append(f"{name:<58} {value:>22}")

    for key, label in (("script", "script mode"), ("pickle", "pickle mode (sandboxed build)")):
        s = res["sequential"][key]
        row(f"1. apply->Ready, one at a time, {label} (n={s['n']})", "")
        row("   median", fmt_s(s["median"]))
        row("   p95", fmt_s(s["p95"]))
        row("   min / max", f"{fmt_s(s['min'])} / {fmt_s(s['max'])}")
        row("   first flow after operator start (not counted)", fmt_s(s["warmup_s"]))
        row("   median create -> first operator write", fmt_s(s["create_to_first_write_median_s"]))
        row("   median create -> Reconciling written", fmt_s(s["create_to_reconciling_median_s"]))
    row("   S3 objects after phase 1 (1 upload per flow expected)",
        f"{res['sequential']['s3_objects']} for {res['sequential']['flows']} flows")
    kids = res["sequential"]["pickle_children_peak_rss_mib"]
    row("   sandbox children peak RSS (sum, pickle phase)", f"{kids:.1f} MiB")
    b = res["burst"]
    row(f"2. {b['n']} StoredFlows applied at once (script mode)", "")
    row("   create calls (16 client threads)", fmt_s(b["create_all_s"]))
    row("   first create -> all Ready", fmt_s(b["first_create_to_all_ready_s"]))
    row("   throughput", f"{b['throughput_flows_per_s']:.1f} flows/s")
    row("   per-flow create->Ready median / p95",
        f"{fmt_s(b['per_flow_latency']['median'])} / {fmt_s(b['per_flow_latency']['p95'])}")
    row("   operator peak RSS (own process, 100 ms samples)", f"{b['operator_peak_rss_mib']:.1f} MiB")
    row("   operator children peak RSS (sum)", f"{b['children_peak_rss_mib']:.1f} MiB")
    row("   operator RSS idle after start (before phase 2)", f"{res['idle_rss_mib']:.1f} MiB")
    row("   S3 objects when all Ready (1 upload per flow = n)", str(b["s3_objects_when_all_ready"]))
    r = res["restart"]
    row(f"3. restart (SIGTERM + start) with {r['storedflows']} Ready StoredFlows", "")
    row("   SIGTERM -> old process exited", fmt_s(r["shutdown_s"]))
    row("   start -> liveness endpoint answers", fmt_s(r["start_to_live_s"]))
    row("   start -> every loop did its first GET", fmt_s(r["start_to_first_pass_all_s"]))
    idle = fmt_s(r["start_to_idle_s"]) + ("" if r["idle_reached"] else " (!)")
    row("   start -> last flowstore API request (idle)", idle)
    row("   peak RSS after restart", f"{r['peak_rss_mib']:.1f} MiB")
    row("   StoredFlow resourceVersions changed (must be 0)", str(r["storedflow_rv_changed"]))
    row("   StoredFlow changes seen by the watch (must be 0)", str(r["storedflow_rv_changes_watched"]))
    row("   FlowStorage resourceVersions changed (must be 0)", str(r["flowstorage_rv_changed"]))
    row("   new S3 objects (must be 0)", f"{r['new_uploads']} ({r['s3_objects_before']} -> {r['s3_objects_after']})")
    row("   all Ready after restart", str(r["all_ready_after"]))
    lines.append("-" * 81)
    lines.append("apiserver requests (flowstore.dev + events) after restart: "
                 + ", ".join(f"{k}={v}" for k, v in r["apiserver_requests_after_start"].items()))
    return "\n".join(lines)


#: extra arguments of every operator the bench starts (--operator-arg)
EXTRA: list[str] = []


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 10 script / 5 pickle / 20 burst")
    ap.add_argument("--isolated", action="store_true",
                    help="use a private local cloud (FLOWSTORE_LOCALCLOUD_DIR=bench/results/localcloud), started "
                         "and stopped by the bench, so operators of concurrent test sessions cannot touch the "
                         "bench's objects")
    ap.add_argument("--profile", action="store_true",
                    help="py-spy record the operator during phases 2 and 3 (bench/results/profile-*.txt)")
    ap.add_argument("--operator-arg", action="append", default=[],
                    help="extra operator argument (repeatable), e.g. --operator-arg=--workers=16")
    args = ap.parse_args()
    EXTRA[:] = args.operator_arg
    Profiler.enabled = args.profile
    need_modules("kubernetes", "boto3", "psutil")
    n_seq, n_pickle, n_burst = (10, 5, 20) if args.quick else (50, 20, 200)

    res: dict[str, Any] = {"mode": ("quick" if args.quick else "full") + (", isolated cloud" if args.isolated else ""),
                           "machine": machine(), "versions": versions("kopf", "kubernetes", "boto3"),
                           "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    m = res["machine"]
    print(machine_line(m), flush=True)
    others = other_operators([])
    if others:
        log(f"note: other flowstore operator processes are running ({others})")
    res["other_operators_running"] = others

    seen_others: set[int] = set(others)
    monitoring = True

    def monitor() -> None:
        while monitoring:
            seen_others.update(other_operators([op.proc.pid for op in ops if op.proc]))
            time.sleep(1.0)

    ops: list[Operator] = []
    threading.Thread(target=monitor, daemon=True).start()
    state_dir = RESULTS / "localcloud" if args.isolated else None
    with cloud(["kube", "s3"], state_dir=state_dir, crds=True):
        envs: list[Env] = []
        watchers: list[Watcher] = []
        try:
            # ---- phase 1: sequential latency (own namespace and operator)
            e1 = Env("bench-seq")
            envs.append(e1)
            e1.storage("script", script=True, prefix="script/")
            e1.storage("pickle", script=False, prefix="pickle/")
            w1 = Watcher(e1.custom, e1.namespace, SF)
            watchers.append(w1)
            w1.synced.wait(30)
            op1 = Operator(e1.namespace, "seq")
            ops.append(op1)
            op1.start(*EXTRA)
            op1.wait_live()
            log(f"phase 1: {n_seq} script-mode flows, one at a time")
            res["sequential"] = {"script": sequential(e1, w1, "script", "s", n_seq)}
            log(f"phase 1: {n_pickle} pickle-mode flows, one at a time")
            res["sequential"]["pickle"] = sequential(e1, w1, "pickle", "p", n_pickle)
            res["sequential"]["pickle_children_peak_rss_mib"] = op1.peak(0)[1] / 2**20
            res["sequential"]["s3_objects"] = e1.s3_count()
            res["sequential"]["flows"] = n_seq + n_pickle + 2
            log("phase 1: cleanup")
            e1.cleanup()
            op1.stop()

            # ---- phase 2/3: burst and restart (fresh namespace and operator)
            e2 = Env("bench-burst")
            envs.append(e2)
            e2.storage("script", script=True, prefix="burst/")
            w2 = Watcher(e2.custom, e2.namespace, SF)
            w2f = Watcher(e2.custom, e2.namespace, FS)
            watchers += [w2, w2f]
            w2.synced.wait(30)
            w2f.synced.wait(30)
            op2 = Operator(e2.namespace, "burst")
            ops.append(op2)
            op2.start(*EXTRA)
            op2.wait_live()
            w2f.wait_ready(["script"], 60)
            time.sleep(2)
            res["idle_rss_mib"] = op2.samples[-1][1] / 2**20 if op2.samples else 0.0
            log(f"phase 2: {n_burst} script-mode flows at once")
            res["burst"] = burst(e2, w2, op2, "script", n_burst)
            log("phase 3: restart")
            res["restart"] = restart(e2, w2, w2f, op2, n_burst)
            log("phase 3: cleanup")
            e2.cleanup()
        finally:
            for w in watchers:
                w.stop()
            for op in ops:
                op.stop()
            for e in envs:
                e.delete_namespace()

    res["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    monitoring = False
    res["other_operators_seen"] = sorted(seen_others)
    res["isolated"] = args.isolated
    if seen_others:
        log(f"WARNING: other flowstore operator processes ran during the bench: {sorted(seen_others)}; "
            + ("they share the CPU (isolated cloud: they cannot touch the bench's objects)" if args.isolated else
               "a cluster-wide one reconciles the bench's objects too, so the figures are disturbed "
               "(use --isolated)"))
    RESULTS.mkdir(parents=True, exist_ok=True)
    text = json.dumps(res, indent=2, sort_keys=True) + "\n"
    (RESULTS / "latest.json").write_text(text)
    stamp = res["started"].replace(":", "").replace("+0000", "Z")
    kind = ("quick" if args.quick else "full") + ("-isolated" if args.isolated else "")
    (RESULTS / f"{stamp}-{kind}.json").write_text(text)
    print(report(res), flush=True)
    print(f"\nJSON: {RESULTS / 'latest.json'}")
    r = res["restart"]
    ok = r["storedflow_rv_changed"] == 0 and r["new_uploads"] == 0 and r["all_ready_after"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
