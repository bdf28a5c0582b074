"""Retention under SIGKILL (docs/revisions.md#retention): the real operator, scoped to the test's
namespace, killed between retiring an object and deleting it, and at random points of a burst of
edits under ``deletionPolicy: Delete``. Status first, then the delete: a kill never leaves status
naming a deleted object, and never leaks an object that status once named.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from flowstore import client
from tests.e2e.test_faults import ScopedOperator, list_flows, say
from tests.helpers.kube import apply, condition, wait_for, wait_ready
from tests.helpers.manifests import inline_flow, s3_storage
from tests.helpers.objects import s3_keys

pytestmark = [pytest.mark.usefixtures("own_operators_only")]


@pytest.fixture
def op(crds: None, kube_env: dict[str, str], namespace: str, tmp_path: Path) -> Iterator[ScopedOperator]:
    """The real operator for this test's namespace alone, started and SIGKILLed by the test."""
    operator = ScopedOperator(tmp_path / "operator", namespace)
    yield operator
    operator.stop(signal.SIGKILL)


def named(status: dict[str, Any]) -> set[str]:
    """The objects a status names as loadable: the current one and its history's."""
    found = {e["location"] for e in status.get("history") or [] if isinstance(e, dict) and e.get("location")}
    return found | ({status["location"]} if status.get("location") else set())


def settled(namespace: str, name: str, timeout: float) -> dict[str, Any]:
    """The StoredFlow once Ready for its generation with nothing waiting in status.retired."""
    return wait_for("storedflow", namespace, name, lambda o: condition(o).get("status") == "True"
                    and (o.get("status") or {}).get("observedGeneration") == o["metadata"]["generation"]
                    and "retired" not in (o.get("status") or {}), timeout, "to have deleted what it retired")


def wait_watching(op: ScopedOperator) -> None:
    """Until kopf delivered its first StoredFlow event (its watch is up and passes start)."""
    deadline = time.monotonic() + 60
    while "the storedflows watch delivered its first object" not in op.log_path.read_text(errors="replace"):
        assert time.monotonic() < deadline and op.alive(), op.logs()[-3000:]
        time.sleep(0.02)


def test_a_kill_between_retiring_and_deleting_deletes_on_the_next_start(
        op: ScopedOperator, namespace: str, s3_bucket: str, s3_endpoint: str) -> None:
    """Revision 1 leaves the history (limit 1) and status records it in status.retired; the
    operator is SIGKILLed before minAge lets it delete. Nothing deletes it meanwhile; the next
    start does, and status then names only revision 2, whose object is the only one left."""
    apply(s3_storage(namespace, s3_bucket, s3_endpoint, deletionPolicy="Delete", retention={"minAge": "10s"}))
    op.start()
    apply(inline_flow(namespace, "etl", "etl", body="return 1", revisionHistoryLimit=1))
    first = wait_ready(namespace, "etl", timeout=120)["status"]
    apply(inline_flow(namespace, "etl", "etl", body="return 2", revisionHistoryLimit=1))
    retired = wait_for("storedflow", namespace, "etl", lambda o: (o.get("status") or {}).get("retired")
                       and (o.get("status") or {}).get("observedGeneration") == o["metadata"]["generation"], 120)
    op.stop(signal.SIGKILL)
    killed_at = time.monotonic()
    records = retired["status"]["retired"]
    say(f"retention-kill: SIGKILL with status.retired = {records}")
    assert [r["location"] for r in records] == [first["location"]]
    assert sorted(s3_keys(s3_endpoint, s3_bucket)) == sorted([first["location"], retired["status"]["location"]])

    time.sleep(max(0.0, 12 - (time.monotonic() - killed_at)))  # minAge passes with no operator running
    assert first["location"] in s3_keys(s3_endpoint, s3_bucket)
    op.start()
    done = settled(namespace, "etl", timeout=60)["status"]
    say(f"retention-kill: after the restart, history {[e['revision'] for e in done['history']]}, "
        f"objects {s3_keys(s3_endpoint, s3_bucket)}")
    assert [e["revision"] for e in done["history"]] == [2] and done["artifact"]["revision"] == 2
    assert s3_keys(s3_endpoint, s3_bucket) == [done["location"]]
    assert client.load_flow("etl", namespace).run() == 2


def test_sigkill_at_random_points_of_retention_never_deletes_a_named_object_nor_leaks_one(
        op: ScopedOperator, namespace: str, s3_bucket: str, s3_endpoint: str) -> None:
    """Four flows (limit 2, minAge 0s) change source eight times while the operator is SIGKILLed
    at random points among stores, status writes and retention deletes. Sampled all along: every
    object a status names (current or in its history) is in the bucket. At the end: every object
    that any sampled status named, and that the final statuses do not, is gone (retention
    finished across the kills); what else is left are objects no status ever named (uploads a
    kill interrupted before their status write)."""
    seed = int(os.environ.get("FLOWSTORE_FAULTS_SEED") or time.time_ns() % 2**32)
    rng = random.Random(seed)
    say(f"retention-sigkill: seed {seed} (FLOWSTORE_FAULTS_SEED={seed} replays the kill times)")
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    # scripts (no build in the sandbox): stores come fast enough for kills to land among them
    apply(s3_storage(namespace, s3_bucket, s3_endpoint, deletionPolicy="Delete", retention={"minAge": "0s"},
                     storedAsScript=True))
    names = [f"r{i}" for i in range(4)]
    values = dict.fromkeys(names, 0)

    def edit(round_: int) -> None:
        values.update({n: 100 * round_ + i for i, n in enumerate(names)})
        apply("\n---\n".join(inline_flow(namespace, n, f"flow {n}", body=f"return {values[n]}",
                                         revisionHistoryLimit=2) for n in names))

    violations: list[str] = []
    observed: set[str] = set()
    retired_seen: set[str] = set()
    stop = threading.Event()

    def exists(key: str) -> bool:
        try:
            s3.head_object(Bucket=s3_bucket, Key=key)
        except s3.exceptions.ClientError:
            return False
        return True

    def sample() -> None:
        for name, obj in list_flows(namespace).items():
            status = obj.get("status") or {}
            retired_seen.update(r["location"] for r in status.get("retired") or [] if isinstance(r, dict))
            for key in named(status):
                observed.add(key)
                if not exists(key):  # gone: a violation only if status still names it now
                    again = list_flows(namespace).get(name) or {}
                    if key in named(again.get("status") or {}) and not exists(key):
                        violations.append(f"{name}: status names {key}, which is not in the bucket")

    def sampler() -> None:
        while not stop.is_set():
            try:
                sample()
            except AssertionError:  # a kubectl hiccup: sample again
                pass
            stop.wait(0.2)

    edit(0)
    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    try:
        for round_ in range(1, 9):
            known = set(observed)
            op.start()
            wait_watching(op)
            # The clock starts at this round's first store: the kill then lands among the other
            # flows' stores, the status writes that retire objects, and the pass that deletes them.
            deadline = time.monotonic() + 120
            while not any(named(o.get("status") or {}) - known for o in list_flows(namespace).values()):
                assert time.monotonic() < deadline and op.alive(), op.logs()[-3000:]
                time.sleep(0.1)
            delay = rng.uniform(0.0, 2.5)
            time.sleep(delay)
            op.stop(signal.SIGKILL)
            say(f"retention-sigkill: #{round_} SIGKILL {delay:.2f}s after the round's first store; "
                f"{len(s3_keys(s3_endpoint, s3_bucket))} objects in S3")
            edit(round_)
        op.start()
        final = {n: settled(namespace, n, timeout=120) for n in names}
        sample()
    finally:
        stop.set()
        thread.join(timeout=10)
    keys = set(s3_keys(s3_endpoint, s3_bucket))
    still_named = set().union(*(named(o["status"]) for o in final.values()))
    leaked = (keys - still_named) & observed
    orphans = keys - still_named - observed
    say(f"retention-sigkill: {len(observed)} objects named by some status, {len(retired_seen)} seen retired, "
        f"{len(observed - keys)} deleted; "
        f"{len(keys)} in S3 at the end: {len(still_named)} named now, {len(orphans)} never named by any status "
        f"(uploads a kill interrupted), {len(leaked)} leaked")
    assert observed - keys, "no object was deleted: the kills never met retention"
    assert not violations, violations
    assert still_named <= keys
    assert not leaked, f"named by a status once, no longer, and not deleted: {sorted(leaked)}"
    assert not keys & retired_seen - still_named
    for name, obj in final.items():  # bounded by the limit (fewer when kills left a flow fewer stores)
        assert 1 <= len(obj["status"]["history"]) <= 2, obj["status"]["history"]
        assert obj["status"]["lastRevision"] >= len(obj["status"]["history"])
        assert client.load_flow(name, namespace).run() == values[name]
