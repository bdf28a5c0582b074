#!/usr/bin/env python3
"""What signing costs the operator per pass, and checking a signed statement an agent on load.

    .venv/bin/python bench/verify_bench.py [--runs 2000] [--sign-runs 40]

Signing (the operator, docs/signing.md): every pass signs ``status.artifact`` and each
``status.history`` entry over its own revision's statement (``reconcile.signatures.sign_status``).
Timed per pass for 1, 10 and 100 history entries (the CRD's maximum), ed25519 and HMAC, in three
cases: a status signed for the first time (every signature new), the usual pass (every signature
already there: rebuilt and compared), and a new key (every entry signed again).

For one load an agent with a key (docs/signing.md) does, on top of downloading and hashing the
bytes: rebuild the statement from the status (RFC 8785 JSON of a realistic S3 status), verify
its signature (ed25519, or HMAC-SHA256) and update its memory of verified designations (one
small file under the agent cache, flock'ed, replaced atomically). The table shows the median and
p95 of each part, per artifact size for the sha256, and the ratio of the statement check to
the sha256; two cases of the memory: a designation already verified (the usual load: a read under
a lock) and a new one each load (a write). OpenSSL's ed25519 verify alone is shown too, to tell
flowstore's own work from the machine's speed. Reading the public key (PEM) is once per process
and shown apart. Target: the statement check adds under 1 ms. No server is needed; results go to
bench/results/verify-latest.json, with the machine and its load average (bench/harness.py).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import RESULTS, ROOT, machine, machine_line, need_modules, pct, summary  # the benches' shared harness

need_modules("cryptography", "flowstore")
sys.path.insert(0, str(ROOT / "operator"))

from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ed25519  # noqa: E402

from flowstore.artifacts import signing, statement  # noqa: E402
from flowstore.artifacts.freshness import Freshness  # noqa: E402
from flowstore.reconcile.signatures import sign_status  # noqa: E402

SIZES = {"4 KiB": 4 * 1024, "64 KiB": 64 * 1024, "1 MiB": 1024 * 1024, "16 MiB": 16 * 1024 * 1024}


def timings(runs: int, fn: Callable[[int], object]) -> list[float]:
    out = []
    for i in range(runs):
        start = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - start)
    return out


def ms(values: list[float]) -> tuple[float, float]:
    stats = summary(values)
    return stats["median"] * 1000, pct(values, 95) * 1000


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


HISTORY_LENGTHS = (1, 10, 100)
OBJ = {"metadata": {"namespace": "data", "name": "etl-daily", "uid": "6f1c2d3e-0000-4000-8000-000000000001"}}


def status_with_history(entries: int) -> dict[str, Any]:
    """The S3 status above at revision `entries`, its history holding revisions `entries`..1."""
    doc = status(entries)
    history = []
    for revision in range(entries, 0, -1):
        location = f"prod/etl-daily/r{revision:03d}"
        entry = {"revision": revision, "digest": "sha256:" + f"{revision:064x}", "size": 2048, "format": "pickle",
                 "url": f"s3://flows/{location}", "location": location, "sourceDigest": "sha256:" + "cd" * 32,
                 "inputsDigest": "sha256:" + f"{revision + 7:064x}", "storedAt": "2026-11-26T10:00:00Z"}
        if revision != entries:
            entry["supersededAt"] = "2026-11-26T11:00:00Z"
        history.append(entry)
    doc["history"] = history
    doc["location"] = history[0]["location"]
    artifact = doc["artifact"]
    assert isinstance(artifact, dict)
    artifact.update({k: history[0][k] for k in ("digest", "url", "inputsDigest")})
    return doc


def signing_rows(signers: dict[str, Any], other: dict[str, Any], runs: int) -> dict[str, dict[str, float]]:
    """Per pass of sign_status: (provider, entries, case) -> median/p95 ms; each case is checked to
    do what it says (every signature made anew, or none changed)."""
    rows: dict[str, dict[str, float]] = {}
    for provider, signer in signers.items():
        for entries in HISTORY_LENGTHS:
            unsigned = status_with_history(entries)
            signed = copy.deepcopy(unsigned)
            assert sign_status(signed, OBJ, signer)
            rotated_from = copy.deepcopy(unsigned)
            sign_status(rotated_from, OBJ, other[provider])
            cases: dict[str, tuple[dict[str, Any], bool]] = {
                "first signing": (unsigned, True), "usual pass, nothing to sign": (signed, False),
                "new key, all signed again": (rotated_from, True)}
            for case, (start, changes) in cases.items():
                copies = [copy.deepcopy(start) for _ in range(runs)]
                values = []
                for doc in copies:
                    begin = time.perf_counter()
                    changed = sign_status(doc, OBJ, signer)
                    values.append(time.perf_counter() - begin)
                    assert changed is changes, (provider, entries, case)
                median, p95 = ms(values)
                rows[f"sign_status {provider}, {entries} history entries: {case}"] = {
                    "median": median, "p95": p95, "per_entry": median / entries}
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000, help="timed loads per row (default 2000)")
    parser.add_argument("--sign-runs", type=int, default=40, help="timed sign_status passes per row (default 40)")
    args = parser.parse_args()
    runs = args.runs
    host = machine()
    print(machine_line(host), flush=True)

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
    results: dict[str, object] = {"runs": runs, "sign_runs": args.sign_runs, "machine": host}

    other_private = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    signing_table = signing_rows(
        {"ed25519": signer, "hmac": hmac_signer},
        {"ed25519": signing.signer_from_secret(other_private, "ed25519", where="bench"),
         "hmac": signing.signer_from_secret(os.urandom(32).hex().encode(), "hmac", where="bench")},
        args.sign_runs)
    width = max(len(k) for k in signing_table)
    print(f"{'':{width}}  median ms     p95 ms   ms/entry")
    for label, row in signing_table.items():
        print(f"{label:{width}}  {row['median']:9.3f}  {row['p95']:9.3f}  {row['per_entry']:9.3f}")
    print()
    results["signing"] = signing_table
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
          f"(this machine hashes {mib_per_s:.0f} MiB/s with sha256; load average now {os.getloadavg()[0]:.1f})")
    results["loadavg_at_end"] = os.getloadavg()
    results["own_work_ms"] = check - alone
    results["rows"] = rows
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "verify-latest.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
