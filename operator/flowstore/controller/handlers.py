"""kopf handlers: thin. They unpack, hand over to the runtime, and translate for kopf.

- one daemon per FlowStorage and per StoredFlow runs its reconcile loop (runtime.py);
- watch handlers poke loops when something they reference changes (spec, ConfigMap,
  FlowStorage) — in memory, without writing anything to the objects;
- the deletion handler honours ``deletionPolicy`` with bounded retries, then releases the
  finalizer ``flowstore.dev/cleanup`` whatever happens, recording an Event.

``flowstore operator --selector k=v`` (passed as FLOWSTORE_SELECTOR, read here at import, when
the handlers register) limits the loops and the deletion handler to labelled objects, so
several operators can share namespaces. The index and the pokes stay unfiltered: they only
read, and a flow-name conflict or a poke may cross shards.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import kopf
from kubernetes import client, config

from flowstore.api.constants import FINALIZER, FLOWSTORAGE_PLURAL, GROUP, STOREDFLOW_PLURAL, VERSION
from flowstore.api.models import SpecError, StorageSpec
from flowstore.controller.failures import classify
from flowstore.controller.reconcile import requested_at
from flowstore.controller.runtime import Runtime, Settings

# KEY=VALUE[,KEY=VALUE], normalized by the CLI; None: every object.
LABELS: dict[str, str] | None = dict(
    item.split("=", 1) for item in os.environ.get("FLOWSTORE_SELECTOR", "").split(",") if "=" in item
) or None


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="flowstore.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="flowstore.dev", key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING  # kopf's own per-handler events; ours are explicit
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 30
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    api = client.ApiClient()
    memo.runtime = Runtime(api, memo.get("settings") or Settings())
    logger.info("flowstore operator configured: %s%s", memo.runtime.settings,
                f"; only objects labelled {LABELS}" if LABELS else "")


@kopf.on.cleanup()
def shutdown(memo: kopf.Memo, **_: Any) -> None:
    memo.runtime.pool.shutdown(wait=False, cancel_futures=True)


# ---------------------------------------------------------------------- index
@kopf.index(GROUP, VERSION, STOREDFLOW_PLURAL)
def storedflows_by_storage(namespace: str, name: str, meta: kopf.Meta, spec: kopf.Spec,
                           **_: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """StoredFlows by (namespace, FlowStorage name), for the flow-name conflict check. kopf
    fills indexes completely before any daemon starts, so no older flow is ever missed; and
    the check costs no API call (a LIST per store grew with the square of the flow count)."""
    return {(namespace, (spec.get("storageRef") or {}).get("name", "")): {
        "metadata": {"name": name, "creationTimestamp": meta.get("creationTimestamp"),
                     "deletionTimestamp": meta.get("deletionTimestamp")},
        "spec": {"storageRef": dict(spec.get("storageRef") or {}), "flowName": spec.get("flowName")},
    }}


# ---------------------------------------------------------------------- reconcile loops
@kopf.daemon(GROUP, VERSION, STOREDFLOW_PLURAL, cancellation_timeout=10, labels=LABELS)
async def storedflow_loop(name: str, namespace: str, stopped: Any, memo: kopf.Memo, logger: logging.Logger,
                          storedflows_by_storage: kopf.Index[tuple[str, str], dict[str, Any]], **_: Any) -> None:
    await memo.runtime.run_loop(STOREDFLOW_PLURAL, namespace, name, stopped, logger, index=storedflows_by_storage)


@kopf.daemon(GROUP, VERSION, FLOWSTORAGE_PLURAL, cancellation_timeout=10, labels=LABELS)
async def flowstorage_loop(name: str, namespace: str, stopped: Any, memo: kopf.Memo,
                           logger: logging.Logger, **_: Any) -> None:
    await memo.runtime.run_loop(FLOWSTORAGE_PLURAL, namespace, name, stopped, logger)


# ---------------------------------------------------------------------- pokes
@kopf.on.event(GROUP, VERSION, STOREDFLOW_PLURAL)
def storedflow_changed(type: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A spec change (generation ahead of what status observed) or a deletion wakes its loop;
    any change may free or take a flow name, so the storage and same-named flows are woken too."""
    meta, spec = body.get("metadata", {}), body.get("spec") or {}
    runtime: Runtime = memo.runtime
    namespace, name = meta.get("namespace"), meta.get("name")
    observed = (body.get("status") or {}).get("observedGeneration")
    key = (STOREDFLOW_PLURAL, namespace, name)
    # A generation the loop already read (e.g. the finalizer patch of a new object arriving
    # during its first pass) needs no second pass.
    unseen = meta.get("generation") != observed and (meta.get("generation") or 0) > runtime.seen.get(key, 0)
    if type == "DELETED" or unseen or requested_at(body):
        runtime.poke(key)
        storage = (spec.get("storageRef") or {}).get("name")
        runtime.poke_flows(namespace, lambda s: (s.get("storageRef") or {}).get("name") == storage
                           and s.get("flowName") == spec.get("flowName"))
    if type == "DELETED":
        runtime.poke_storage(namespace, (spec.get("storageRef") or {}).get("name", ""))


@kopf.on.event(GROUP, VERSION, FLOWSTORAGE_PLURAL)
def flowstorage_changed(type: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A FlowStorage created, changed or deleted wakes itself and every StoredFlow naming it."""
    meta = body.get("metadata", {})
    observed = (body.get("status") or {}).get("observedGeneration")
    if type == "DELETED" or meta.get("generation") != observed or requested_at(body):
        memo.runtime.poke((FLOWSTORAGE_PLURAL, meta.get("namespace"), meta.get("name")))
        memo.runtime.poke_flows(meta.get("namespace"),
                                lambda s: (s.get("storageRef") or {}).get("name") == meta.get("name"))


@kopf.on.event("", "v1", "configmaps")
def configmap_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A ConfigMap changed: wake the StoredFlows whose source it is."""
    meta = body.get("metadata", {})

    def uses_it(spec: dict[str, Any]) -> bool:
        return bool(((spec.get("source") or {}).get("configMapRef") or {}).get("name") == meta.get("name"))

    memo.runtime.poke_flows(meta.get("namespace"), uses_it)


# ---------------------------------------------------------------------- deletion
@kopf.on.delete(GROUP, VERSION, STOREDFLOW_PLURAL, labels=LABELS)
def storedflow_deleted(body: kopf.Body, name: str, namespace: str, retry: int, memo: kopf.Memo,
                       logger: logging.Logger, **_: Any) -> None:
    """Apply the FlowStorage's deletionPolicy. Backend outages are retried a bounded number of
    times; then the artifact is left in place, a Warning Event says so, and the finalizer is
    released — a deletion never hangs forever."""
    runtime: Runtime = memo.runtime
    status, spec = dict(body.get("status") or {}), dict(body.get("spec") or {})
    location, storage_name = status.get("location"), (spec.get("storageRef") or {}).get("name")
    if not location:
        return
    fs = runtime.ports.get_flowstorage(namespace, storage_name)
    try:
        storage_spec = StorageSpec.parse(fs.get("spec") or {}) if fs else None
    except SpecError:
        storage_spec = None
    if storage_spec is None or storage_spec.deletion_policy != "Delete":
        why = "deletionPolicy is Retain" if storage_spec else f"FlowStorage {storage_name!r} is gone"
        logger.info("keeping %s (%s)", location, why)
        runtime.post_event(dict(body), "StoredFlow", "Normal", "Retained", f"Kept {location} ({why})")
        return
    from flowstore.controller.reconcile import open_storage

    try:
        storage = open_storage(runtime.ports, namespace, fs or {}, storage_spec)
        storage.restore_state((status.get("artifact") or {}).get("storageState"))
        storage.delete(location)
    except Exception as exc:
        failure = classify(exc)
        if failure.stalled or retry >= runtime.settings.delete_retries:
            message = (f"Could not delete {location} ({failure.reason}: {failure.message}); the artifact was "
                       f"left in place and the finalizer released. Delete it by hand if it must go.")
            runtime.post_event(dict(body), "StoredFlow", "Warning", "CleanupFailed", message)
            logger.warning(message)
            return
        raise kopf.TemporaryError(f"deleting {location}: {failure.message}",
                                  delay=min(30.0, 2.0 * 2**retry)) from None
    runtime.post_event(dict(body), "StoredFlow", "Normal", "Deleted", f"Deleted {location} (deletionPolicy: Delete)")

