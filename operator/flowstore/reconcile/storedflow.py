"""Reconciling one StoredFlow: an ordered list of steps, each with a one-paragraph contract,
each returning early by raising :class:`ReconcileError`. Nothing is built or uploaded unless
an input of the artifact changed digest (content addressing):

1. ``resolve_storage``  the referenced FlowStorage exists, its spec parses, and its family's
                        publisher accepts this StoredFlow; its storage is opened, once for the
                        whole pass (``FlowContext.storage``).
   ``retain``           retired objects whose retention.minAge passed are deleted
                        (``retention.py``; status recorded them in an earlier pass).
2. ``resolve_source``   the flow's source (the publisher's: inline or ConfigMap; a file at a
                        commit for git-hosted storages).
3. ``plan``             the format and the inputs digest (``planning.py``).
4. ``up_to_date``       a revision of these inputs is recorded (current, or to be made current
                        again: a revert), and, when due, its artifact is still there, unchanged:
                        finish with zero uploads and zero script executions.
5. ``check_conflict``   no older StoredFlow stores the same flowName in the same storage.
6-7. ``publish``        the publisher builds the flow's bytes and stores them: an upload, a
                        layer of the storage's image, or a pinned commit.
Every end that stores (or re-points) goes through ``context.ready``: the revision is recorded,
the pinned one (spec.pin) or the newest made current, the history bounded (``revisions.py``).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable
from typing import Any

from flowstore.api.constants import Reason
from flowstore.api.history import History
from flowstore.api.models import FlowSpec, SpecError, StorageSpec, storage_ref
from flowstore.api.seals import seals_for
from flowstore.api.selectors import SHARD_LABEL, LabelSelector
from flowstore.api.status import Storing
from flowstore.reconcile.context import FlowContext, ready
from flowstore.reconcile.failures import ReconcileError, classify
from flowstore.reconcile.outcomes import (
    RECHECKED,
    failed,
    mark_handled,
    recheck_after,
    requested_at,
    suspended,
)
from flowstore.reconcile.planning import plan
from flowstore.reconcile.ports import Event, Outcome, Ports
from flowstore.reconcile.publishers import Publisher, publisher_for
from flowstore.reconcile.retention import retain
from flowstore.reconcile.revisions import Stored
from flowstore.reconcile.signatures import read_signer
from flowstore.reconcile.storages import storage_marker, try_open_storage
from flowstore.storage import backend_class

Siblings = Callable[[str], list[dict[str, Any]]]


def reconcile_stored_flow(
    obj: dict[str, Any],
    ports: Ports,
    *,
    check_drift: bool = False,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    siblings: Siblings | None = None,
) -> Outcome:
    """Bring one StoredFlow to its desired state. Never raises: failures become conditions.

    `siblings(storage_name)` returns the StoredFlows of the namespace that use that storage
    (the operator serves it from an index; default: list them through the ports). A new
    ``flowstore.dev/requested-at`` annotation forces a drift check. `on_progress` is given a
    Reconciling status before anything is built or stored (``FlowContext.progress``)."""
    check_drift = check_drift or requested_at(obj) is not None
    return mark_handled(obj, _reconcile(obj, ports, check_drift=check_drift, on_progress=on_progress,
                                        siblings=siblings))


def _reconcile(obj: dict[str, Any], ports: Ports, *, check_drift: bool,
               on_progress: Callable[[dict[str, Any]], None] | None, siblings: Siblings | None) -> Outcome:
    meta = obj["metadata"]
    status = dict(obj.get("status") or {})
    generation = meta.get("generation")
    try:
        spec = FlowSpec.parse(obj.get("spec") or {})
    except SpecError as exc:
        return failed(status, generation, classify(exc), None)
    if spec.suspend:
        return suspended(status, generation)
    storage_spec: StorageSpec | None = None
    ctx: FlowContext | None = None
    try:
        fs, storage_spec = resolve_storage(ports, meta["namespace"], spec)
        publisher = publisher_for(storage_spec)
        publisher.check_spec(spec, storage_spec, spec.storage_name)
        if storage_spec.suspend:
            return suspended(status, generation, storage=spec.storage_name)
        opened, open_failure = try_open_storage(ports, meta["namespace"], fs, storage_spec)
        seals = seals_for(ports.record_key, obj, storage_marker(storage_spec)) if ports.record_key else None
        ctx = FlowContext(obj, spec, meta["namespace"], meta["name"], generation, status, fs=fs,
                          storage_spec=storage_spec, opened=opened, open_failure=open_failure,
                          on_progress=on_progress, seals=seals)
        retain(ctx, publisher, ports)
        publisher.resolve_source(ctx, ports)
        ctx.signer = read_signer(ports, ctx.namespace, storage_spec)
        plan(ctx, publisher)
        done = up_to_date(ctx, publisher, check_drift=check_drift)
        if done is not None:
            return done
        check_conflict(ctx, ports, siblings)
        return publisher.publish(ctx, ports)
    except Exception as exc:  # every failure becomes a condition; the operator never crashes
        failure = classify(exc)
        storing = Storing.read(ctx.status) if ctx is not None else None
        if storing is not None:  # a retry of these inputs goes to the same place
            storing.write(status)
        if ctx is not None and ctx.history.retired != History.read(status).retired:
            ctx.history.write_retired(status)  # what retention deleted stays deleted
        requeue = failure.retry_after if not failure.stalled else None
        if failure.stalled and storage_spec is not None and failure.reason in RECHECKED:
            requeue = recheck_after(status.get("conditions"), failure.reason, storage_spec.interval_seconds)
        return failed(status, generation, failure, requeue)


def resolve_storage(ports: Ports, namespace: str, spec: FlowSpec) -> tuple[dict[str, Any], StorageSpec]:
    """Step 1. The FlowStorage named by spec.storageRef must exist in the same namespace; until
    it does the StoredFlow waits (not stalled: creating it is enough, and its watch wakes us).
    It must be in this operator's shard too (stalled until a person labels both alike; a
    FlowStorage relabelled into the shard arrives as a watch event and wakes us).
    (Its family's publisher then checks the StoredFlow's spec: ``Publisher.check_spec``.)"""
    fs = ports.get_flowstorage(namespace, spec.storage_name)
    if fs is None:
        raise ReconcileError(
            Reason.STORAGE_NOT_FOUND,
            f"FlowStorage {spec.storage_name!r} does not exist in namespace {namespace!r} "
            f"({_which_exist(ports.list_flowstorage_names(namespace), spec.storage_name)}); the flow will be "
            "stored as soon as it is created, or fix spec.storageRef.name.",
            stalled=False,
            retry_after=60.0,
        )
    shard = ports.shard()
    if shard and not shard.matches((fs.get("metadata") or {}).get("labels")):
        raise ReconcileError(Reason.STORAGE_ON_OTHER_SHARD, _other_shard(fs, spec.storage_name, shard), stalled=True)
    return fs, StorageSpec.parse(fs.get("spec") or {})


def _other_shard(fs: dict[str, Any], name: str, shard: LabelSelector) -> str:
    """Why a StoredFlow of this shard cannot use a FlowStorage of another, and what to do."""
    labels = (fs.get("metadata") or {}).get("labels") or {}
    value = labels.get(SHARD_LABEL)
    where = f"is labelled {SHARD_LABEL}={value}" if value is not None else f"has no {SHARD_LABEL} label"
    return (f"FlowStorage {name!r} {where}, so another operator's shard serves it; this StoredFlow is served "
            f"by the operator for {str(shard)!r}. Give the StoredFlow and its FlowStorage the same "
            f"{SHARD_LABEL} label (kubectl label storedflow/NAME {SHARD_LABEL}=SHARD --overwrite, or "
            f"{SHARD_LABEL}- for the default shard); the last good location stays meanwhile.")


def _which_exist(names: list[str], wanted: str, *, shown: int = 10) -> str:
    """The FlowStorages a mistyped storageRef could have meant: the closest first."""
    if not names:
        return "it has no FlowStorage"
    close = difflib.get_close_matches(wanted, names, n=1, cutoff=0.6)
    listed = ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")
    return (f"did you mean {close[0]!r}? " if close else "") + f"FlowStorages there: {listed}"


def up_to_date(ctx: FlowContext, publisher: Publisher[Any], *, check_drift: bool) -> Outcome | None:
    """Step 4. When status.history records a revision of exactly these inputs, store nothing:
    refresh status (labels, observedGeneration) — or, when that revision is not current (the
    spec came back to earlier inputs: a revert, or a pin was released), make it current again,
    once the publisher confirmed its artifact is still there. With `check_drift`, the current
    revision is confirmed the same way; a missing or changed artifact is stored again."""
    entry = ctx.history.with_inputs(ctx.inputs_digest)
    if entry is None:
        return None
    events = publisher.settle(ctx)
    current = entry.revision == ctx.history.current
    pinned_elsewhere = ctx.spec.pin is not None
    if (check_drift and current) or (not current and not pinned_elsewhere):
        drift = publisher.verify(ctx, entry)
        if drift is not None:
            ctx.status["driftDetected"] = drift
            return None
    if check_drift and pinned_elsewhere and not current and (pinned := ctx.history.current_entry) is not None:
        drift = publisher.verify(ctx, pinned)
        if drift is not None:  # the pinned artifact is gone: say so (it cannot be stored again)
            events.append(Event("Warning", Reason.ARTIFACT_MISSING, f"The pinned revision {pinned.revision}'s "
                                f"artifact {drift} at {pinned.artifact.url}; agents cannot load it. Pin another "
                                "revision or remove spec.pin"))
    # what the source says of its files (recorded since this version) comes from the source
    artifact = dataclasses.replace(entry.artifact, file_name=ctx.file_name if ctx.fmt == "script" else None,
                                   entrypoint=ctx.entrypoint, file_count=ctx.file_count if ctx.bundle else None)
    stored = dataclasses.replace(Stored.of(entry), artifact=artifact)
    return ready(ctx, stored, events, uploaded=False)


def check_conflict(ctx: FlowContext, ports: Ports, siblings: Siblings | None = None) -> None:
    """Step 5. The seed's rule: one flow name per storage. The oldest StoredFlow keeps it; a
    newer one naming the same flow in the same FlowStorage stalls with NameConflict."""
    mine = (ctx.obj["metadata"].get("creationTimestamp") or "", ctx.name)
    single = backend_class(ctx.storage_spec.backend).single_flow
    others = siblings(ctx.spec.storage_name) if siblings else ports.list_storedflows(ctx.namespace)
    for other in others:
        meta = other["metadata"]
        spec = other.get("spec") or {}
        if meta["name"] == ctx.name or meta.get("deletionTimestamp"):
            continue
        if storage_ref(spec) != ctx.spec.storage_name:
            continue
        if spec.get("flowName") != ctx.spec.flow_name and not single:
            continue
        if single and (meta.get("creationTimestamp") or "", meta["name"]) < mine:
            raise ReconcileError(
                Reason.NAME_CONFLICT,
                f"FlowStorage {ctx.spec.storage_name!r} holds one flow only and StoredFlow {meta['name']!r} "
                "already stores it; use a FlowStorage per flow for this backend.",
                stalled=True,
            )
        if (meta.get("creationTimestamp") or "", meta["name"]) < mine:
            raise ReconcileError(
                Reason.NAME_CONFLICT,
                f"StoredFlow {meta['name']!r} already stores a flow named {ctx.spec.flow_name!r} in "
                f"FlowStorage {ctx.spec.storage_name!r}; flow names are unique per storage. Rename "
                "spec.flowName or use another FlowStorage.",
                stalled=True,
            )
