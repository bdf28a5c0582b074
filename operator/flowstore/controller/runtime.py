"""Per-object reconcile loops: level-triggered, like controller-runtime's work queue.

kopf runs one daemon per object; each daemon calls :meth:`Runtime.run_loop`, which reconciles
now, then sleeps until the object or something it references changes (a *poke* from the
watch handlers), until its retry backoff or drift-check interval is due, or until kopf
stops it. Reconciles run in a bounded thread pool; builds in a smaller semaphore. Nothing
is written unless it changes: a resync or restart with nothing changed writes nothing.

A pass reads its object from the daemon's body (kopf keeps it as the watch last saw it),
copied when a worker is free for it, not from a GET: a GET is made only while the watch has
not yet shown the pass's own last status write (``_written``: the resourceVersion that write
returned). The generation a pass reads is recorded before it starts (``seen``), so the
watch events of kopf's own writes during a queued pass (the finalizer) do not wake it again.
A FlowStorage's ``status.flows`` follows its flows' watch events once they were quiet for
``SUMMARY_QUIET`` seconds (at most ``SUMMARY_MAX_WAIT`` later): a burst of flows makes a few
passes of their storage, not one each.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import dataclasses
import datetime as dt
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from kubernetes import client

from flowstore import reconcile
from flowstore.api import conditions as cond
from flowstore.api.constants import (
    API_VERSION,
    FLOWSTORAGE_KIND,
    FLOWSTORAGE_PLURAL,
    STOREDFLOW_KIND,
    STOREDFLOW_PLURAL,
    ConditionType,
)
from flowstore.api.models import storage_ref
from flowstore.api.selectors import LabelSelector
from flowstore.controller import metrics
from flowstore.controller.identity import AmbientPolicy
from flowstore.controller.kube import KubePorts
from flowstore.controller.policy import OperatorPolicy
from flowstore.reconcile.failures import classify

Key = tuple[str, str, str]  # (plural, namespace, name)
#: a failure's message in the operator's log keeps its start and end within this many characters
LOG_MESSAGE_CHARS = 2000
#: a FlowStorage updates status.flows once its flows were quiet this many seconds ...
SUMMARY_QUIET = 2.0
#: ... or this long after the first change it has not shown yet
SUMMARY_MAX_WAIT = 30.0


@dataclasses.dataclass
class Settings:
    workers: int = 8
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


class Runtime:
    """Shared by all loops (kept in kopf's memo)."""

    def __init__(self, api: client.ApiClient, settings: Settings) -> None:
        self.settings = settings
        self.ports = KubePorts(api, build_timeout=settings.build_timeout, build_memory=settings.build_memory,
                               max_builds=settings.max_builds, max_build_jobs=settings.max_build_jobs,
                               policy=settings.policy, ambient=settings.ambient, shard=settings.shard)
        self.core = client.CoreV1Api(api)
        self.pool = concurrent.futures.ThreadPoolExecutor(settings.workers, thread_name_prefix="reconcile")
        # a Docker storage's image build wakes the StoredFlows that wait for it
        self.ports.images.on_done = self._wake
        self.pokes: dict[Key, asyncio.Event] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.readiness = metrics.ReadinessTracker()
        #: what the pokes match of each looped StoredFlow's spec (its references, not its source)
        self.specs: dict[Key, dict[str, Any]] = {}
        self.seen: dict[Key, int] = {}  # the generation each loop last read
        #: the resourceVersion of a loop's last status write, until its body shows it
        self._written: dict[Key, str] = {}
        #: loops whose next pass GETs the object (refetch)
        self._refetch: set[Key] = set()
        #: FlowStorages whose status.flows update is scheduled: [first, last] flow change not shown
        self._summaries_due: dict[Key, list[float]] = {}
        self._slots: asyncio.Semaphore | None = None
        #: StoredFlow -> (its FlowStorage, what status.flows takes from it), from watch events
        self.flow_summaries: dict[Key, tuple[str, tuple[Any, ...]]] = {}

    # ------------------------------------------------------------------ pokes (watch side)
    def poke(self, key: Key) -> None:
        """Wake one loop. Safe from any thread (kopf runs sync handlers in threads; reconciles
        run in the worker pool), since asyncio events belong to the operator's event loop."""
        event = self.pokes.get(key)
        if event is None or self.loop is None:
            return
        try:
            on_loop = asyncio.get_running_loop() is self.loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            event.set()
        else:
            self.loop.call_soon_threadsafe(event.set)

    def _wake(self, keys: list[Any]) -> None:
        for key in keys:
            self.poke(key)

    def poke_flows(self, namespace: str, match: Callable[[dict[str, Any]], bool]) -> None:
        """Wake every StoredFlow loop in `namespace` whose spec matches."""
        for key, spec in list(self.specs.items()):
            if key[0] == STOREDFLOW_PLURAL and key[1] == namespace and match(spec):
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

    # ------------------------------------------------------------------ the loop
    async def run_loop(self, plural: str, namespace: str, name: str, stopped: Any, logger: logging.Logger,
                       index: Any = None, body: Any = None) -> None:
        """`index`: kopf's StoredFlow index by (namespace, storage name), complete before any
        loop starts; read only on the event loop (snapshots go to the worker threads). `body`:
        kopf's live view of the object (None: each pass GETs it)."""
        key: Key = (plural, namespace, name)
        poke = self.pokes.setdefault(key, asyncio.Event())
        loop = self.loop = asyncio.get_running_loop()
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.settings.workers)
        failures = 0
        next_drift = time.monotonic() + 0  # the first pass after start checks nothing remote
        first = True
        try:
            while not stopped:
                check_drift = not first and time.monotonic() >= next_drift
                first = False
                try:
                    async with self._slots:  # copied when a worker is free: the freshest, and few at once
                        # a poke until now is answered by this pass: it reads what the watch saw since
                        poke.clear()
                        obj = self._fresh_copy(key, body)
                        siblings = _snapshot(index, namespace, _storage_of(plural, name, obj)) if index is not None \
                            else None
                        outcome = await loop.run_in_executor(
                            self.pool, self.reconcile_once, plural, namespace, name, check_drift, logger, siblings,
                            obj)
                except Exception as exc:  # the API itself failed; never let the daemon die
                    logger.warning("reconcile of %s/%s failed: %s", namespace, name, classify(exc).message)
                    outcome = None
                delay: float | None
                if outcome is None:
                    failures += 1
                    delay = self._backoff(failures)
                elif outcome.failure is not None and not outcome.failure.stalled:
                    failures += 1
                    delay = outcome.requeue_after or self._backoff(failures)
                    delay = min(delay, self._backoff(failures))
                else:
                    failures = 0
                    delay = outcome.requeue_after  # None: wait for a poke
                    if outcome.requeue_after is not None:
                        jitter = outcome.requeue_after * random.uniform(0, 0.1)  # noqa: S311 - spreading load
                        next_drift = time.monotonic() + outcome.requeue_after + jitter
                        delay = outcome.requeue_after + jitter
                if outcome is not None and outcome.gone:
                    return
                await self._sleep(poke, stopped, delay)
        finally:  # the object is gone or no longer ours: it stops counting as not Ready
            self.pokes.pop(key, None)
            self.specs.pop(key, None)
            self.seen.pop(key, None)
            self._written.pop(key, None)
            self._refetch.discard(key)
            self.readiness.observe(STOREDFLOW_KIND if plural == STOREDFLOW_PLURAL else FLOWSTORAGE_KIND,
                                   (namespace, name), None)

    def _fresh_copy(self, key: Key, body: Any) -> dict[str, Any] | None:
        """A copy of the daemon's body for one pass (on the event loop, where kopf replaces it), or
        None (the pass GETs the object) when there is no body or it does not show yet the last
        status this loop wrote. The generation it holds counts as read from now on."""
        if body is None or key in self._refetch:
            self._refetch.discard(key)
            return None
        meta = body.get("metadata") or {}
        written = self._written.get(key)
        if written is not None:
            if not _at_least(meta.get("resourceVersion"), written):
                return None
            self._written.pop(key, None)
        obj = {k: copy.deepcopy(v) for k, v in body.items() if k != "metadata"}
        obj["metadata"] = {k: copy.deepcopy(v) for k, v in meta.items() if k != "managedFields"}
        self._remember(key, obj)
        return obj

    def refetch(self, key: Key) -> None:
        """The next pass of `key` GETs the object instead of reading the daemon's body: the watch
        said it is gone, which may mean a relabel moved it out of this shard (the event shows the
        object as it was, labels included), not a deletion. Only for a running loop."""
        if key in self.pokes:
            self._refetch.add(key)

    def _remember(self, key: Key, obj: dict[str, Any]) -> None:
        """What the pokes need of the object: its generation, and a StoredFlow's references."""
        self.seen[key] = max(self.seen.get(key, 0), int(obj["metadata"].get("generation") or 0))
        if key[0] == STOREDFLOW_PLURAL:
            spec = obj.get("spec") or {}
            source = spec.get("source") or {}
            slim: dict[str, Any] = {"storageRef": spec.get("storageRef"), "flowName": spec.get("flowName")}
            if isinstance(source, dict) and source.get("configMapRef"):
                slim["source"] = {"configMapRef": source.get("configMapRef")}
            self.specs[key] = slim

    def _backoff(self, failures: int) -> float:
        base = self.settings.backoff_base * 2 ** min(failures - 1, 10)
        return float(min(self.settings.backoff_max, base) * random.uniform(0.8, 1.2))  # noqa: S311

    @staticmethod
    async def _sleep(poke: asyncio.Event, stopped: Any, delay: float | None) -> None:
        waiters = [asyncio.ensure_future(poke.wait()), asyncio.ensure_future(stopped.wait())]
        try:
            await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

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
