#!/usr/bin/env python3
"""Backend throughput benchmark: flowstore's storage backends against the plain SDKs.

    python3 bench/backend_bench.py                  # isolated local cloud (default), s3 gcs azure
    python3 bench/backend_bench.py --shared         # use the shared local cloud instead
    python3 bench/backend_bench.py --backends gcs --rounds 1

For each backend (S3 on moto, GCS on fake-gcs-server, Azure Blob on Azurite: the real local
servers of `scripts/localcloud`) and with the same random bytes, it uploads 50 objects of 1 MiB
one after another and then one object of 100 MiB, twice:

  * flowstore: `flowstore.storage.<Backend>.put_bytes` (sha256 + metadata, and whatever
    post-upload check the backend does; see EXTRAS);
  * raw SDK: the same bytes with the plain SDK call (the fair baseline).

Each backend runs the pair `--rounds` times in ABBA order (raw first for one backend, flowstore
first for the next), and the better round of each side counts. Results: a table on stdout and
bench/results/backend-latest.json (gitignored). See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import random
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # the benches' shared harness
    RESULTS,
    ROOT,
    cloud,
    log,
    machine,
    machine_line,
    need_modules,
    versions,
)

sys.path.insert(0, str(ROOT / "operator"))
#: not bench/results/localcloud: operator_bench.py --isolated uses that one, and stopping "what we
#: started" there could pull a server from under a concurrent operator bench
ISOLATED_DIR = RESULTS / "localcloud-backend"
MiB = 1024 * 1024
MB = 1_000_000

#: what flowstore's put_bytes does on top of the raw SDK call (from operator/flowstore/storage/*.py)
EXTRAS = {
    "s3": "sha256 of the data + x-amz-meta-sha256 + ContentType; no read-back (>8 MiB: upload_fileobj, "
          "8 MiB parts, like the raw default TransferConfig)",
    "gcs": "sha256 + metadata + content_type, retry policy; verify: local md5 (or crc32c) of the data vs the "
           "upload response (no extra request); >8 MiB resumable in 8 MiB chunks (raw: same chunk_size)",
    "azure": "sha256 + metadata + ContentSettings; read-back get_blob_properties (1 extra request); client: "
             "max_single_put_size 8 MiB, 4 MiB blocks, max_concurrency=4 (raw: SDK defaults, 64 MiB single put, "
             "4 MiB blocks, max_concurrency=1)",
}


#: the SDKs whose versions the results record
SDKS = ("boto3", "botocore", "s3transfer", "google-cloud-storage", "google-resumable-media", "azure-storage-blob",
        "azure-core")


# ------------------------------------------------------------------------------ backends
class Backend:
    """One backend: a container, a flowstore storage on it and the raw SDK's put."""

    name: str
    container: str
    flowstore: Any

    def raw_put(self, key: str, data: bytes) -> None:
        raise NotImplementedError

    def delete(self, keys: list[str]) -> None:
        raise NotImplementedError


class S3Backend(Backend):
    name = "s3"

    def __init__(self) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig

        from flowstore.storage import S3

        endpoint = os.environ["FLOWSTORE_S3_ENDPOINT"]
        creds = {"AWS_ACCESS_KEY_ID": os.environ["AWS_ACCESS_KEY_ID"],
                 "AWS_SECRET_ACCESS_KEY": os.environ["AWS_SECRET_ACCESS_KEY"]}
        self.client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
                                   aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"])
        self.transfer = TransferConfig()  # the SDK defaults (8 MiB threshold and parts, 10 threads)
        self.container = f"bench-{uuid.uuid4().hex[:10]}"
        self.client.create_bucket(Bucket=self.container)
        self.flowstore = S3(bucket=self.container, endpoint_url=endpoint, credentials=creds)

    def raw_put(self, key: str, data: bytes) -> None:
        if len(data) > self.transfer.multipart_threshold:
            self.client.upload_fileobj(io.BytesIO(data), self.container, key, Config=self.transfer)
        else:
            self.client.put_object(Bucket=self.container, Key=key, Body=data)

    def delete(self, keys: list[str]) -> None:
        for i in range(0, len(keys), 1000):
            self.client.delete_objects(Bucket=self.container,
                                       Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]]})


class GCSBackend(Backend):
    name = "gcs"

    def __init__(self) -> None:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        from flowstore.storage import GCS
        from flowstore.storage.gcs import CHUNK_SIZE, RESUMABLE_THRESHOLD

        endpoint = os.environ["FLOWSTORE_GCS_ENDPOINT"]
        self.chunk_size, self.threshold = CHUNK_SIZE, RESUMABLE_THRESHOLD
        self.client = storage.Client(project="flowstore", credentials=AnonymousCredentials(),
                                     client_options={"api_endpoint": endpoint})
        self.container = f"bench-{uuid.uuid4().hex[:10]}"
        self.bucket = self.client.create_bucket(self.container)
        self.flowstore = GCS(bucket=self.container, endpoint_url=endpoint)

    def raw_put(self, key: str, data: bytes) -> None:
        blob = self.bucket.blob(key, chunk_size=self.chunk_size if len(data) > self.threshold else None)
        blob.upload_from_string(data)

    def delete(self, keys: list[str]) -> None:
        for k in keys:
            self.bucket.blob(k).delete()


class AzureBackend(Backend):
    name = "azure"

    def __init__(self) -> None:
        from azure.storage.blob import BlobServiceClient

        from flowstore.storage import Azure

        conn = os.environ["AZURE_STORAGE_CONNECTION_STRING"]
        self.client = BlobServiceClient.from_connection_string(conn)
        self.container = f"bench-{uuid.uuid4().hex[:10]}"
        self.cc = self.client.create_container(self.container)
        self.flowstore = Azure(container=self.container, connection_string=conn)

    def raw_put(self, key: str, data: bytes) -> None:
        self.cc.get_blob_client(key).upload_blob(data, overwrite=True)

    def delete(self, keys: list[str]) -> None:
        for k in keys:
            self.cc.delete_blob(k)


BACKENDS: dict[str, Callable[[], Backend]] = {"s3": S3Backend, "gcs": GCSBackend, "azure": AzureBackend}


# ------------------------------------------------------------------------------ measuring
def measure(be: Backend, impl: str, tag: str, small: list[bytes], big: bytes) -> dict[str, Any]:
    """Upload `small` one after another, then `big`; delete them afterwards (not timed)."""
    put: Callable[[str, bytes], Any] = be.flowstore.put_bytes if impl == "flowstore" else be.raw_put
    keys: list[str] = []
    per_obj: list[float] = []
    c0 = time.process_time()  # this process's CPU (all threads): flowstore's own work shows here
    t0 = time.perf_counter()
    for i, data in enumerate(small):
        key = f"{impl}/{tag}/small-{i:03d}"
        s = time.perf_counter()
        put(key, data)
        per_obj.append(time.perf_counter() - s)
        keys.append(key)
    small_s = time.perf_counter() - t0
    small_cpu = time.process_time() - c0
    key = f"{impl}/{tag}/big"
    c0 = time.process_time()
    s = time.perf_counter()
    put(key, big)
    big_s = time.perf_counter() - s
    big_cpu = time.process_time() - c0
    keys.append(key)
    be.delete(keys)
    small_bytes = sum(len(d) for d in small)
    return {
        "small_s": small_s, "small_mbps": small_bytes / small_s / MB, "small_per_obj_s": per_obj,
        "small_median_s": statistics.median(per_obj),
        "big_s": big_s, "big_mbps": len(big) / big_s / MB, "small_cpu_s": small_cpu, "big_cpu_s": big_cpu,
    }


def run_backend(name: str, index: int, rounds: int, small: list[bytes], big: bytes) -> dict[str, Any]:
    be = BACKENDS[name]()
    log(f"{name}: container {be.container}; warm-up (one 1 MiB put each, not counted)")
    for impl in ("raw", "flowstore"):  # connections, imports, client creation
        measure(be, impl, "warmup", small[:1], small[0])
    first, second = ("raw", "flowstore") if index % 2 == 0 else ("flowstore", "raw")
    order: list[str] = []
    for r in range(rounds):
        order += [first, second] if r % 2 == 0 else [second, first]  # ABBA
    runs: dict[str, list[dict[str, Any]]] = {"raw": [], "flowstore": []}
    for i, impl in enumerate(order):
        log(f"{name}: run {i + 1}/{len(order)}: {impl}")
        res = measure(be, impl, f"r{i}", small, big)
        log(f"{name}:   {impl}: {len(small)}x1MiB {res['small_mbps']:.1f} MB/s, "
            f"{len(big) // MiB}MiB {res['big_mbps']:.1f} MB/s")
        runs[impl].append(res)

    def best(impl: str) -> dict[str, Any]:
        rs = runs[impl]
        return {
            "small_mbps": max(r["small_mbps"] for r in rs),
            "big_mbps": max(r["big_mbps"] for r in rs),
            # median over every 1 MiB put of every round
            "small_median_ms": statistics.median(t for r in rs for t in r["small_per_obj_s"]) * 1000,
            # client CPU seconds (this process, all threads), least of the rounds: less noise-prone
            "small_cpu_s": min(r["small_cpu_s"] for r in rs),
            "big_cpu_s": min(r["big_cpu_s"] for r in rs),
        }

    raw, fs = best("raw"), best("flowstore")
    return {
        "container": be.container, "order": order, "extras": EXTRAS[name],
        "raw": raw, "flowstore": fs,
        "ratio_small": fs["small_mbps"] / raw["small_mbps"], "ratio_big": fs["big_mbps"] / raw["big_mbps"],
        "runs": runs,
    }


# ------------------------------------------------------------------------------ report
def report(res: dict[str, Any]) -> str:
    lines = [
        "",
        f"Backend upload throughput: {res['n_small']} x 1 MiB sequential, then 1 x {res['big_mib']} MiB; "
        f"MB = 10^6 bytes; best of {res['rounds']} per side (ABBA order); {res['cloud']}",
        "",
        f"{'backend':<7} {'phase':<10} {'raw MB/s':>9} {'flowstore MB/s':>15} {'ratio':>7} {'':>4}  "
        f"{'raw med/1MiB':>12} {'fs med/1MiB':>12} {'client CPU raw/fs':>18}",
        "-" * 105,
    ]
    for name, b in res["backends"].items():
        for phase, key, rkey in ((f"{res['n_small']}x1MiB", "small_mbps", "ratio_small"),
                                 (f"1x{res['big_mib']}MiB", "big_mbps", "ratio_big")):
            ratio = b[rkey]
            flag = "ok" if ratio >= 0.8 else "LOW"
            med = (f"{b['raw']['small_median_ms']:>10.1f}ms {b['flowstore']['small_median_ms']:>10.1f}ms"
                   if key == "small_mbps" else f"{'':>12} {'':>12}")
            ckey = key.replace("_mbps", "_cpu_s")
            cpu = f"{b['raw'][ckey]:.2f}s / {b['flowstore'][ckey]:.2f}s"
            lines.append(f"{name:<7} {phase:<10} {b['raw'][key]:>9.1f} {b['flowstore'][key]:>15.1f} "
                         f"{ratio:>6.0%} {flag:>4}  {med} {cpu:>18}")
    lines += ["", "ratio = flowstore / raw (target >= 80%); med/1MiB = median time of one 1 MiB put (all rounds);",
              "client CPU = this process's CPU time for the phase (all threads, least of the rounds; the servers' "
              "CPU is not in it)",
              "order per backend: " + "; ".join(f"{n}: {' '.join(b['order'])}" for n, b in res["backends"].items()),
              "flowstore does in addition:"]
    lines += [f"  {n}: {b['extras']}" for n, b in res["backends"].items()]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", action="store_true",
                    help="use the shared local cloud instead of a private one (bench/results/localcloud-backend)")
    ap.add_argument("--backends", default="s3,gcs,azure", help="comma-separated subset of s3,gcs,azure")
    ap.add_argument("--rounds", type=int, default=2, help="runs per side and backend (ABBA order); best counts")
    ap.add_argument("--small", type=int, default=50, help="number of 1 MiB objects")
    ap.add_argument("--big-mib", type=int, default=100, help="size of the big object in MiB")
    ap.add_argument("--seed", type=int, default=1, help="seed of the random payload")
    args = ap.parse_args()
    need_modules("boto3", "google.cloud.storage", "azure.storage.blob")
    names = [n.strip() for n in args.backends.split(",") if n.strip()]
    unknown = [n for n in names if n not in BACKENDS]
    if unknown:
        ap.error(f"unknown backend(s): {unknown}")
    res: dict[str, Any] = {
        "machine": machine(), "versions": versions(*SDKS), "rounds": args.rounds, "n_small": args.small,
        "big_mib": args.big_mib, "seed": args.seed, "isolated": not args.shared,
        "cloud": "shared local cloud" if args.shared else f"isolated local cloud ({ISOLATED_DIR.relative_to(ROOT)})",
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "backends": {},
    }
    print(machine_line(res["machine"]), flush=True)

    rng = random.Random(args.seed)
    small = [rng.randbytes(MiB) for _ in range(args.small)]
    big = rng.randbytes(args.big_mib * MiB)

    with cloud(names, state_dir=None if args.shared else ISOLATED_DIR):
        for i, name in enumerate(names):
            res["backends"][name] = run_backend(name, i, args.rounds, small, big)
    res["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")

    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "backend-latest.json"
    out.write_text(json.dumps(res, indent=2, sort_keys=True) + "\n")
    print(report(res), flush=True)
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
