"""Object stores (Local, S3, GCS, Azure, Webhook): the flow's bytes are uploaded to a location."""

from __future__ import annotations

from flowstore.api.constants import EventReason
from flowstore.controller.reconcile.building import build
from flowstore.controller.reconcile.context import FlowContext, ready
from flowstore.controller.reconcile.ports import Event, Outcome, Ports
from flowstore.controller.reconcile.publishers.base import Publisher
from flowstore.controller.reconcile.storages import open_storage
from flowstore.storage import StorageError


class ObjectStorePublisher(Publisher):
    family = "objects"

    def publish(self, ctx: FlowContext, ports: Ports) -> Outcome:
        """Build, upload to a fresh location (the seed's timestamped key, or spec.key), confirm
        the backend holds exactly these bytes, and only then point status at it: status never
        names a half-written artifact."""
        data = build(ctx, ports)
        storage = open_storage(ports, ctx.namespace, ctx.fs, ctx.storage_spec)
        # A retry of the same inputs reuses the location of the attempt that failed (the put may
        # have landed before the backend or the status write went away): one object, no orphans.
        pending = ports.pending_locations
        earlier = pending.get(ctx.uid)
        if earlier is not None and earlier[0] == ctx.inputs_digest:
            location = earlier[1]
        else:
            location = storage.location_for(ctx.spec.flow_name, key=ctx.spec.key)
            if len(pending) > 4096:
                pending.clear()
            pending[ctx.uid] = (ctx.inputs_digest, location)
        stored = storage.put_bytes(location, data)
        info = storage.stat(location)
        if info is None or info.size != len(data) or (info.sha256 and info.sha256 != stored.sha256):
            raise StorageError(f"{stored.url} did not read back as written; will store again")
        previous = ctx.status.get("location")
        recorded = ctx.recorded
        previous_state = dict(recorded.storage_state or {}) if recorded else {}
        digest = "sha256:" + stored.sha256
        artifact = ctx.artifact(url=stored.url, digest=digest, size=stored.size, storage_state=stored.storage_state)
        drift = ctx.status.pop("driftDetected", None)
        ctx.status.pop("git", None)  # e.g. the flow moved from a git-hosted storage to this one
        verb = f"Stored again (the artifact {drift})" if drift else ("Updated" if previous else "Stored")
        events = [Event("Normal", EventReason.STORED, f"{verb} flow {ctx.spec.flow_name!r} at {stored.url} "
                        f"({stored.size} bytes, {digest[:19]}…)")]
        superseded = previous and (previous != location or previous_state != dict(stored.storage_state))
        if superseded and ctx.storage_spec.deletion_policy == "Delete":
            try:  # the superseded artifact is addressed by its own location and recorded state
                storage.restore_state(previous_state)
                storage.delete(str(previous))
            except StorageError as exc:
                events.append(Event("Warning", EventReason.CLEANUP_FAILED,
                                    f"Could not delete superseded {previous}: {exc}"))
            finally:
                storage.restore_state(stored.storage_state)
        outcome = ready(ctx, ports, location, artifact, events, uploaded=True, opened=storage)
        outcome.built = ctx.fmt == "pickle"
        return outcome
