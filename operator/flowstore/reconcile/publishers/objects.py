"""Object stores (Local, S3, GCS, Azure, Webhook): the flow's bytes are uploaded to a location.

Crash consistency: before the upload, the location it goes to is recorded in
``status.storing`` (``{inputsDigest, location}``) by a status write that must succeed first.
A retry of the same inputs — after a failed upload, or after the operator was killed anywhere
between that write and the final status — stores to the same location again (one object per
version, overwritten, never a second one under a new timestamped key). When the inputs changed
meanwhile, the object an interrupted store may have left at the recorded location is deleted
(no status ever named it, so no agent can be using it) before the new location is chosen. Where a
service assigns ids (Webhook), the location does not name that object: the storage finds it by
the interrupted request's idempotency key (``Storage.unrecorded_state``).

Each store is a new revision (``reconcile/revisions.py``): the object stays while its revision
is in ``status.history``; under ``deletionPolicy: Delete`` it is deleted only after its revision
left the history, was recorded in ``status.retired`` by a status write, and
``retention.minAge`` passed (``reconcile/retention.py``). Status never names a deleted object,
and a kill in between leaves the record for the next operator.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from flowstore.api.constants import EventReason
from flowstore.api.history import object_key
from flowstore.api.status import Artifact, GitPin, Storing, recorded_location
from flowstore.reconcile.building import build
from flowstore.reconcile.context import FlowContext, ready
from flowstore.reconcile.ports import Event, Outcome, Pending, Ports
from flowstore.reconcile.publishers.base import Publisher
from flowstore.reconcile.revisions import Stored
from flowstore.storage import Storage, StorageError

log = logging.getLogger(__name__)


class ObjectStorePublisher(Publisher[Storage]):
    family = "objects"
    storage_type = Storage

    def publish(self, ctx: FlowContext, ports: Ports) -> Outcome:
        """Build, claim a location (the seed's timestamped key, or spec.key; the recorded one on a
        retry), upload, confirm the backend holds exactly these bytes (by its answer to the upload,
        or else by reading the object back), and only then point status at it: status never names
        a half-written artifact."""
        data = build(ctx, ports)
        if isinstance(data, Pending):
            return ctx.pending(data)
        storage = self.storage(ctx)
        storing = claim_location(ctx, storage, data)
        location = storing.location
        stored = storage.put_bytes(location, data, idempotency_key=storing.idempotency_key)
        if not stored.verified:  # the service's answer did not prove it: read size and sha256 back
            info = storage.stat(location)
            if info is None or info.size != len(data) or (info.sha256 and info.sha256 != stored.sha256):
                raise StorageError(f"{stored.url} did not read back as written; will store again")
        previous = recorded_location(ctx.status)
        digest = "sha256:" + stored.sha256
        artifact = ctx.artifact(location=location, url=stored.url, digest=digest, size=stored.size,
                                storage_state=stored.storage_state)
        drift = ctx.status.pop("driftDetected", None)
        GitPin.clear(ctx.status)  # e.g. the flow moved from a git-hosted storage to this one
        verb = f"Stored again (the artifact {drift})" if drift else ("Updated" if previous else "Stored")
        events = [Event("Normal", EventReason.STORED, f"{verb} flow {ctx.spec.flow_name!r} at {stored.url} "
                        f"({stored.size} bytes, {digest[:19]}…)")]
        outcome = ready(ctx, Stored(location, artifact), events, uploaded=True)
        outcome.built = ctx.fmt == "pickle"
        return outcome

    def settle(self, ctx: FlowContext) -> list[Event]:
        """Status records the artifact of the current inputs: an interrupted store of other
        inputs (the spec changed back meanwhile) leaves nothing behind."""
        if interrupted(ctx) is not None:
            storage = self.storage(ctx)
            discard_interrupted(ctx, storage, lambda: recorded_bytes(ctx, storage))
        return []


def interrupted(ctx: FlowContext) -> Storing | None:
    """The ``status.storing`` record of a store of other inputs than the current ones, if any."""
    storing = sealed_storing(ctx)
    return storing if storing is not None and storing.inputs_digest != ctx.inputs_digest else None


def sealed_storing(ctx: FlowContext) -> Storing | None:
    """``status.storing`` when the operator wrote it for this StoredFlow (its seal holds). A record
    it did not write is dropped, with a Warning: nothing is uploaded to, replayed from or deleted
    at a place a status writer chose (``api/seals.py``)."""
    storing = Storing.read(ctx.status)
    if storing is None or (ctx.seals is not None and ctx.seals.holds_storing(
            storing.inputs_digest, storing.location, storing.idempotency_key, storing.seal)):
        return storing
    Storing.clear(ctx.status)
    ctx.events.append(Event("Warning", EventReason.RECORD_IGNORED, (
        f"Ignored status.storing (location {storing.location!r}): it carries no seal of this operator (status may "
        "have been written by someone else, or before flowstore sealed its records); nothing was uploaded, "
        "replayed or deleted there")[:1024]))
    return None


def recorded_bytes(ctx: FlowContext, storage: Storage) -> bytes:
    """The bytes of the artifact status records (the version status wants)."""
    location, artifact = recorded_location(ctx.status), ctx.recorded
    if location is None or artifact is None:
        raise StorageError("status records no artifact")
    storage.restore_state(artifact.storage_state)
    return storage.get_bytes(location)


def claim_location(ctx: FlowContext, storage: Storage, data: bytes) -> Storing:
    """Where this store of `data` goes, and its idempotency key, recorded in status before
    anything is uploaded. The key names this store, not just its inputs: a version stored
    again after its object was deleted (changed back to, once it left the history) must not be
    answered with the deleted object by a service that still knows the key."""
    storing = sealed_storing(ctx)
    if storing is None or storing.inputs_digest != ctx.inputs_digest:
        discard_interrupted(ctx, storage, lambda: data)
        location = storage.location_for(ctx.spec.flow_name, key=ctx.spec.key)
        # per StoredFlow (its uid), version and store: the same inputs stored by two StoredFlows
        # are two objects, and a version stored again is not answered with a deleted object
        key = f"{ctx.uid}/{ctx.inputs_digest}+r{ctx.history.last_revision + 1}" if ctx.uid else \
            f"{ctx.inputs_digest}+r{ctx.history.last_revision + 1}"
        seal = ctx.seals.storing(ctx.inputs_digest, location, key) if ctx.seals is not None else None
        storing = Storing(ctx.inputs_digest, location, key, seal)
        storing.write(ctx.status)
    # else a retry: the same place, the same key
    ctx.progress(f"Storing flow {ctx.spec.flow_name!r} at {storage.url_for(storing.location)}")
    return storing


def discard_interrupted(ctx: FlowContext, storage: Storage, data: Callable[[], bytes]) -> None:
    """Delete what an interrupted store of other inputs may have left at its recorded location,
    unless status names that object (a fixed spec.key: the object there is a recorded revision,
    or its replacement). Where a service assigns ids, the storage finds the object by the
    interrupted request's idempotency key, sending `data` (``Storage.unrecorded_state``). A
    failure is logged and left: the record is dropped either way, since the next store must not
    reuse another version's place."""
    storing = interrupted(ctx)
    if storing is None:
        return
    Storing.clear(ctx.status)
    location = storing.location
    current = ctx.recorded
    try:
        state = storage.unrecorded_state(location, idempotency_key=storing.idempotency_key, data=data)
        if state is None or named(ctx, current, location, state):
            return
        storage.restore_state(state)
        storage.delete(location)
    except StorageError as exc:
        log.warning("could not delete %s, left by an interrupted store of %s/%s: %s",
                    storage.url_for(location), ctx.namespace, ctx.name, exc.message)
    finally:
        storage.restore_state(current.storage_state if current is not None else None)


def named(ctx: FlowContext, current: Artifact | None, location: str, state: Mapping[str, Any]) -> bool:
    """Whether status (its history, retired records and `current` artifact) names the object at
    `location` with backend `state`: by location alone where the state is empty (objects
    addressed by location), else by location and state."""
    recorded = [(e.location, e.artifact.storage_state) for e in ctx.history.entries]
    recorded += [(r.location, r.storage_state) for r in ctx.history.retired]
    if (where := recorded_location(ctx.status)) is not None:
        recorded.append((where, current.storage_state if current is not None else None))
    if not state:
        return any(where == location for where, _ in recorded)
    return object_key(location, state) in {object_key(where, kept) for where, kept in recorded}

