#!/usr/bin/env python3
"""The seed against flowstore: the same 100 flows stored with Prefect 1.4.1's S3 storage and with
flowstore.storage.S3 on the same S3 server, then loaded back.

    python3 bench/seed_bench.py                 # 100 flows, 3 interleaved rounds (~1 min warm)
    python3 bench/seed_bench.py --profile       # + one py-spy'd round per side (not counted)
    python3 bench/seed_bench.py -n 20 --rounds 1

Prefect 1.4.1 (PyPI) runs in its own virtualenv, ~/.cache/flowstore/prefect-venv, created on first
use (`python3 -m venv`, `pip install prefect==1.4.1 boto3==<flowstore's boto3>`), with the worker
bench/seed_flows.py. flowstore runs in the project's environment (.venv if present) with the same
worker. Both talk to one moto S3 server from `scripts/localcloud up s3` in a private
FLOWSTORE_LOCALCLOUD_DIR (bench/results/localcloud-seed), stopped again at the end if the bench
started it. Results: a table on stdout and bench/results/seed-latest.json. See bench/README.md.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import RESULTS, ROOT, cloud, machine, need_modules  # the benches' shared harness

CLOUD_DIR = RESULTS / "localcloud-seed"
WORKER = ROOT / "bench" / "seed_flows.py"
PREFECT_VENV = Path.home() / ".cache" / "flowstore" / "prefect-venv"
PREFECT_VERSION = "1.4.1"
SIDES = ("seed", "flowstore")
TARGET = 2.0

#: the stack frames that the profile summary adds up (inclusive, main thread), per side
PROFILE_FRAMES: dict[str, list[tuple[str, str]]] = {
    "seed": [
        ("new boto3 client per call (get_boto_client)", r"get_boto_client \(prefect/"),
        ("upload_fileobj (s3transfer manager + thread)", r"upload_fileobj \(boto3/"),
        ("  of which waiting on the transfer thread", r"upload_fileobj \(boto3/.*TransferFuture\.result"),
        ("  of which TransferManager create/shutdown",
         r"upload_fileobj \(boto3/.*TransferManager\.(__init__|__exit__|_?shutdown)"),
        ("get_object request + read", r"S3\.get_flow \(prefect/.*(_api_call|StreamingBody)"),
        ("HTTP round trip (urllib3 send/receive)", r"HTTPConnectionPool\.urlopen"),
        ("flow_to_bytes_pickle", r"flow_to_bytes_pickle \("),
        ("flow_from_bytes_pickle", r"flow_from_bytes_pickle \("),
        ("run_basic_healthchecks", r"run_basic_healthchecks \("),
        ("S3() + S3Result construction", r"new_storage \(seed_flows"),
        ("logging", r"\(logging/__init__\.py"),
    ],
    "flowstore": [
        ("boto3 client creation (once per S3 object)", r"_make_client \(flowstore/"),
        ("put_object request", r"S3\.put_bytes \(flowstore/.*_api_call"),
        ("get_object request + read", r"S3\.get_bytes \(flowstore/.*(_api_call|StreamingBody)"),
        ("HTTP round trip (urllib3 send/receive)", r"HTTPConnectionPool\.urlopen"),
        ("envelope.dumps", r"dumps \(flowstore/build/envelope"),
        ("envelope.loads", r"loads \(flowstore/build/envelope"),
        ("sha256 (upload + verify)", r"sha256_hex \("),
        ("S3() construction", r"new_storage \(seed_flows"),
    ],
}


def log(msg: str) -> None:
    print(f"[seed-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ environments
def project_python() -> Path:
    venv = ROOT / ".venv" / "bin" / "python"
    return venv if venv.exists() else Path(sys.executable)


def py_eval(python: Path, code: str) -> str:
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else ""


def prefect_venv(boto3_version: str) -> Path:
    """The cached Prefect 1.4.1 venv, with the same boto3 as flowstore's side. Returns its python."""
    python = PREFECT_VENV / "bin" / "python"
    if not python.exists():
        log(f"creating {PREFECT_VENV}")
        subprocess.run([sys.executable, "-m", "venv", str(PREFECT_VENV)], check=True)
    have = py_eval(python, "import prefect, boto3; print(prefect.__version__, boto3.__version__)")
    want = f"{PREFECT_VERSION} {boto3_version}"
    if have != want:
        log(f"installing prefect=={PREFECT_VERSION} boto3=={boto3_version} into {PREFECT_VENV} (have: {have!r})")
        done = subprocess.run([str(python), "-m", "pip", "install", "-q", f"prefect=={PREFECT_VERSION}",
                               f"boto3=={boto3_version}"], capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"pip install prefect=={PREFECT_VERSION} failed:\n{done.stdout}\n{done.stderr}")
    return python


def pip_freeze(python: Path) -> list[str]:
    out = subprocess.run([str(python), "-m", "pip", "freeze"], capture_output=True, text=True).stdout
    return out.split()


# ------------------------------------------------------------------------------ workers
class Side:
    """One worker process (seed_flows.py) in its side's interpreter."""

    def __init__(self, side: str, python: Path, env: dict[str, str]) -> None:
        self.side = side
        self.log_path = RESULTS / f"seed-worker-{side}.log"
        self._log = self.log_path.open("w")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen([str(python), str(WORKER), side], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._log, text=True, env=env, cwd=ROOT)
        first = self._read()
        self.spawn_to_ready_s = time.perf_counter() - t0
        self.ready: dict[str, Any] = first["ready"]
        self.pid = self.proc.pid

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.side} worker exited; see {self.log_path}:\n"
                               + self.log_path.read_text()[-3000:])
        out: dict[str, Any] = json.loads(line)
        if "error" in out:
            raise RuntimeError(f"{self.side} worker: {out['error']} (log: {self.log_path})")
        return out

    def call(self, cmd: str, **kw: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": cmd, **kw}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.call_quit()
                self.proc.wait(timeout=10)
        except Exception:  # a worker that won't quit is terminated (ours, by its pid)
            self.proc.kill()
        self._log.close()

    def call_quit(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
        self.proc.stdin.close()


# ------------------------------------------------------------------------------ profile
def profile_round(sides: dict[str, Side], rnd: int, rate: int) -> dict[str, Any]:
    """One extra store + load per side with py-spy attached to that side's worker (not counted)."""
    out: dict[str, Any] = {}
    for name, side in sides.items():
        raw = RESULTS / f"seed-profile-{name}.txt"
        spy = subprocess.Popen(["py-spy", "record", "--idle", "--threads", "-f", "raw", "-r", str(rate),
                                "-p", str(side.pid), "-o", str(raw)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)  # py-spy attaches
        t = {"store_s": side.call("store", round=rnd)["wall_s"], "load_s": side.call("load", round=rnd)["wall_s"]}
        spy.send_signal(signal.SIGINT)
        try:
            _, err = spy.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            spy.kill()
            err = "py-spy did not stop"
        out[name] = {**t, "file": str(raw.relative_to(ROOT)), **summarize(raw, name, err)}
    return out


def summarize(raw: Path, side: str, err: str) -> dict[str, Any]:
    """Inclusive share of the worker's main thread's samples in store()/load() per frame pattern."""
    if not raw.exists():
        return {"error": f"no profile written: {err.strip()[-500:]}"}
    phases: dict[str, collections.Counter[str]] = {"store": collections.Counter(), "load": collections.Counter()}
    totals = {"store": 0, "load": 0}
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        for phase in ("store", "load"):
            if re.search(rf";Worker\.{phase} \(seed_flows\.py", stack):
                totals[phase] += n
                for label, pattern in PROFILE_FRAMES[side]:
                    if re.search(pattern, stack):
                        phases[phase][label] += n
    return {
        "samples": totals,
        "share": {phase: {label: round(phases[phase][label] / totals[phase], 3) if totals[phase] else 0.0
                          for label, _ in PROFILE_FRAMES[side]} for phase in phases},
    }


# ------------------------------------------------------------------------------ report
def report(res: dict[str, Any]) -> str:
    m, w = res["machine"], res["workers"]
    n = res["n"]
    lines = [
        f"machine: nproc={m['nproc']} cpu={m['cpu']!r} ram={m['ram_gib']} GiB loadavg={' '.join(m['loadavg_at_start'])}"
        f"; python seed venv={w['seed']['python']} ({w['seed']['library']}), "
        f"flowstore env={w['flowstore']['python']}; boto3 {w['seed']['boto3']} / {w['flowstore']['boto3']}",
        "",
        f"Seed (Prefect {PREFECT_VERSION} prefect.storage.S3) vs flowstore.storage.S3: {n} flows, one moto S3 server, "
        f"{res['rounds']} interleaved rounds, medians",
        "",
        f"{'phase':<38} {'seed':>10} {'flowstore':>10} {'seed/fs':>8}  {'':<6} {'per-round seed | flowstore'}",
        "-" * 110,
    ]
    for phase, label in (("store", f"store: S3() + add_flow x{n} + build()"),
                         ("load", f"load: S3() + get_flow x{n}")):
        s, f = res["median"][phase]["seed"], res["median"][phase]["flowstore"]
        ratio = res["ratio"][phase]
        flag = "ok" if ratio >= TARGET else "BELOW"
        rounds = (" ".join(f"{r['wall_s']:.2f}" for r in res["runs"][phase]["seed"]) + " | "
                  + " ".join(f"{r['wall_s']:.2f}" for r in res["runs"][phase]["flowstore"]))
        lines.append(f"{label:<38} {s:>9.3f}s {f:>9.3f}s {ratio:>7.2f}x  {flag:<6} {rounds}")
    for phase in ("store", "load"):
        s = res["median_cpu"][phase]["seed"]
        f = res["median_cpu"][phase]["flowstore"]
        lines.append(f"{'  worker CPU, ' + phase:<38} {s:>9.3f}s {f:>9.3f}s {s / f if f else 0:>7.2f}x")
    lines.append(f"{'  median get_flow (one call)':<38} {res['median_get_flow_ms']['seed']:>8.2f}ms "
                 f"{res['median_get_flow_ms']['flowstore']:>8.2f}ms")
    lines.append(f"{'import (in-process, not counted)':<38} {w['seed']['import_s']:>9.3f}s "
                 f"{w['flowstore']['import_s']:>9.3f}s {w['seed']['import_s'] / w['flowstore']['import_s']:>7.2f}x")
    lines.append(f"{'spawn -> ready (incl. interpreter)':<38} {w['seed']['spawn_to_ready_s']:>9.3f}s "
                 f"{w['flowstore']['spawn_to_ready_s']:>9.3f}s")
    a = res["artifact"]
    lines.append(f"{'artifact size, mean (min-max)':<38} {a['seed']['mean_bytes']:>9.0f}B "
                 f"{a['flowstore']['mean_bytes']:>9.0f}B   seed {a['seed']['min_bytes']}-{a['seed']['max_bytes']}, "
                 f"flowstore {a['flowstore']['min_bytes']}-{a['flowstore']['max_bytes']} "
                 f"(unpadded {a['flowstore_unpadded']['mean_bytes']:.0f}B)")
    lines += [
        "",
        f"seed/fs = seed wall time / flowstore wall time (target >= {TARGET:g}: "
        f"flowstore at least {TARGET:g}x faster).",
        "flowstore does more on load: get_flow(location, sha256=<digest recorded at upload>) verifies every "
        "artifact before unpickling (seed: no check).",
        "order per round: " + "; ".join(" ".join(o) for o in res["order"]),
    ]
    if res.get("profile"):
        lines += ["", "Profile (one extra round per side, py-spy --idle, main thread, inclusive share of the phase):"]
        for side, p in res["profile"].items():
            if "error" in p:
                lines.append(f"  {side}: {p['error']}")
                continue
            lines.append(f"  {side} (store {p['store_s']:.2f}s, load {p['load_s']:.2f}s under py-spy; {p['file']}):")
            for phase in ("store", "load"):
                parts = [f"{label} {share:.0%}" for label, share in p["share"][phase].items() if share >= 0.01]
                lines.append(f"    {phase}: " + ("; ".join(parts) or "-"))
    return "\n".join(lines)


# ------------------------------------------------------------------------------ main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=100, help="flows per round and side")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians reported)")
    ap.add_argument("--profile", action="store_true",
                    help="one extra py-spy'd round per side (also done when a ratio is below the target)")
    ap.add_argument("--no-auto-profile", action="store_true", help="never profile unless --profile")
    ap.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    args = ap.parse_args()
    need_modules("boto3")

    RESULTS.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {"machine": machine(), "n": args.n, "rounds": args.rounds,
                           "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                           "cloud": str(CLOUD_DIR.relative_to(ROOT))}

    fs_python = project_python()
    fs_boto3 = py_eval(fs_python, "import boto3; print(boto3.__version__)")
    if not fs_boto3:
        sys.exit(f"{fs_python} has no boto3: run scripts/bootstrap (pip install 'flowstore[s3]')")
    seed_python = prefect_venv(fs_boto3)
    res["pythons"] = {"seed": str(seed_python), "flowstore": str(fs_python)}
    res["prefect_venv_freeze"] = pip_freeze(seed_python)

    with cloud(["s3"], state_dir=CLOUD_DIR) as lc:
        log(f"S3 at {os.environ['FLOWSTORE_S3_ENDPOINT']} ({'started' if lc.started else 'reused'}; {CLOUD_DIR})")
        sides: dict[str, Side] = {}
        try:
            import boto3  # the bench's own client, only to create the buckets (untimed)

            env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                   "AWS_DEFAULT_REGION": "us-east-1", "SEED_BENCH_ENDPOINT": os.environ["FLOWSTORE_S3_ENDPOINT"],
                   "SEED_BENCH_N": str(args.n), "PYTHONDONTWRITEBYTECODE": "1"}
            env.pop("AWS_PROFILE", None)
            admin = boto3.client("s3", endpoint_url=env["SEED_BENCH_ENDPOINT"], aws_access_key_id="testing",
                                 aws_secret_access_key="testing", region_name="us-east-1")  # noqa: S106 - moto
            buckets = {}
            for name in SIDES:
                buckets[name] = f"seed-bench-{name}-{uuid.uuid4().hex[:8]}"
                admin.create_bucket(Bucket=buckets[name])
            res["buckets"] = buckets
            for name, python in (("seed", seed_python), ("flowstore", fs_python)):
                sides[name] = Side(name, python, {**env, "SEED_BENCH_BUCKET": buckets[name]})
                log(f"{name} worker ready: import {sides[name].ready['import_s']:.3f}s, "
                    f"spawn->ready {sides[name].spawn_to_ready_s:.3f}s")
            res["workers"] = {k: {**s.ready, "spawn_to_ready_s": s.spawn_to_ready_s} for k, s in sides.items()}

            seed_size = sides["seed"].call("sizes")
            res["artifact"] = {"seed": seed_size, "flowstore_unpadded": sides["flowstore"].call("sizes")}
            res["artifact"]["flowstore"] = sides["flowstore"].call("pad", target=seed_size["mean_bytes"])

            runs: dict[str, dict[str, list[dict[str, Any]]]] = {p: {s: [] for s in SIDES} for p in ("store", "load")}
            res["order"] = []
            for rnd in range(args.rounds):
                order = list(SIDES) if rnd % 2 == 0 else list(reversed(SIDES))
                res["order"].append(order)
                for phase in ("store", "load"):
                    for name in order:
                        out = sides[name].call(phase, round=rnd)
                        runs[phase][name].append(out)
                        log(f"round {rnd + 1}/{args.rounds} {phase:<5} {name:<9} {out['wall_s']:.3f}s")
            res["runs"] = runs
            res["median"] = {p: {s: statistics.median(r["wall_s"] for r in runs[p][s]) for s in SIDES} for p in runs}
            res["median_cpu"] = {p: {s: statistics.median(r["cpu_s"] for r in runs[p][s]) for s in SIDES} for p in runs}
            res["ratio"] = {p: res["median"][p]["seed"] / res["median"][p]["flowstore"] for p in runs}
            res["median_get_flow_ms"] = {
                s: 1000 * statistics.median(t for r in runs["load"][s] for t in r["per_call_s"]) for s in SIDES}
            below = any(r < TARGET for r in res["ratio"].values())
            if args.profile or (below and not args.no_auto_profile):
                log("profiling one extra round per side (not counted)" + (" because a ratio is below target" * below))
                res["profile"] = profile_round(sides, args.rounds, args.rate)
        finally:
            for s in sides.values():
                s.close()
    res["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")

    out = RESULTS / "seed-latest.json"
    out.write_text(json.dumps(res, indent=2, sort_keys=True) + "\n")
    print(report(res), flush=True)
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
