"""The statuses a reconcile ends in (failed, suspended; ready is the publishers'), the
reconcile-now annotation, and when a stalled resource is looked at again."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flowstore.api import conditions as cond
from flowstore.api.constants import REQUESTED_AT_ANNOTATION, Reason
from flowstore.reconcile.failures import Failure
from flowstore.reconcile.ports import Event, Outcome

# Stalled failures caused by things outside the operator's watches (buckets, credentials,
# Secrets — Secrets are deliberately not watched: that would stream every Secret of the cluster
# into the operator) are rechecked with a doubling delay: RECHECK_FIRST_SECONDS after the
# failure first shows, then about as long again as it has lasted, up to RECHECK_SECONDS (or the
# storage's interval when shorter). A Secret applied in the same bundle as the resource that
# names it, but a moment later, is thus picked up within seconds, and a lasting problem costs
# one read a minute.
RECHECK_FIRST_SECONDS = 2.0
RECHECK_SECONDS = 60.0
RECHECKED = frozenset({Reason.AUTH_FAILED, Reason.BUCKET_NOT_FOUND, Reason.SECRET_NOT_FOUND, Reason.INVALID_SPEC,
                       # labelling a Secret (the operator's opt-in) changes no watched object
                       Reason.SECRET_NOT_ALLOWED,
                       # git-hosted: a push fixes these, and no watch tells us about pushes
                       Reason.REPOSITORY_NOT_FOUND, Reason.REF_NOT_FOUND, Reason.FILE_NOT_FOUND,
                       Reason.VERIFICATION_FAILED})


def recheck_after(conditions: list[dict[str, Any]] | None, reason: str, interval: float) -> float:
    """When to look again at a resource stalled for `reason` (see RECHECK_SECONDS)."""
    lasted = cond.stalled_for(conditions, reason)
    return min(interval, RECHECK_SECONDS, max(RECHECK_FIRST_SECONDS, lasted))


def requested_at(obj: Mapping[str, Any]) -> str | None:
    """The reconcile-now annotation's value when it has not been handled yet."""
    value = ((obj.get("metadata") or {}).get("annotations") or {}).get(REQUESTED_AT_ANNOTATION)
    return value if value and value != (obj.get("status") or {}).get("lastHandledReconcileAt") else None


def mark_handled(obj: Mapping[str, Any], outcome: Outcome) -> Outcome:
    """Echo the reconcile-now annotation in status.lastHandledReconcileAt."""
    value = ((obj.get("metadata") or {}).get("annotations") or {}).get(REQUESTED_AT_ANNOTATION)
    if value:
        outcome.status["lastHandledReconcileAt"] = value
    return outcome


def failed(status: dict[str, Any], generation: int | None, failure: Failure, requeue: float | None) -> Outcome:
    """Ready=False; the last good location and artifact stay recorded and loadable."""
    new = dict(status)
    new.pop("driftDetected", None)
    new["observedGeneration"] = generation
    new["conditions"] = cond.mark_failed(
        status.get("conditions"), failure.reason, failure.message, generation, stalled=failure.stalled
    )
    if failure.reason == Reason.VERIFICATION_FAILED:
        new["conditions"] = cond.mark_unverified(new["conditions"], failure.message, generation)
    event = Event("Warning", failure.reason, failure.message)
    return Outcome(status=new, events=[event], requeue_after=requeue, failure=failure)


def suspended(status: dict[str, Any], generation: int | None, *, storage: str | None = None) -> Outcome:
    """Suspended=True (docs/kstatus.md): nothing is stored or checked. `storage`: the suspension
    is its FlowStorage's, not the object's own."""
    new = dict(status)
    new["observedGeneration"] = generation
    whose = f"FlowStorage {storage!r} has spec.suspend: true" if storage else "spec.suspend is true"
    message = f"Suspended: {whose}; nothing is stored or checked until it is false"
    new["conditions"] = cond.mark_suspended(status.get("conditions"), message, generation)
    return Outcome(status=new)


def status_changed(current: Mapping[str, Any] | None, desired: Mapping[str, Any]) -> bool:
    """True when writing `desired` would change anything but condition timestamps."""
    cur = dict(current or {})
    want = dict(desired)
    cur_conds, want_conds = cur.pop("conditions", None), want.pop("conditions", None)
    return cur != want or cond.without_times(cur_conds) != cond.without_times(want_conds)
