"""The controller's work queue (controller/runtime.py), without a server: every watch event
updates an object's entry, a key is queued once at a time, a poke during its pass queues it once
more after it, retries and drift checks come back on timers, and an object the watch says is
gone (or is being deleted) is served no more. The pass itself is replaced by a recorder."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from kubernetes import client

from flowstore.api.constants import STOREDFLOW_PLURAL
from flowstore.controller.runtime import LoopOutcome, Runtime, Settings

KEY = (STOREDFLOW_PLURAL, "ns", "etl")


def body(version: str, generation: int = 1, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "etl", "namespace": "ns", "resourceVersion": version, "generation": generation}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-06T00:00:00Z"
    return {"metadata": meta, "spec": {"storageRef": {"name": "store"}, "flowName": "etl"}, "status": {}}


class Recorder:
    """Stands in for Runtime.reconcile_once: records what each pass read, can hold a pass."""

    def __init__(self, outcome: LoopOutcome | None = None) -> None:
        self.passes: list[tuple[str, bool]] = []
        self.outcome = outcome or LoopOutcome()
        self.release = threading.Event()
        self.release.set()
        self.started = threading.Event()

    def __call__(self, plural: str, namespace: str, name: str, check_drift: bool, logger: Any,
                 siblings: Any = None, obj: dict[str, Any] | None = None) -> LoopOutcome:
        assert obj is not None
        self.passes.append((obj["metadata"]["resourceVersion"], check_drift))
        self.started.set()
        self.release.wait(5)
        return self.outcome


async def settle(rt: Runtime) -> None:
    for _ in range(50):
        await asyncio.sleep(0.01)
        if not rt._running and rt._queue is not None and rt._queue.empty():
            return


def run(test: Any, outcome: LoopOutcome | None = None) -> None:
    async def main() -> None:
        rt = Runtime(client.ApiClient(), Settings(workers=2))
        recorder = Recorder(outcome)
        rt.reconcile_once = recorder  # type: ignore[method-assign]
        rt.start()
        try:
            await test(rt, recorder)
        finally:
            await rt.stop()
            rt.pool.shutdown(wait=True)

    asyncio.run(main())


def test_a_new_object_is_passed_once_and_later_events_only_update_its_body() -> None:
    async def test(rt: Runtime, rec: Recorder) -> None:
        rt.observe(KEY, body("1"))
        await settle(rt)
        rt.observe(KEY, body("2"))  # kopf's finalizer patch, say: no pass of its own
        await settle(rt)
        assert rec.passes == [("1", False)]
        rt.poke(KEY)  # something it references changed: the next pass reads the latest body
        await settle(rt)
        assert rec.passes == [("1", False), ("2", True)]  # the second pass may check drift
    run(test)


def test_pokes_while_queued_make_one_pass_and_a_poke_during_a_pass_makes_one_more() -> None:
    async def test(rt: Runtime, rec: Recorder) -> None:
        rec.release.clear()
        rt.observe(KEY, body("1"))
        await asyncio.to_thread(rec.started.wait, 5)
        rt.observe(KEY, body("2"))
        for _ in range(5):
            rt.poke(KEY)  # during the pass: it read "1", so one more pass follows, not five
        rec.release.set()
        await settle(rt)
        await settle(rt)
        assert [version for version, _ in rec.passes] == ["1", "2"]
    run(test)


def test_a_retry_comes_back_on_a_timer_and_a_poke_brings_it_forward() -> None:
    async def test(rt: Runtime, rec: Recorder) -> None:
        rt.observe(KEY, body("1"))
        await settle(rt)
        item = rt.items[KEY]
        assert item.timer is not None and item.failures == 0  # the drift check, at requeue_after
        rt.poke(KEY)
        await settle(rt)
        assert len(rec.passes) == 2
    run(test, LoopOutcome(requeue_after=600.0))


def test_an_object_gone_or_being_deleted_is_served_no_more() -> None:
    async def test(rt: Runtime, rec: Recorder) -> None:
        rt.observe(KEY, body("1"))
        await settle(rt)
        assert KEY in rt.items
        rt.observe(KEY, body("2", deleting=True))
        assert KEY not in rt.items and KEY not in rt.specs.get(KEY[1], {}) and KEY not in rt.seen
        rt.poke(KEY)
        await settle(rt)
        assert rec.passes == [("1", False)]
        rt.observe(KEY, body("3"))  # created again under the same name: a new entry, a first pass
        await settle(rt)
        rt.observe(KEY, body("3"), gone=True)  # the watch's DELETED (deleted, or left the shard)
        assert KEY not in rt.items
        assert rec.passes == [("1", False), ("3", False)]
    run(test)


def test_the_deletion_handler_waits_for_a_running_pass() -> None:
    async def test(rt: Runtime, rec: Recorder) -> None:
        rec.release.clear()
        rt.observe(KEY, body("1"))
        await asyncio.to_thread(rec.started.wait, 5)
        rt.observe(KEY, body("2", deleting=True))
        waiter = asyncio.ensure_future(rt.finished(KEY, 5))
        await asyncio.sleep(0.1)
        assert not waiter.done()  # the pass still runs: the cleanup waits
        rec.release.set()
        await asyncio.wait_for(waiter, 5)
        await settle(rt)
        assert KEY not in rt.items and rec.passes == [("1", False)]
    run(test)


def test_kopfs_success_lines_of_the_watch_handlers_are_dropped_and_nothing_else() -> None:
    import logging

    from flowstore.controller.handlers import QuietWatchHandlers

    quiet = QuietWatchHandlers()

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("kopf.objects", logging.INFO, __file__, 1, msg, None, None)

    assert not quiet.filter(record("Handler 'storedflow_changed' succeeded."))
    assert not quiet.filter(record("Handler 'configmap_changed' succeeded."))
    assert quiet.filter(record("Handler 'storedflow_deleted' succeeded."))
    assert quiet.filter(record("Handler 'storedflow_changed' failed with an exception. Will retry."))


def test_a_poke_of_flows_scans_their_namespace_only() -> None:
    """poke_flows (a flow name taken or freed, a FlowStorage or ConfigMap changed) wakes the
    matching StoredFlows of one namespace: the same name in another namespace is not woken, and a
    flow that is gone is not remembered."""
    passed: list[tuple[str, str]] = []

    async def test(rt: Runtime, rec: Recorder) -> None:
        def recording(plural: str, namespace: str, name: str, *args: Any, **kwargs: Any) -> LoopOutcome:
            passed.append((namespace, name))
            return rec(plural, namespace, name, *args, **kwargs)
        rt.reconcile_once = recording  # type: ignore[method-assign]
        for namespace, name, flow_name in (("a", "etl", "etl"), ("a", "other", "other"), ("b", "etl", "etl")):
            meta = {"name": name, "namespace": namespace, "resourceVersion": "1", "generation": 1}
            rt.observe((STOREDFLOW_PLURAL, namespace, name),
                       {"metadata": meta, "spec": {"storageRef": {"name": "store"}, "flowName": flow_name}})
        await settle(rt)
        assert sorted(passed) == [("a", "etl"), ("a", "other"), ("b", "etl")]
        assert set(rt.specs) == {"a", "b"} and len(rt.specs["a"]) == 2
        passed.clear()
        rt.poke_flows("a", lambda spec: spec.get("flowName") == "etl")
        await settle(rt)
        assert passed == [("a", "etl")]
        rt.observe((STOREDFLOW_PLURAL, "a", "etl"), {"metadata": {"name": "etl", "namespace": "a"}}, gone=True)
        passed.clear()
        rt.poke_flows("a", lambda spec: True)
        await settle(rt)
        assert passed == [("a", "other")]
    run(test)
