"""Deleting objects of revisions (docs/revisions.md): those ``status.retired`` records once
``retention.minAge`` has passed, and, when a StoredFlow is deleted under ``deletionPolicy:
Delete``, every one it still holds.

Crash consistency: an object is retired (recorded in status) by one pass's status write, and
deleted by a later pass, which reads that record from the object: status first, then the
delete. A kill after the delete leaves the record, and deleting again counts as done (already
gone). An object a revision of the history still names (a fixed spec.key, a webhook's flow name
with the same response), the current one, or one a store under way is writing (its location,
where a location names one object) is never deleted:
its record is dropped. Each family deletes its own way (``Publisher.delete_revision``): objects
by location, Docker image manifests no other StoredFlow of the storage names, git nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from flowstore.api.constants import EventReason
from flowstore.api.history import Retired, object_key
from flowstore.api.status import Storing
from flowstore.reconcile.context import FlowContext
from flowstore.reconcile.ports import Event, Ports
from flowstore.reconcile.publishers.base import Publisher, RetireScope
from flowstore.reconcile.revisions import due, in_use
from flowstore.storage import StorageError

log = logging.getLogger(__name__)


def retain(ctx: FlowContext, publisher: Publisher[Any], ports: Ports) -> None:
    """Step 1b. Delete the retired objects whose minAge has passed and drop their records
    (``ctx.history``); a failure that may pass (the backend is down) keeps the record for the
    next pass, any other is a Warning Event and the record is dropped. Under Retain (the policy
    changed since) nothing is deleted and the records go. Needs the storage: when it could not
    be opened, everything waits."""
    history = ctx.history
    if not history.retired:
        return
    if ctx.storage_spec.deletion_policy != "Delete" or not ctx.deletes_objects:
        history.retired = []
        return
    if ctx.opened is None:
        return
    storing = Storing.read(ctx.status)
    recorded = ctx.recorded
    keep = in_use(history, extra=(object_key(storing.location, None),) if storing else ())
    storage = publisher.storage(ctx)
    scope = RetireScope(ports=ports, namespace=ctx.namespace, name=ctx.name, storage_name=ctx.spec.storage_name,
                        current_state=recorded.storage_state if recorded else None, keep=frozenset(keep),
                        flow_name=ctx.spec.flow_name, key=ctx.spec.key, seals=ctx.seals)
    now = dt.datetime.now(dt.UTC)
    # a store under way writes its location: where that names one object, a record of it is not
    # deleted (a fixed spec.key); where a service assigns ids, the store makes a new object
    writing = storing.location if storing is not None and storage.location_names_object else None
    for record in due(history, ctx.min_age, now):
        if record.object_key() in keep or record.location == writing:
            history.retired.remove(record)  # still named: nothing to delete
            continue
        problem = delete_one(publisher, storage, record, scope)
        if problem is None or not problem[1]:
            history.retired.remove(record)
        if problem is not None:
            ctx.events.append(Event("Warning", EventReason.CLEANUP_FAILED, problem[0]))


def delete_one(publisher: Publisher[Any], storage: Any, record: Retired,
               scope: RetireScope) -> tuple[str, bool] | None:
    """Delete one object. None when it is gone (or left on purpose); else (what happened, whether
    to try again later)."""
    what = f"revision {record.revision} at {record.location}" if record.revision else record.location
    try:
        left = publisher.delete_revision(storage, record, scope)
    except StorageError as exc:
        return f"Could not delete {what}: {exc.message}", exc.retryable
    if left:
        return f"Left {what} in place: {left}", False
    log.info("deleted %s of %s/%s", what, scope.namespace, scope.name)
    return None
