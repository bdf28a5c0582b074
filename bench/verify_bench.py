#!/usr/bin/env python3
"""What checking a signed statement costs an agent on load, next to the sha256 it computes anyway.

    python3 bench/verify_bench.py [--runs 2000]

For one load an agent with a key (docs/signing.md) does, on top of downloading and hashing the
bytes: rebuild the statement from the status (RFC 8785 JSON of a realistic S3 status), verify
its signature (ed25519, or HMAC-SHA256) and update its memory of verified designations (one
small file under the agent cache, flock'ed, replaced atomically). The table shows the median and
p95 of each part, per artifact size for the sha256, and the ratio of the statement check to
the sha256; two cases of the memory: a designation already verified (the usual load: a read under
a lock) and a new one each load (a write). OpenSSL's ed25519 verify alone is shown too, to tell
flowstore's own work from the machine's speed. Reading the public key (PEM) is once per process
and shown apart. Target: the statement check adds under 1 ms. No server is needed; results go to
bench/results/verify-latest.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "operator"))

from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ed25519  # noqa: E402

from flowstore.artifacts import signing, statement  # noqa: E402
from flowstore.artifacts.freshness import Freshness  # noqa: E402

RESULTS = ROOT / "bench" / "results"
SIZES = {"4 KiB": 4 * 1024, "64 KiB": 64 * 1024, "1 MiB": 1024 * 1024, "16 MiB": 16 * 1024 * 1024}


def timings(runs: int, fn: Callable[[int], object]) -> list[float]:
    out = []
    for i in range(runs):
        start = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - start)
    return out


def ms(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return statistics.median(ordered) * 1000, ordered[max(0, int(len(ordered) * 0.95) - 1)] * 1000


def status(designation: int) -> dict[str, object]:
    return {
        "flowName": "etl daily", "location": "prod/etl-daily/2026-11-26t10-00-00-000000-00-00",
        "artifact": {"url": "s3://flows/prod/etl-daily/2026-11-26t10-00-00-000000-00-00",
                     "digest": "sha256:" + "ab" * 32, "size": 2048, "format": "pickle", "revision": designation,
                     "designation": designation, "lastUpdateTime": "2026-11-26T10:00:00Z",
                     "sourceDigest": "sha256:" + "cd" * 32, "inputsDigest": "sha256:" + "ef" * 32},
        "storage": {"type": "S3", "bucket": "flows", "keyPrefix": "prod/", "region": "eu-west-1",
                    "endpointURL": "https://s3.eu-west-1.amazonaws.com", "storedAsScript": False,
                    "labels": ["prod", "s3-flow-storage"], "secrets": ["SLACK_TOKEN"],
                    "flows": {"etl daily": "prod/etl-daily/2026-11-26t10-00-00-000000-00-00"}},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000)
    args = parser.parse_args()
    runs = args.runs

    private = ed25519.Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    signer = signing.signer_from_secret(pem, "ed25519", where="bench")
    hmac_signer = signing.signer_from_secret(os.urandom(32).hex().encode(), "hmac", where="bench")
    assert signer.public_pem is not None
    public = signer.public_pem.encode()
    keys = signing.public_keys(public, where="bench")
    hmac_keys = [hmac_signer.verifier()]
    uid = "6f1c2d3e-0000-4000-8000-000000000001"

    signed = {}
    for designation in range(1, runs + 2):
        doc = status(designation)
        stmt = statement.from_status(doc, namespace="data", name="etl-daily", uid=uid)
        signed[designation] = (doc, statement.sign(stmt, signer), statement.sign(stmt, hmac_signer))

    rows: dict[str, dict[str, float]] = {}
    results: dict[str, object] = {"runs": runs, "machine": {"python": platform.python_version(),
                                                            "cpus": os.cpu_count(), "load": os.getloadavg()}}
    rows["read the public key (once per process)"] = dict(zip(("median", "p95"), ms(timings(
        max(50, runs // 20), lambda _: signing.public_keys(public, where="bench"))), strict=True))

    raw_message = statement.from_status(signed[1][0], namespace="data", name="etl-daily", uid=uid).message()
    raw_signature = private.sign(raw_message)
    raw_public = private.public_key()
    rows["ed25519 verify alone (OpenSSL, through cryptography)"] = dict(zip(("median", "p95"), ms(timings(
        runs, lambda _: raw_public.verify(raw_signature, raw_message))), strict=True))

    def rebuild(i: int) -> None:
        statement.from_status(signed[i + 1][0], namespace="data", name="etl-daily", uid=uid)

    def verify_ed25519(i: int) -> None:
        doc, sig, _ = signed[i + 1]
        stmt = statement.from_status(doc, namespace="data", name="etl-daily", uid=uid)
        statement.verify(stmt, sig.signature, sig.key_id, keys, what="bench")

    def verify_hmac(i: int) -> None:
        doc, _, sig = signed[i + 1]
        stmt = statement.from_status(doc, namespace="data", name="etl-daily", uid=uid)
        statement.verify(stmt, sig.signature, sig.key_id, hmac_keys, what="bench")

    with tempfile.TemporaryDirectory() as root:
        memory = Freshness(Path(root))

        def check_with(designation: Callable[[int], int]) -> Callable[[int], None]:
            def full_check(i: int) -> None:  # what an agent adds to a load: rebuild, verify, remember
                doc, sig, _ = signed[designation(i)]
                stmt = statement.from_status(doc, namespace="data", name="etl-daily", uid=uid)
                key = statement.verify(stmt, sig.signature, sig.key_id, keys, what="bench")
                memory.admit(stmt, key.key_id, pinned=False, what="bench")
            return full_check

        for label, fn in (("rebuild the statement (RFC 8785 JSON)", rebuild),
                          ("rebuild + verify ed25519", verify_ed25519),
                          ("rebuild + verify HMAC-SHA256", verify_hmac),
                          ("whole check, a new designation each load (a write)", check_with(lambda i: i + 1)),
                          ("whole check, the revision already verified (the usual load)",
                           check_with(lambda i: runs + 1))):
            rows[label] = dict(zip(("median", "p95"), ms(timings(runs, fn)), strict=True))

    check = rows["whole check, the revision already verified (the usual load)"]["median"]
    for label, size in SIZES.items():
        data = os.urandom(size)
        values = timings(max(20, min(runs, 64 * 1024 * 1024 // size)),
                         lambda _, data=data: hashlib.sha256(data).hexdigest())
        median, p95 = ms(values)
        rows[f"sha256 of {label} (what every load does)"] = {"median": median, "p95": p95,
                                                            "check/sha256": check / median}

    width = max(len(k) for k in rows)
    print(f"{'':{width}}  median ms     p95 ms   check/sha256")
    for label, row in rows.items():
        ratio = f"{row['check/sha256']:10.2f}x" if "check/sha256" in row else ""
        print(f"{label:{width}}  {row['median']:9.3f}  {row['p95']:9.3f}   {ratio}")
    verdict = "under" if check < 1.0 else "OVER"
    alone = rows["ed25519 verify alone (OpenSSL, through cryptography)"]["median"]
    mib_per_s = 1.0 / (rows["sha256 of 1 MiB (what every load does)"]["median"] / 1000)
    print(f"\nthe whole statement check: {check:.3f} ms median, {verdict} the 1 ms target; of it, OpenSSL's "
          f"ed25519 verify {alone:.3f} ms and flowstore's own work {check - alone:.3f} ms "
          f"(this machine hashes {mib_per_s:.0f} MiB/s with sha256; load average {os.getloadavg()[0]:.1f})")
    results["own_work_ms"] = check - alone
    results["rows"] = rows
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "verify-latest.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
