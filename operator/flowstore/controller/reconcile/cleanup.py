"""A StoredFlow being deleted: apply its FlowStorage's ``deletionPolicy``.

Backend outages are retried a bounded number of times (the caller schedules the retries); then
the artifact is left in place, a Warning Event says so, and the finalizer is released — a
deletion never hangs forever.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from flowstore.api.constants import EventReason
from flowstore.api.models import SpecError, StorageSpec, storage_ref
from flowstore.api.status import Artifact
from flowstore.controller.failures import classify
from flowstore.controller.reconcile.ports import Event, Ports
from flowstore.controller.reconcile.storages import open_storage


@dataclasses.dataclass(frozen=True)
class Cleanup:
    """What deleting a StoredFlow decided: the Event to post, and, when the artifact could not
    be deleted yet, how long to wait before trying again (None: done, release the finalizer)."""

    event: Event | None
    retry_after: float | None = None


def delete_stored_flow(obj: dict[str, Any], ports: Ports, *, attempt: int, max_attempts: int) -> Cleanup:
    """Delete the artifact of `obj` under ``deletionPolicy: Delete``; keep it under Retain (or
    when the FlowStorage is gone). `attempt` counts from 0."""
    status, spec = dict(obj.get("status") or {}), dict(obj.get("spec") or {})
    location, storage_name = status.get("location"), storage_ref(spec)
    if not location:
        return Cleanup(None)
    namespace = obj["metadata"]["namespace"]
    fs = ports.get_flowstorage(namespace, storage_name)
    try:
        storage_spec = StorageSpec.parse(fs.get("spec") or {}) if fs else None
    except SpecError:
        storage_spec = None
    if fs is None or storage_spec is None or storage_spec.deletion_policy != "Delete":
        why = "deletionPolicy is Retain" if storage_spec else f"FlowStorage {storage_name!r} is gone"
        return Cleanup(Event("Normal", EventReason.RETAINED, f"Kept {location} ({why})"))
    try:
        storage = open_storage(ports, namespace, fs, storage_spec)
        artifact = Artifact.from_status(status.get("artifact"))
        storage.restore_state(artifact.storage_state if artifact else None)
        storage.delete(location)
    except Exception as exc:
        failure = classify(exc)
        if failure.stalled or attempt >= max_attempts:
            return Cleanup(Event("Warning", EventReason.CLEANUP_FAILED,
                                 f"Could not delete {location} ({failure.reason}: {failure.message}); the artifact "
                                 "was left in place and the finalizer released. Delete it by hand if it must go."))
        return Cleanup(Event("Warning", EventReason.CLEANUP_FAILED, f"deleting {location}: {failure.message}"),
                       retry_after=min(30.0, 2.0 * 2**attempt))
    return Cleanup(Event("Normal", EventReason.DELETED, f"Deleted {location} (deletionPolicy: Delete)"))
