"""A StoredFlow being deleted: apply its FlowStorage's ``deletionPolicy``.

Under Delete, every object the StoredFlow still holds goes: the current revision's, those of its
history, and those waiting in ``status.retired`` (each family its own way:
``Publisher.delete_revision``). Under Retain all of them stay. Whatever the policy, what an
interrupted store left (``status.storing``, never named by any revision) goes too.

Backend outages are retried a bounded number of times (the caller schedules the retries); then
the artifacts are left in place, a Warning Event says so, and the finalizer is released — a
deletion never hangs forever.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from flowstore.api.constants import EventReason
from flowstore.api.history import History, Retired, object_key
from flowstore.api.models import SpecError, StorageSpec, storage_ref
from flowstore.api.seals import Seals, seals_for
from flowstore.api.status import Artifact, Storing, recorded_location
from flowstore.reconcile import revisions
from flowstore.reconcile.failures import classify
from flowstore.reconcile.ports import Event, Ports
from flowstore.reconcile.publishers import publisher_for
from flowstore.reconcile.publishers.base import RetireScope
from flowstore.reconcile.storages import open_storage, storage_marker
from flowstore.storage import Storage, StorageError


@dataclasses.dataclass(frozen=True)
class Cleanup:
    """What deleting a StoredFlow decided: the Event to post, and, when the artifact could not
    be deleted yet, how long to wait before trying again (None: done, release the finalizer)."""

    event: Event | None
    retry_after: float | None = None


def held(history: History, storing: Storing | None, seals: Seals | None) -> tuple[list[Retired], Storing | None]:
    """(the objects a status's `history` names: current, history, retired, each object once; the
    store under way `storing`, when the operator recorded it: its seal holds)."""
    named: dict[str, Retired] = {}
    for entry in history.entries:
        named.setdefault(entry.object_key(), Retired.of(entry, entry.superseded_at or ""))
    for record in history.retired:
        named.setdefault(record.object_key(), record)
    if storing is not None and (seals is None or not seals.holds_storing(
            storing.inputs_digest, storing.location, storing.idempotency_key, storing.seal)):
        storing = None  # not the operator's record: nothing is deleted or replayed for it
    return list(named.values()), storing


def left_by(storage: Storage, storing: Storing | None, named: list[Retired], seals: Seals | None,
            recorded: Callable[[], bytes]) -> list[Retired]:
    """What the interrupted store `storing` left, as records to delete: the object at its location
    where a location names one (and no revision names that place); where a service assigns ids
    (Webhook), the object it answers the interrupted request's idempotency key with, sending the
    `recorded` artifact's bytes (``Storage.unrecorded_state``) — unless a revision names it."""
    if storing is None or seals is None:
        return []
    location = storing.location
    if storage.location_names_object:
        return [Retired(location=location, superseded_at="")] if all(r.location != location for r in named) else []
    state = storage.unrecorded_state(location, idempotency_key=storing.idempotency_key, data=recorded)
    if not state or object_key(location, state) in {r.object_key() for r in named}:
        return []
    return [Retired(location=location, superseded_at="", storage_state=state, state_seal=seals.state(location, state))]


def recorded_bytes(storage: Storage, status: Any) -> bytes:
    """The bytes of the artifact `status` records (what a replayed build request sends)."""
    artifact, location = Artifact.read(status), recorded_location(status)
    if artifact is None or location is None:
        raise StorageError("status records no artifact to send with the interrupted store's idempotency key")
    storage.restore_state(artifact.storage_state)
    return storage.get_bytes(location)


def delete_stored_flow(obj: dict[str, Any], ports: Ports, *, attempt: int, max_attempts: int) -> Cleanup:
    """Delete the artifacts of `obj` under ``deletionPolicy: Delete``; keep them under Retain (or
    when the FlowStorage is gone). `attempt` counts from 0."""
    status, spec = obj.get("status"), dict(obj.get("spec") or {})
    location, storage_name = recorded_location(status), storage_ref(spec)
    recorded, storing = revisions.load(status), Storing.read(status)
    if not recorded.entries and not recorded.retired and storing is None:
        return Cleanup(None)  # nothing to delete: no read of the FlowStorage
    namespace = obj["metadata"]["namespace"]
    fs = ports.get_flowstorage(namespace, storage_name)
    try:
        storage_spec = StorageSpec.parse(fs.get("spec") or {}) if fs else None
    except SpecError:
        storage_spec = None
    seals = seals_for(ports.record_key, obj, storage_marker(storage_spec)) \
        if ports.record_key and storage_spec is not None else None
    named, storing = held(recorded, storing, seals)
    if not named and storing is None:
        return Cleanup(None)
    delete = storage_spec is not None and storage_spec.deletion_policy == "Delete"
    what = location or (named[0].location if named else storing.location if storing else "")
    kept = f"{what}" + (f" and {len(named) - 1} more revision(s)" if len(named) > 1 else "")
    if fs is None or storage_spec is None or (not delete and storing is None):
        why = "deletionPolicy is Retain" if storage_spec else f"FlowStorage {storage_name!r} is gone"
        return Cleanup(Event("Normal", EventReason.RETAINED, f"Kept {kept} ({why})") if named else None)
    artifact = Artifact.read(status)
    scope = RetireScope(ports=ports, namespace=namespace, name=obj["metadata"]["name"], storage_name=storage_name,
                        current_state=artifact.storage_state if artifact else None,
                        flow_name=str(spec.get("flowName") or ""), key=spec.get("key") or None,
                        seals=seals)
    left: list[str] = []
    try:
        storage = open_storage(ports, namespace, fs, storage_spec)
        publisher = publisher_for(storage_spec)
        leftovers: list[Retired] = []
        try:
            leftovers = left_by(storage, storing, named, seals, lambda: recorded_bytes(storage, status))
        except StorageError as exc:
            if exc.retryable:
                raise
            left.append(f"what an interrupted store of {storing.location if storing else what} made (not found: "
                        f"{exc.message[:200]})")
        finally:
            storage.restore_state(scope.current_state)
        for record in leftovers + (named if delete else []):
            stayed = publisher.delete_revision(storage, record, scope)
            if stayed:
                left.append(f"{record.location} ({stayed})")
    except Exception as exc:
        failure = classify(exc)
        if failure.stalled or attempt >= max_attempts:
            return Cleanup(Event("Warning", EventReason.CLEANUP_FAILED,
                                 f"Could not delete {kept} ({failure.reason}: {failure.message}); the artifacts "
                                 "were left in place and the finalizer released. Delete them by hand if they must "
                                 "go."))
        return Cleanup(Event("Warning", EventReason.CLEANUP_FAILED, f"deleting {kept}: {failure.message[:1024]}"),
                       retry_after=min(30.0, 2.0 * 2**attempt))
    if not delete:
        return Cleanup(Event("Normal", EventReason.RETAINED, f"Kept {kept} (deletionPolicy is Retain)")
                       if named else None)
    if left:
        return Cleanup(Event("Warning", EventReason.CLEANUP_FAILED, f"Deleted {kept} (deletionPolicy: Delete) but "
                             f"{len(left)} object(s) stayed: {'; '.join(left)[:800]}"))
    return Cleanup(Event("Normal", EventReason.DELETED, f"Deleted {kept} (deletionPolicy: Delete)"))
