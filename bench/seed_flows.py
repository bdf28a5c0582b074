#!/usr/bin/env python3
"""Worker of bench/seed_bench.py: one side of the seed comparison, in its own interpreter.

    <prefect venv>/bin/python bench/seed_flows.py seed        # Prefect 1.4.1's prefect.storage.S3
    <project venv>/bin/python bench/seed_flows.py flowstore   # flowstore.storage.S3

It imports its side's library (timed), builds the same N flows (untimed), says "ready" on stdout
and then answers one JSON command per stdin line with one JSON line on stdout:

  {"cmd": "sizes"}                        average artifact size of the flows (the side's own envelope)
  {"cmd": "pad", "target": B}             flowstore only: pad each flow so its artifact is ~B bytes
  {"cmd": "store", "round": R}            timed: S3(...) + add_flow x N + build()
  {"cmd": "load", "round": R}             timed: S3(...) + get_flow x N (flowstore: with sha256=)
  {"cmd": "quit"}

Environment: SEED_BENCH_ENDPOINT, SEED_BENCH_BUCKET, SEED_BENCH_N, AWS_* (the same for both sides).
The task functions live in this script, so both sides pickle them by value, as a flow script's
functions are; Prefect's classes and flowstore's are pickled by reference.
"""

from __future__ import annotations

import time

T_START = time.perf_counter()  # before any import of the side's library

import dataclasses  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

# the protocol gets the original stdout; anything a library prints (Prefect's logs) goes to stderr
PROTO = sys.stdout
if __name__ == "__main__":
    PROTO = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

SIDE = sys.argv[1] if len(sys.argv) > 1 else ""
if SIDE not in ("seed", "flowstore"):
    sys.exit("usage: seed_flows.py seed|flowstore")

if SIDE == "seed":
    import boto3  # both sides import boto3 up front, so no round pays for it
    import prefect
    from prefect import Flow as PrefectFlow
    from prefect import task
    from prefect.storage import S3 as SeedS3
    from prefect.utilities.storage import flow_to_bytes_pickle
else:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "operator"))
    import boto3
    import cloudpickle  # noqa: F401

    from flowstore.artifacts import envelope
    from flowstore.storage import S3 as FlowstoreS3
T_IMPORTED = time.perf_counter()

ENDPOINT = os.environ["SEED_BENCH_ENDPOINT"]
BUCKET = os.environ["SEED_BENCH_BUCKET"]
N = int(os.environ.get("SEED_BENCH_N", "100"))


# ------------------------------------------------------------------ the flows' code (same on both sides)
def extract(n: int) -> list[int]:
    return list(range(n))


def transform(rows: list[int], factor: int = 2) -> list[int]:
    return [r * factor for r in rows]


def load(rows: list[int]) -> int:
    return sum(rows)


def flow_name(i: int) -> str:
    return f"seed-bench-{i:03d}"


# ------------------------------------------------------------------ flowstore's equivalent flow object
@dataclasses.dataclass
class PlainTask:
    name: str
    fn: Any
    upstream: list[str]
    kwargs: dict[str, Any]


@dataclasses.dataclass
class PlainFlow:
    """extract -> transform -> load, like the Prefect flow; `description` pads to the seed's size."""

    name: str
    tasks: list[PlainTask]
    description: str = ""

    def run(self) -> Any:
        results: dict[str, Any] = {}
        for t in self.tasks:
            args = [results[u] for u in t.upstream]
            results[t.name] = t.fn(*args, **t.kwargs)
        return results[self.tasks[-1].name]


def make_flows() -> list[Any]:
    # the flow classes by reference (importable, like Prefect's and flowstore's own classes), the
    # task functions of this script by value
    plain_flow, plain_task = PlainFlow, PlainTask
    if __name__ == "__main__" and SIDE == "flowstore":
        from seed_flows import PlainFlow as plain_flow  # type: ignore[no-redef]
        from seed_flows import PlainTask as plain_task  # type: ignore[no-redef]

    flows: list[Any] = []
    for i in range(N):
        if SIDE == "seed":
            t_extract, t_transform, t_load = task(extract), task(transform), task(load)
            with PrefectFlow(flow_name(i)) as f:
                t_load(t_transform(t_extract(10 + i), factor=i % 5 + 1))
            flows.append(f)
        else:
            flows.append(plain_flow(flow_name(i), [
                plain_task("extract", extract, [], {"n": 10 + i}),
                plain_task("transform", transform, ["extract"], {"factor": i % 5 + 1}),
                plain_task("load", load, ["transform"], {}),
            ]))
    return flows


def artifact(flow: Any) -> bytes:
    """What the side's build() uploads for `flow`."""
    return flow_to_bytes_pickle(flow) if SIDE == "seed" else envelope.dumps(flow)


# ------------------------------------------------------------------ the measured operations
def new_storage() -> Any:
    if SIDE == "seed":  # the seed's documented way to reach an S3-compatible endpoint
        return SeedS3(bucket=BUCKET, client_options={"endpoint_url": ENDPOINT})
    creds = {"AWS_ACCESS_KEY_ID": os.environ["AWS_ACCESS_KEY_ID"],
             "AWS_SECRET_ACCESS_KEY": os.environ["AWS_SECRET_ACCESS_KEY"]}
    return FlowstoreS3(bucket=BUCKET, endpoint_url=ENDPOINT, credentials=creds)


class Worker:
    def __init__(self) -> None:
        self.flows = make_flows()
        #: per round: flow name -> location, and (flowstore) location -> recorded sha256
        self.stored: dict[int, dict[str, str]] = {}
        self.digests: dict[int, dict[str, str]] = {}

    def sizes(self) -> dict[str, Any]:
        sizes = [len(artifact(f)) for f in self.flows]
        return {"mean_bytes": sum(sizes) / len(sizes), "min_bytes": min(sizes), "max_bytes": max(sizes)}

    def pad(self, target: float) -> dict[str, Any]:
        if SIDE != "flowstore":
            raise ValueError("only flowstore's flows are padded")
        for f in self.flows:
            f.description = ""
            short = target - len(artifact(f))
            if short > 0:  # base64 in the envelope: 3 pickled bytes -> 4 artifact bytes
                f.description = "x" * int(short * 3 / 4)
        return self.sizes()

    def store(self, rnd: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        c0 = time.process_time()
        storage = new_storage()
        for f in self.flows:
            storage.add_flow(f)
        storage.build()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        self.stored[rnd] = dict(storage.flows)
        if SIDE == "flowstore":  # the digests recorded at upload (what StoredFlow status holds); untimed
            self.digests[rnd] = {loc: storage.stat(loc).sha256 for loc in storage.flows.values()}
        return {"wall_s": wall, "cpu_s": cpu, "n": len(storage.flows)}

    def load(self, rnd: int) -> dict[str, Any]:
        mapping = self.stored[rnd]
        per_call: list[float] = []
        loaded: list[Any] = []
        t0 = time.perf_counter()
        c0 = time.process_time()
        storage = new_storage()  # an agent's storage object: configuration + the flows mapping
        storage.flows = dict(mapping)
        for name, location in mapping.items():
            s = time.perf_counter()
            if SIDE == "seed":
                loaded.append(storage.get_flow(name))  # Prefect 1.4.1: get_flow(flow_name)
            else:
                loaded.append(storage.get_flow(location, sha256=self.digests[rnd][location]))
            per_call.append(time.perf_counter() - s)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        wrong = [f.name for f, name in zip(loaded, mapping, strict=True) if f.name != name]
        if wrong:
            raise RuntimeError(f"loaded the wrong flows: {wrong[:3]}")
        if SIDE == "flowstore":  # each loaded flow runs (untimed): the round trip is real
            for f, orig in zip(loaded, self.flows, strict=True):
                if f.run() != orig.run():
                    raise RuntimeError(f"{f.name}: loaded flow computes something else")
        return {"wall_s": wall, "cpu_s": cpu, "n": len(loaded), "per_call_s": per_call}


def main() -> int:
    worker = Worker()
    ready = {
        "side": SIDE, "pid": os.getpid(), "import_s": T_IMPORTED - T_START,
        "make_flows_s": time.perf_counter() - T_IMPORTED,
        "python": "{}.{}.{}".format(*sys.version_info[:3]), "executable": sys.executable,
        "library": f"prefect {prefect.__version__}" if SIDE == "seed" else "flowstore",
        "boto3": boto3.__version__,
    }
    print(json.dumps({"ready": ready}), file=PROTO, flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            if cmd["cmd"] == "quit":
                break
            if cmd["cmd"] == "sizes":
                out: dict[str, Any] = worker.sizes()
            elif cmd["cmd"] == "pad":
                out = worker.pad(float(cmd["target"]))
            elif cmd["cmd"] == "store":
                out = worker.store(int(cmd["round"]))
            elif cmd["cmd"] == "load":
                out = worker.load(int(cmd["round"]))
            else:
                raise ValueError(f"unknown command {cmd['cmd']!r}")
        except Exception as exc:  # reported to the bench, which fails loudly
            out = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(out), file=PROTO, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
