"""Reconcile passes from one work queue: level-triggered, like controller-runtime's.

Every FlowStorage and StoredFlow of this shard has an entry (:class:`_Item`: its last watched
body and its place in the queue), made by its first watch event (:meth:`Runtime.observe`). A
fixed number of workers (``--workers``) take keys from the queue and run one pass each in a
bounded thread pool (builds in a smaller semaphore). A key is queued once at a time: at its first
event; when it or something it references changes (a *poke* from the watch handlers; a poke
during its pass queues it again after it); when its retry backoff or drift-check interval is due
(a timer). Nothing is written unless it changes: a resync or restart with nothing changed writes
nothing. Until issue 25 kopf ran a daemon per object instead (~11 KiB each, a task, a stopper
and two waiters); an entry here is a few hundred bytes beside the body.

A pass reads its object from the last body the watch delivered, copied when a worker takes it,
not from a GET: a GET is made only while the watch has not yet shown the pass's own last status
write (``_written``: the resourceVersion that write returned). The generation a pass reads is
recorded before it starts (``seen``), so the watch events of kopf's own writes during a queued
pass (the finalizer) do not queue it again. A FlowStorage's ``status.flows`` follows its flows'
watch events once they were quiet for ``SUMMARY_QUIET`` seconds (at most ``SUMMARY_MAX_WAIT``
later): a burst of flows makes a few passes of their storage, not one each.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import dataclasses
import datetime as dt
import logging
import marshal
import random
import time
from collections.abc import Callable
from typing import Any

from kubernetes import client

from flowstore import reconcile
from flowstore.api import conditions as cond
from flowstore.api.constants import (
    API_VERSION,
    FINALIZER,
    FLOWSTORAGE_KIND,
    FLOWSTORAGE_PLURAL,
    STOREDFLOW_KIND,
    STOREDFLOW_PLURAL,
    ConditionType,
)
from flowstore.api.models import storage_ref
from flowstore.api.selectors import LabelSelector
from flowstore.controller import finalizers, metrics
from flowstore.controller.identity import AmbientPolicy
from flowstore.controller.kube import KubePorts
from flowstore.controller.policy import OperatorPolicy
from flowstore.reconcile.failures import classify

Key = tuple[str, str, str]  # (plural, namespace, name)
_log = logging.getLogger("flowstore.controller")
_IDLE, _QUEUED, _RUNNING = 0, 1, 2


class _Item:
    """One object's entry: the body of its last watch event and its place in the work queue. The
    body is kept packed (marshal: the in-process serialization of plain dicts, lists and strings;
    never stored or read from outside): a stored StoredFlow's body is ~9 KiB as Python dicts and
    2.0 KB packed. Packing takes ~9 us (JSON + zlib took 81 us, 4% of the operator's CPU in a
    burst, for 0.8 KB), and a pass unpacks it faster than it deep-copied the dicts."""

    __slots__ = ("body", "dirty", "failures", "first", "next_drift", "state", "timer")

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.state = _IDLE
        self.dirty = False  # poked while its pass ran: queue it again after
        self.timer: asyncio.TimerHandle | None = None  # its retry or drift check
        self.failures = 0
        self.first = True  # the first pass after start checks nothing remote
        self.next_drift = 0.0

#: a failure's message in the operator's log keeps its start and end within this many characters
LOG_MESSAGE_CHARS = 2000
#: a FlowStorage updates status.flows once its flows were quiet this many seconds ...
SUMMARY_QUIET = 2.0
#: ... or this long after the first change it has not shown yet
SUMMARY_MAX_WAIT = 30.0


@dataclasses.dataclass
class Settings:
    workers: int = 64
    max_builds: int = 2
    #: builder Jobs (spec.build) of this operator running at once
    max_build_jobs: int = 4
    build_timeout: float = 60.0
    build_memory: int = 512 * 2**20
    backoff_base: float = 1.0
    # Temporary failures (a backend or the API down) retry at most this far apart, so an
    # outage is over for every flow within about this long after it ends.
    backoff_max: float = 30.0
    delete_retries: int = 5
    #: what the operator lends the authors of specs (flags; docs/security.md)
    policy: OperatorPolicy = dataclasses.field(default_factory=OperatorPolicy)
    #: where FlowStorages may act as the operator's own cloud identity (--ambient-identity)
    ambient: AmbientPolicy = dataclasses.field(default_factory=AmbientPolicy)
    #: the objects this operator serves (--watch-label-selector); None: all
    shard: LabelSelector | None = None
    #: seals the status records the operator acts on later (``controller/record_key.py``)
    record_key: bytes = dataclasses.field(default=b"", repr=False)


class Runtime:
    """Shared by all loops (kept in kopf's memo)."""

    def __init__(self, api: client.ApiClient, settings: Settings) -> None:
        self.settings = settings
        self.ports = KubePorts(api, build_timeout=settings.build_timeout, build_memory=settings.build_memory,
                               max_builds=settings.max_builds, max_build_jobs=settings.max_build_jobs,
                               policy=settings.policy, ambient=settings.ambient, shard=settings.shard,
                               record_key=settings.record_key)
        self.core = client.CoreV1Api(api)
        self.pool = concurrent.futures.ThreadPoolExecutor(settings.workers, thread_name_prefix="reconcile")
        # a Docker storage's image build wakes the StoredFlows that wait for it
        self.ports.images.on_done = self._wake
        #: every FlowStorage and StoredFlow of this shard: its last body and its place in the queue
        self.items: dict[Key, _Item] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self._watching: set[str] = set()  # the plurals whose watch delivered an object
        self.index: Any = None  # kopf's StoredFlow index (handlers.storedflows_by_storage)
        self._queue: asyncio.Queue[Key] | None = None
        self._workers: list[asyncio.Task[None]] = []
        #: the pass running now for a key (the deletion handler waits for it)
        self._running: dict[Key, asyncio.Future[Any]] = {}
        self.readiness = metrics.ReadinessTracker()
        #: what the pokes match of each looped StoredFlow's spec (its references, not its source), by
        #: namespace: a poke scans one namespace's flows, not every flow (a scan of all on each new
        #: flow's event was quadratic in a burst)
        self.specs: dict[str, dict[Key, dict[str, Any]]] = {}
        self.seen: dict[Key, int] = {}  # the generation each loop last read
        #: the resourceVersion of a loop's last status write, until its body shows it
        self._written: dict[Key, str] = {}
        #: FlowStorages whose status.flows update is scheduled: [first, last] flow change not shown
        self._summaries_due: dict[Key, list[float]] = {}
        self._slots: asyncio.Semaphore | None = None
        #: StoredFlow -> (its FlowStorage, what status.flows takes from it), from watch events
        self.flow_summaries: dict[Key, tuple[str, tuple[Any, ...]]] = {}

    # ------------------------------------------------------------------ pokes (watch side)
    def poke(self, key: Key) -> None:
        """Queue one object's pass. Safe from any thread (reconciles run in the worker pool; the
        queue belongs to the operator's event loop)."""
        if self.loop is None or key not in self.items:
            return
        try:
            on_loop = asyncio.get_running_loop() is self.loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            self._enqueue(key)
        else:
            self.loop.call_soon_threadsafe(self._enqueue, key)

    def _wake(self, keys: list[Any]) -> None:
        for key in keys:
            self.poke(key)

    def poke_flows(self, namespace: str, match: Callable[[dict[str, Any]], bool]) -> None:
        """Wake every StoredFlow loop in `namespace` whose spec matches."""
        for key, spec in list(self.specs.get(namespace, {}).items()):
            if match(spec):
                self.poke(key)

    def poke_storage(self, namespace: str, name: str) -> None:
        self.poke((FLOWSTORAGE_PLURAL, namespace, name))

    def _poke_storage_soon(self, namespace: str, name: str) -> None:
        """Wake a FlowStorage once its flows have been quiet for SUMMARY_QUIET seconds, or
        SUMMARY_MAX_WAIT seconds after the first change it has not shown yet: a burst of flows
        makes a few status.flows updates, not one each. Safe from any thread."""
        key: Key = (FLOWSTORAGE_PLURAL, namespace, name)
        if self.loop is None:  # no loop runs yet: its first pass reads the index anyway
            return
        now = time.monotonic()
        first = self._summaries_due.setdefault(key, [now, now])
        first[1] = now
        if first[0] != now:
            return  # a wake-up is already scheduled

        def due() -> None:
            pending = self._summaries_due.get(key)
            if pending is None:
                return
            at = time.monotonic()
            wait = min(pending[1] + SUMMARY_QUIET, pending[0] + SUMMARY_MAX_WAIT) - at
            if wait > 0 and self.loop is not None:
                self.loop.call_later(wait, due)
                return
            self._summaries_due.pop(key, None)
            self.poke(key)

        self.loop.call_soon_threadsafe(self.loop.call_later, SUMMARY_QUIET, due)

    def flow_changed(self, key: Key, storage: str, summary: tuple[Any, ...] | None) -> None:
        """A StoredFlow's part of its FlowStorage's ``status.flows`` (its name, location and
        readiness; None once it is gone) was seen in a watch event: wake the FlowStorage when
        that part changed. Called after kopf updated its index with the same event, so the
        FlowStorage's pass reads the new state."""
        before = self.flow_summaries.pop(key, None)
        if summary is not None:
            self.flow_summaries[key] = (storage, summary)
        if before != ((storage, summary) if summary is not None else None):
            for name in {storage, before[0] if before else storage}:
                self._poke_storage_soon(key[1], name)

    # ------------------------------------------------------------------ the work queue
    def start(self, index: Any = None) -> None:
        """Start the workers on the running event loop (kopf's startup). `index`: kopf's StoredFlow
        index by (namespace, storage name); it may also come with the first event (observe)."""
        self.loop = asyncio.get_running_loop()
        self.index = index if index is not None else self.index
        self._queue = asyncio.Queue()
        self._workers = [self.loop.create_task(self._work(), name=f"flowstore-worker-{i}")
                         for i in range(self.settings.workers)]

    async def stop(self) -> None:
        """Stop the workers (kopf's cleanup). A pass running in a worker thread is not interrupted:
        the pool's shutdown waits for it where the caller needs that (leader election)."""
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        for item in self.items.values():
            if item.timer is not None:
                item.timer.cancel()

    def observe(self, key: Key, body: Any, *, gone: bool = False, index: Any = None) -> None:
        """A watch event of a FlowStorage or StoredFlow of this shard (on the event loop, after kopf
        updated its index with it). A new object is queued for its first pass; a known one keeps
        the body for its next pass (whatever queues it: a poke, a retry, a drift check). An object
        deleted, marked for deletion or relabelled out of the shard (`gone`: the watch's DELETED)
        is served no more; a pass running for it finishes, and nothing follows it."""
        if index is not None:
            self.index = index
        meta = body.get("metadata") or {}
        if gone or meta.get("deletionTimestamp"):
            self._drop(key)
            return
        item = self.items.get(key)
        if item is None:
            if key[0] not in self._watching:  # said once: kopf's own per-event lines are dropped (handlers.py)
                self._watching.add(key[0])
                _log.info("the %s watch delivered its first object: its passes start", key[0])
            self.items[key] = _Item(_pack(body))
            self._enqueue(key)
        else:
            item.body = _pack(body)

    def _drop(self, key: Key) -> None:
        item = self.items.pop(key, None)
        if item is None:
            return
        if item.timer is not None:
            item.timer.cancel()
        self.specs.get(key[1], {}).pop(key, None)
        self.seen.pop(key, None)
        self._written.pop(key, None)
        # the object is gone or no longer ours: it stops counting as not Ready
        self.readiness.observe(STOREDFLOW_KIND if key[0] == STOREDFLOW_PLURAL else FLOWSTORAGE_KIND,
                               (key[1], key[2]), None)

    def _enqueue(self, key: Key) -> None:
        """Queue `key` once (on the event loop): a key already queued stays where it is; one whose
        pass runs is queued again when that pass ends (it may have read the object too early)."""
        item = self.items.get(key)
        if item is None or self._queue is None:
            return
        if item.state == _RUNNING:
            item.dirty = True
        elif item.state == _IDLE:
            if item.timer is not None:
                item.timer.cancel()
                item.timer = None
            item.state = _QUEUED
            self._queue.put_nowait(key)

    async def _work(self) -> None:
        assert self._queue is not None
        while True:
            key = await self._queue.get()
            item = self.items.get(key)
            if item is None or item.state != _QUEUED:
                continue
            item.state, item.dirty = _RUNNING, False
            try:
                delay, gone = await self._pass(key, item)
            finally:
                item.state = _IDLE
            if self.items.get(key) is not item:
                continue  # dropped while its pass ran
            if gone:
                self._drop(key)
            elif item.dirty:
                self._enqueue(key)
            elif delay is not None:
                item.timer = self.loop.call_later(delay, self._enqueue, key)  # type: ignore[union-attr]

    async def _pass(self, key: Key, item: _Item) -> tuple[float | None, bool]:
        """One pass of `key` in the worker pool; returns when to queue it again (None: when poked)
        and whether the object is gone."""
        plural, namespace, name = key
        assert self.loop is not None
        check_drift = not item.first and time.monotonic() >= item.next_drift
        item.first = False
        try:
            # copied now that a worker is free for it: what the watch saw last
            obj = self._fresh_copy(key, item.body)
            index = self.index
            siblings = _snapshot(index, namespace, _storage_of(plural, name, obj)) if index is not None else None
            running = self.loop.run_in_executor(self.pool, self.reconcile_once, plural, namespace, name,
                                                check_drift, _log, siblings, obj)
            self._running[key] = running
            try:
                outcome: LoopOutcome | None = await asyncio.shield(running)
            finally:
                if self._running.get(key) is running:
                    del self._running[key]
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the API itself failed; never let a worker die
            _log.warning("reconcile of %s/%s failed: %s", namespace, name, classify(exc).message)
            outcome = None
        if outcome is None:
            item.failures += 1
            return self._backoff(item.failures), False
        if outcome.gone:
            return None, True
        if outcome.failure is not None and not outcome.failure.stalled:
            item.failures += 1
            delay = outcome.requeue_after or self._backoff(item.failures)
            return min(delay, self._backoff(item.failures)), False
        item.failures = 0
        if outcome.requeue_after is None:
            return None, False  # wait for a poke
        jitter = outcome.requeue_after * random.uniform(0, 0.1)  # noqa: S311 - spreading load
        item.next_drift = time.monotonic() + outcome.requeue_after + jitter
        return outcome.requeue_after + jitter, False

    async def finished(self, key: Key, timeout: float) -> None:
        """Wait (at most `timeout` seconds) for the pass of `key` running now, if any: the deletion
        handler cleans up only after it, so no upload of that pass lands after the cleanup."""
        running = self._running.get(key)
        if running is not None:
            await asyncio.wait([running], timeout=timeout)

    def _fresh_copy(self, key: Key, body: Any) -> dict[str, Any] | None:
        """A copy of the daemon's body for one pass (on the event loop, where kopf replaces it), or
        None (the pass GETs the object) when there is no body or it does not show yet the last
        status this loop wrote. The generation it holds counts as read from now on."""
        if body is None:
            return None
        if isinstance(body, bytes):  # an entry's packed body: unpacking makes the copy
            obj = _unpack(body)
            meta = obj["metadata"]
        else:
            meta = body.get("metadata") or {}
        written = self._written.get(key)
        if written is not None:
            if not _at_least(meta.get("resourceVersion"), written):
                return None
            self._written.pop(key, None)
        if not isinstance(body, bytes):
            obj = {k: copy.deepcopy(v) for k, v in body.items() if k != "metadata"}
            obj["metadata"] = {k: copy.deepcopy(v) for k, v in meta.items() if k != "managedFields"}
        self._remember(key, obj)
        return obj

    def _remember(self, key: Key, obj: dict[str, Any]) -> None:
        """What the pokes need of the object: its generation, and a StoredFlow's references."""
        self.seen[key] = max(self.seen.get(key, 0), int(obj["metadata"].get("generation") or 0))
        if key[0] == STOREDFLOW_PLURAL:
            spec = obj.get("spec") or {}
            source = spec.get("source") or {}
            slim: dict[str, Any] = {"storageRef": spec.get("storageRef"), "flowName": spec.get("flowName")}
            if isinstance(source, dict) and source.get("configMapRef"):
                slim["source"] = {"configMapRef": source.get("configMapRef")}
            self.specs.setdefault(key[1], {})[key] = slim

    def _backoff(self, failures: int) -> float:
        base = self.settings.backoff_base * 2 ** min(failures - 1, 10)
        return float(min(self.settings.backoff_max, base) * random.uniform(0.8, 1.2))  # noqa: S311

    # ------------------------------------------------------------------ one pass (worker thread)
    def reconcile_once(self, plural: str, namespace: str, name: str, check_drift: bool,
                       logger: logging.Logger,
                       siblings: dict[str, list[dict[str, Any]]] | None = None,
                       obj: dict[str, Any] | None = None) -> LoopOutcome:
        """One pass over `obj` (the daemon's copy), or over a fresh GET of the object."""
        ports = self.ports
        key: Key = (plural, namespace, name)
        getter = ports.get_storedflow if plural == STOREDFLOW_PLURAL else ports.read_flowstorage
        kind = STOREDFLOW_KIND if plural == STOREDFLOW_PLURAL else FLOWSTORAGE_KIND
        if obj is None:
            obj = getter(namespace, name)
            if obj is not None:
                self._remember(key, obj)
        if obj is None or obj["metadata"].get("deletionTimestamp"):
            self.readiness.observe(kind, (namespace, name), None)
            return LoopOutcome(gone=True)
        if self.settings.shard and not self.settings.shard.matches(obj["metadata"].get("labels")):
            # relabelled out of this shard: another operator serves it now. (The API server's
            # DELETED event for it shows the object as it was, so kopf's filters cannot tell;
            # that event makes this pass GET the object: see refetch.)
            self.readiness.observe(kind, (namespace, name), None)
            return LoopOutcome(gone=True)
        observed = (obj.get("status") or {}).get("observedGeneration")
        if reconcile.requested_at(obj) or (observed is not None and observed != obj["metadata"].get("generation")):
            # reconcile now, or a changed spec: with the Secrets as they are now (a first pass of a
            # new object may use one read in the last SECRET_TTL seconds; a failure reads it again)
            ports.forget_secrets(namespace)
        started = time.monotonic()

        written: list[dict[str, Any]] = []  # a progress status written during this pass

        def patch(status: dict[str, Any]) -> None:
            updated = ports.patch_status(plural, namespace, name, status)
            version = ((updated or {}).get("metadata") or {}).get("resourceVersion")
            if version:
                self._written[key] = str(version)

        def write_progress(status: dict[str, Any]) -> None:
            patch(status)
            written.append(status)

        if plural == STOREDFLOW_PLURAL:
            seen = ports.seen_flowstorage(namespace, finalizers.storage_of(obj))
            if finalizers.missing(obj, seen):  # its FlowStorage deletes objects: before anything is stored
                if ports.add_finalizer(namespace, name, obj):
                    logger.info("%s/%s: added finalizer %s (deletionPolicy: Delete)", namespace, name, FINALIZER)
            lookup = (lambda storage: siblings.get(storage, [])) if siblings is not None else None
            outcome = reconcile.reconcile_stored_flow(obj, ports, check_drift=check_drift,
                                                      on_progress=write_progress, siblings=lookup)
        else:
            members = siblings.get(name, []) if siblings is not None else None
            outcome = reconcile.reconcile_flow_storage(obj, ports, members=members)
        self._observe(kind, namespace, name, outcome, time.monotonic() - started)
        before = obj.get("status") or {}
        # Compare with what the object holds now: a progress status written above must be
        # replaced even when the outcome equals the status read at the start of the pass.
        current = written[-1] if written else before
        if reconcile.status_changed(current, outcome.status):
            patch(_with_removals(current, outcome.status))
            self._post_events(obj, kind, before, outcome)
        if outcome.failure is not None:  # a retry reads the Secrets again (rotated credentials)
            ports.forget_secrets(namespace)
        if outcome.uploaded:
            logger.info("stored %s/%s at %s", namespace, name, outcome.status.get("location"))
        elif outcome.failure is not None:
            logger.info("%s/%s not ready: %s: %s", namespace, name, outcome.failure.reason,
                        cond.bounded(outcome.failure.message, limit=LOG_MESSAGE_CHARS))
        return LoopOutcome(failure=outcome.failure, requeue_after=outcome.requeue_after)

    def _observe(self, kind: str, namespace: str, name: str, outcome: reconcile.Outcome, seconds: float) -> None:
        metrics.RECONCILE_SECONDS.labels(kind=kind).observe(seconds)
        ready = cond.get_condition(outcome.status.get("conditions"), "Ready") or {}
        if outcome.failure is not None:
            result = "stalled" if outcome.failure.stalled else "failed"
            metrics.FAILURES.labels(kind=kind, reason=outcome.failure.reason).inc()
        else:
            suspended = cond.get_condition(outcome.status.get("conditions"), ConditionType.SUSPENDED)
            result = "suspended" if suspended else "ready"
        metrics.RECONCILES.labels(kind=kind, result=result).inc()
        self.readiness.observe(kind, (namespace, name), ready.get("status") == "True")
        if outcome.uploaded:
            backend = str((outcome.status.get("storage") or {}).get("type", "unknown"))
            metrics.ARTIFACTS_STORED.labels(backend=backend).inc()
            metrics.UPLOAD_BYTES.labels(backend=backend).inc(int((outcome.status.get("artifact") or {}).get("size", 0)))

    def _post_events(self, obj: dict[str, Any], kind: str, current: dict[str, Any],
                     outcome: reconcile.Outcome) -> None:
        """Post the outcome's Events, but a failure only when Ready's reason changes (no spam)."""
        before = cond.get_condition(current.get("conditions"), "Ready") or {}
        for event in outcome.events:
            if event.type == "Warning" and outcome.failure is not None and before.get("reason") == event.reason:
                continue
            self.post_event(obj, kind, event.type, event.reason, event.message)

    def post_event(self, obj: dict[str, Any], kind: str, etype: str, reason: str, message: str) -> None:
        meta = obj["metadata"]
        now = dt.datetime.now(dt.UTC)
        body = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{meta['name']}.", namespace=meta["namespace"]),
            involved_object=client.V1ObjectReference(
                api_version=API_VERSION, kind=kind, name=meta["name"], namespace=meta["namespace"],
                uid=meta.get("uid"), resource_version=meta.get("resourceVersion"),
            ),
            reason=reason, message=message[:1024], type=etype,
            first_timestamp=now, last_timestamp=now, count=1,
            source=client.V1EventSource(component="flowstore-operator"),
            reporting_component="flowstore.dev/operator", reporting_instance="flowstore-operator",
        )
        log = logging.getLogger(__name__)
        try:
            self.core.create_namespaced_event(meta["namespace"], body)
        except client.ApiException as exc:  # events are best effort; status carries the same facts
            if exc.status == 403 and "NamespaceTerminating" in str(exc.body or ""):
                # not a permission the operator lacks: nothing can be created in a namespace
                # being deleted, and its resources go with it
                log.debug("event %s on %s dropped: namespace %s is being deleted", reason, meta["name"],
                          meta["namespace"])
            else:
                log.warning("could not post event %s on %s: HTTP %s %s", reason, meta["name"], exc.status,
                            exc.reason)
        except Exception as exc:
            log.warning("could not post event %s on %s: %s", reason, meta["name"], exc)


@dataclasses.dataclass
class LoopOutcome:
    failure: Any = None
    requeue_after: float | None = None
    gone: bool = False


def _pack(body: Any) -> bytes:
    """An event's body as an entry keeps it (without managedFields, which watch_events drops already)."""
    obj = {k: v for k, v in body.items()}
    meta = obj.get("metadata")
    if isinstance(meta, dict) and "managedFields" in meta:
        obj["metadata"] = {k: v for k, v in meta.items() if k != "managedFields"}
    return marshal.dumps(obj)


def _unpack(packed: bytes) -> dict[str, Any]:
    obj: dict[str, Any] = marshal.loads(packed)  # noqa: S302 - bytes this process packed itself, never read from outside
    obj.setdefault("metadata", {})
    return obj


def _snapshot(index: Any, namespace: str, storage: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """Copy the index entries of one namespace, or of one storage there (on the event loop,
    where kopf mutates it)."""
    if storage is not None:
        return {storage: list(index[(namespace, storage)]) if (namespace, storage) in index else []}
    return {name: list(index[(ns, name)]) for ns, name in list(index) if ns == namespace}


def _storage_of(plural: str, name: str, obj: dict[str, Any] | None) -> str | None:
    """The one storage whose flows a pass reads (None: unknown before the GET, all of them)."""
    if plural == FLOWSTORAGE_PLURAL:
        return name
    return storage_ref(obj.get("spec") or {}) if obj is not None else None


def _at_least(version: Any, written: str) -> bool:
    """Whether resourceVersion `version` shows the write that returned `written`. The API server's
    versions are etcd revisions (integers, growing); anything else counts only when equal."""
    if version == written:
        return True
    try:
        return int(str(version)) >= int(written)
    except ValueError:
        return False


def _with_removals(current: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any]:
    """A merge patch turning `current` into `desired`: keys that went away become null, at every
    depth — a JSON merge patch merges maps, so a member dropped from a map (status.flows, an
    image's signatureTag, an artifact's signature once signing is off) would otherwise stay —
    and everything else (lists, values) is replaced."""
    patch: dict[str, Any] = {k: None for k in current if k not in desired}
    for k, v in desired.items():
        old = current.get(k)
        patch[k] = _with_removals(old, v) if isinstance(old, dict) and isinstance(v, dict) else v
    return patch
