"""A StoredFlow being deleted: apply its FlowStorage's ``deletionPolicy``.

Backend outages are retried a bounded number of times (the caller schedules the retries); then
the artifact is left in place, a Warning Event says so, and the finalizer is released — a
deletion never hangs forever.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from flowstore.api.constants import EventReason
from flowstore.api.models import SpecError, StorageSpec, storage_ref
from flowstore.api.status import Artifact, Storing, Superseded, recorded_location
from flowstore.reconcile.failures import classify
from flowstore.reconcile.ports import Event, Ports
from flowstore.reconcile.storages import open_storage


@dataclasses.dataclass(frozen=True)
class Cleanup:
    """What deleting a StoredFlow decided: the Event to post, and, when the artifact could not
    be deleted yet, how long to wait before trying again (None: done, release the finalizer)."""

    event: Event | None
    retry_after: float | None = None


def delete_stored_flow(obj: dict[str, Any], ports: Ports, *, attempt: int, max_attempts: int) -> Cleanup:
    """Delete the artifact of `obj` under ``deletionPolicy: Delete``; keep it under Retain (or
    when the FlowStorage is gone). `attempt` counts from 0."""
    status, spec = obj.get("status"), dict(obj.get("spec") or {})
    location, storage_name = recorded_location(status), storage_ref(spec)
    artifact = Artifact.read(status)
    current_state = dict(artifact.storage_state or {}) if artifact else {}
    # an interrupted store (status.storing) and a superseded artifact waiting for deletion
    # (status.superseded): objects no status names once this one is gone, whatever the policy.
    # One at the current location is addressed by its own state (a webhook's build response),
    # or not at all: deleting "the flow name" would delete the current artifact.
    storing, superseded = Storing.read(status), Superseded.read(status)
    records: list[tuple[str, Mapping[str, Any] | None]] = \
        ([(storing.location, None)] if storing else []) + \
        ([(superseded.location, superseded.storage_state)] if superseded else [])
    leftovers = [(where, state) for where, state in records
                 if where != location or (state and dict(state) != current_state)]
    if not location and not leftovers:
        return Cleanup(None)
    namespace = obj["metadata"]["namespace"]
    fs = ports.get_flowstorage(namespace, storage_name)
    try:
        storage_spec = StorageSpec.parse(fs.get("spec") or {}) if fs else None
    except SpecError:
        storage_spec = None
    delete = storage_spec is not None and storage_spec.deletion_policy == "Delete"
    if fs is None or storage_spec is None or (not delete and not leftovers):
        why = "deletionPolicy is Retain" if storage_spec else f"FlowStorage {storage_name!r} is gone"
        return Cleanup(Event("Normal", EventReason.RETAINED, f"Kept {location} ({why})") if location else None)
    doomed = leftovers + ([(location, artifact.storage_state if artifact else None)] if delete and location
                          else [])
    try:
        storage = open_storage(ports, namespace, fs, storage_spec)
        for where, state in doomed:
            storage.restore_state(state)
            storage.delete(where)
    except Exception as exc:
        failure = classify(exc)
        if failure.stalled or attempt >= max_attempts:
            return Cleanup(Event("Warning", EventReason.CLEANUP_FAILED,
                                 f"Could not delete {location} ({failure.reason}: {failure.message}); the artifact "
                                 "was left in place and the finalizer released. Delete it by hand if it must go."))
        return Cleanup(Event("Warning", EventReason.CLEANUP_FAILED, f"deleting {location}: {failure.message[:1024]}"),
                       retry_after=min(30.0, 2.0 * 2**attempt))
    if not delete:
        return Cleanup(Event("Normal", EventReason.RETAINED, f"Kept {location} (deletionPolicy is Retain)")
                       if location else None)
    return Cleanup(Event("Normal", EventReason.DELETED, f"Deleted {location} (deletionPolicy: Delete)"))
