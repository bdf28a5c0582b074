"""kopf handlers: thin. They unpack, hand over to the runtime or the reconcile core, and
translate for kopf.

- watch handlers hand every FlowStorage and StoredFlow event to the runtime's work queue
  (runtime.py: a new object is queued, a known one keeps its latest body) and queue the objects
  that reference what changed (spec, ConfigMap, FlowStorage) — in memory, without writing
  anything to the objects;
- the deletion handler applies ``deletionPolicy`` (``reconcile.cleanup``) with bounded
  retries, then releases the finalizer ``flowstore.dev/cleanup`` whatever happens.

Nothing is registered at import: :func:`register` adds the handlers to a registry with the
operator's shard (``flowstore operator --watch-label-selector SELECTOR``): the API server filters
the FlowStorage and StoredFlow watches by it (:func:`kopf_settings`, controller/shards.py), so
kopf, the index, the queue and the pokes see this shard's objects only. An object a relabel
moved out of the shard arrives as a DELETED event, and the queue serves it no more.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import kopf

from flowstore.api import conditions as cond
from flowstore.api.constants import FINALIZER, FLOWSTORAGE_PLURAL, GROUP, STOREDFLOW_KIND, STOREDFLOW_PLURAL, VERSION
from flowstore.api.models import storage_ref
from flowstore.api.selectors import LabelSelector
from flowstore.controller import finalizers, shards
from flowstore.controller.kopf_toggles import wake_only_on_change
from flowstore.controller.runtime import Runtime
from flowstore.controller.watch_events import drop_managed_fields
from flowstore.reconcile import delete_stored_flow, requested_at

IndexKey = tuple[str, str]  # (namespace, FlowStorage name)


class NoDiffBaseStorage(kopf.DiffBaseStorage):
    """No diff base at all. kopf records what it last handled (an annotation) to tell creations
    from updates for its change handlers; flowstore's only change handler is the deletion one,
    which kopf detects from deletionTimestamp, and its loops are level-triggered: they never read
    kopf's diffs. Keeping the record cost one metadata PATCH per object (after its finalizer's)
    and, with the whole spec copied in, once broke objects whose inline source passed the API
    server's 256 KiB limit on annotations. An annotation left by an older version is ignored."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> Any:
        return None

    def fetch(self, *, body: kopf.Body) -> Any:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: Any) -> None:
        return None


def kopf_settings(selector: LabelSelector | None = None) -> kopf.OperatorSettings:
    """kopf's settings for flowstore, tuned once; `selector`: the shard, filtered server side."""
    settings = kopf.OperatorSettings()
    shards.filter_watches(settings, selector)
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="flowstore.dev")
    settings.persistence.diffbase_storage = NoDiffBaseStorage()
    settings.posting.level = logging.WARNING  # kopf's own per-handler events; ours are explicit
    # kopf's worker per object holds that object's last raw event until it has been idle this long
    # (5 s by default): in a burst of thousands, that is thousands of bodies held twice
    settings.queueing.idle_timeout = 1.0
    # the initial listing in pages (as client-go's reflectors do): a restart with 10,000 flows
    # otherwise decodes one response of every object with its managedFields at once
    settings.watching.chunk_size = LIST_CHUNK
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 30
    return settings


#: objects per page of kopf's initial listing of each resource
LIST_CHUNK = 500

#: the watch handlers, whose success kopf would log at INFO on every event of every object
WATCH_HANDLERS = ("storedflow_changed", "flowstorage_changed", "configmap_changed")


class QuietWatchHandlers(logging.Filter):
    """Drops kopf's "Handler 'storedflow_changed' succeeded." lines: four per stored flow, 40,000
    in a 10,000-flow burst, saying nothing (a failing watch handler is still logged)."""

    _quiet = frozenset(f"Handler {name!r} succeeded." for name in WATCH_HANDLERS)

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg not in self._quiet


#: seconds the deletion handler waits for a pass of the flow still running (kopf gave daemons as long)
DELETE_WAIT = 10.0
#: seconds after the operator's start before it probes what the kernel gives the build sandbox
SANDBOX_PROBE_DELAY = 5.0


def register(registry: kopf.OperatorRegistry, *, selector: LabelSelector | None = None) -> None:
    """Add flowstore's handlers to `registry`; `selector` selects the objects this operator serves
    (give kopf_settings the same one)."""
    drop_managed_fields()  # watch events lose managedFields: half a body, never read
    wake_only_on_change()  # kopf's start with N objects: N wake-ups, not N² (kopf_toggles.py)
    quiet = logging.getLogger("kopf.objects")
    if not any(isinstance(f, QuietWatchHandlers) for f in quiet.filters):
        quiet.addFilter(QuietWatchHandlers())

    @kopf.on.login(id="login", registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        """kopf's login through the Kubernetes client (configured by flowstore.kubeconfig): a
        registry of our own has none of kopf's default login handlers."""
        return kopf.login_via_client(**kwargs)

    @kopf.on.startup(id="start", registry=registry)
    async def start(memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
        memo.runtime = Runtime(memo.api, memo.settings)
        memo.runtime.start()  # its workers, on kopf's event loop
        # what the kernel gives the build sandbox, said in the log and the metrics: a child process
        # that takes a moment (seconds on a busy node), so it waits until kopf has started (its
        # liveness endpoint answers) rather than compete with it for the CPU
        probe = threading.Timer(SANDBOX_PROBE_DELAY, memo.runtime.ports.probe_sandbox)
        probe.daemon = True
        probe.start()
        logger.info("flowstore operator started: %s%s", memo.settings,
                    f"; shard: only FlowStorages and StoredFlows matching {str(selector)!r}" if selector else "")

    @kopf.on.cleanup(id="stop", registry=registry)
    async def stop(memo: kopf.Memo, **_: Any) -> None:
        await memo.runtime.stop()
        memo.runtime.pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ index
    @kopf.index(GROUP, VERSION, STOREDFLOW_PLURAL, id="storedflows_by_storage", registry=registry)
    async def storedflows_by_storage(namespace: str, name: str, meta: kopf.Meta, spec: kopf.Spec,
                                     status: kopf.Status, **_: Any) -> dict[IndexKey, dict[str, Any]]:
        """StoredFlows by (namespace, FlowStorage name): the flow-name conflict check and the
        FlowStorage's ``status.flows`` read it, so neither costs an API call (a LIST per store
        grew with the square of the flow count). kopf fills indexes completely before any
        other handler runs, so no older flow is ever missed. An entry keeps what those two read
        and nothing more (of the Ready condition, its reason): one per StoredFlow, in memory for
        as long as it exists. Async: on the event loop, not a thread hop per event."""
        ready = cond.get_condition(status.get("conditions"), "Ready")
        entry_meta = {"name": name, "creationTimestamp": meta.get("creationTimestamp")}
        if meta.get("deletionTimestamp"):
            entry_meta["deletionTimestamp"] = meta.get("deletionTimestamp")
        return {(namespace, storage_ref(spec)): {
            "metadata": entry_meta,
            "spec": {"storageRef": {"name": storage_ref(spec)}, "flowName": spec.get("flowName")},
            "status": {"flowName": status.get("flowName"), "location": status.get("location"),
                       "conditions": [{"type": "Ready", "reason": ready.get("reason")}] if ready else []},
        }}

    # ------------------------------------------------------------------ the queue and its pokes
    @kopf.on.event(GROUP, VERSION, STOREDFLOW_PLURAL, id="storedflow_changed", registry=registry)
    async def storedflow_changed(type: str, body: kopf.Body, memo: kopf.Memo,
                                 storedflows_by_storage: kopf.Index[IndexKey, dict[str, Any]], **_: Any) -> None:
        """Every event goes to the queue (a new flow is queued); a spec change (generation ahead of
        what status observed) queues its pass; any change may free or take a flow name, so the
        storage and same-named flows are queued too."""
        meta, spec = body.get("metadata", {}), body.get("spec") or {}
        runtime: Runtime = memo.runtime
        namespace, name = meta.get("namespace"), meta.get("name")
        observed = (body.get("status") or {}).get("observedGeneration")
        key = (STOREDFLOW_PLURAL, namespace, name)
        # A generation a pass already read (e.g. the finalizer patch of a new object arriving
        # during its first pass) needs no second pass.
        unseen = meta.get("generation") != observed and (meta.get("generation") or 0) > runtime.seen.get(key, 0)
        runtime.observe(key, body, gone=type == "DELETED", index=storedflows_by_storage)
        if type == "DELETED" or unseen or requested_at(body):
            runtime.poke(key)
            ref, flow_name = storage_ref(spec), spec.get("flowName")
            runtime.poke_flows(namespace, lambda s: s.get("flowName") == flow_name and storage_ref(s) == ref)
        status = body.get("status") or {}
        ready = cond.get_condition(status.get("conditions"), "Ready") or {}
        summary = None if type == "DELETED" or meta.get("deletionTimestamp") else (
            status.get("flowName") or spec.get("flowName"), status.get("location"), ready.get("reason"))
        runtime.flow_changed(key, storage_ref(spec), summary)

    @kopf.on.event(GROUP, VERSION, FLOWSTORAGE_PLURAL, id="flowstorage_changed", registry=registry)
    async def flowstorage_changed(type: str, body: kopf.Body, memo: kopf.Memo,
                                  storedflows_by_storage: kopf.Index[IndexKey, dict[str, Any]], **_: Any) -> None:
        """Every event goes to the queue (a new storage is queued). A FlowStorage created, changed
        or deleted queues itself and every StoredFlow naming it; so does one that a relabel moved
        into or out of this shard (ADDED, DELETED): its flows here then store, or say it is on
        another shard."""
        meta = body.get("metadata", {})
        memo.runtime.ports.flowstorage_seen(dict(body), gone=type == "DELETED")
        key = (FLOWSTORAGE_PLURAL, meta.get("namespace"), meta.get("name"))
        memo.runtime.observe(key, body, gone=type == "DELETED", index=storedflows_by_storage)
        observed = (body.get("status") or {}).get("observedGeneration")
        if type in ("ADDED", "DELETED") or meta.get("generation") != observed or requested_at(body):
            memo.runtime.poke(key)
            memo.runtime.poke_flows(meta.get("namespace"), lambda s: storage_ref(s) == meta.get("name"))

    @kopf.on.event("", "v1", "configmaps", id="configmap_changed", registry=registry)
    async def configmap_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        """A ConfigMap changed: wake the StoredFlows whose source it is."""
        meta = body.get("metadata", {})

        def uses_it(spec: dict[str, Any]) -> bool:
            return bool(((spec.get("source") or {}).get("configMapRef") or {}).get("name") == meta.get("name"))

        memo.runtime.poke_flows(meta.get("namespace"), uses_it)

    # ------------------------------------------------------------------ deletion
    def cleans_up(body: kopf.Body, memo: kopf.Memo, **_: Any) -> bool:
        """Only StoredFlows whose FlowStorage deletes objects carry the finalizer (finalizers.py)."""
        runtime: Runtime | None = memo.get("runtime")
        meta = body.get("metadata") or {}
        seen = runtime.ports.seen_flowstorage(str(meta.get("namespace")), finalizers.storage_of(body)) \
            if runtime is not None else None
        return finalizers.needs_finalizer(body, seen)

    @kopf.on.delete(GROUP, VERSION, STOREDFLOW_PLURAL, id="storedflow_deleted", registry=registry, when=cleans_up)
    async def storedflow_deleted(body: kopf.Body, retry: int, memo: kopf.Memo, logger: logging.Logger,
                                 **_: Any) -> None:
        """Apply the FlowStorage's deletionPolicy; kopf retries a backend outage a bounded
        number of times, then the finalizer is released whatever happens. A pass of the flow
        still running (the queue stopped serving it at deletionTimestamp) ends first, for at
        most DELETE_WAIT seconds, so none of its uploads lands after the cleanup."""
        runtime: Runtime = memo.runtime
        meta = body.get("metadata", {})
        await runtime.finished((STOREDFLOW_PLURAL, meta.get("namespace"), meta.get("name")), DELETE_WAIT)
        outcome = await asyncio.to_thread(delete_stored_flow, dict(body), runtime.ports, attempt=retry,
                                          max_attempts=runtime.settings.delete_retries)
        if outcome.retry_after is not None:
            assert outcome.event is not None
            raise kopf.TemporaryError(outcome.event.message, delay=outcome.retry_after)
        if outcome.event is not None:
            if outcome.event.type == "Warning":
                logger.warning(outcome.event.message)
            else:
                logger.info(outcome.event.message)
            await asyncio.to_thread(runtime.post_event, dict(body), STOREDFLOW_KIND, outcome.event.type,
                                    outcome.event.reason, outcome.event.message)
