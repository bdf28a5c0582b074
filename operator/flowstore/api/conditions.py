"""kstatus-style conditions as pure functions over plain lists of dicts.

A condition keeps its ``lastTransitionTime`` while its status is unchanged, so writing the
same state twice yields equal status (and the controller then skips the write).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from flowstore.api.constants import ConditionType, Reason

Condition = dict[str, Any]


#: condition messages longer than this keep their start and their end (a script's traceback or a
#: build log's last lines): status must stay small whatever a flow prints
MAX_MESSAGE_CHARS = 8192
_MESSAGE_HEAD = 2048


def bounded(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """`message`, with its middle left out when it is longer than `limit` characters."""
    if len(message) <= limit:
        return message
    marker = "\n… ({} characters left out) …\n"
    head = min(_MESSAGE_HEAD, limit // 4)
    tail = limit - head - len(marker.format(len(message)))
    return message[:head] + marker.format(len(message) - head - tail) + message[-tail:]


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def stalled_for(conditions: list[Condition] | None, reason: str) -> float:
    """Seconds the resource has been Stalled for `reason` (0 when it is not, or for another reason)."""
    stalled = get_condition(conditions, ConditionType.STALLED)
    if not stalled or stalled.get("status") != "True" or stalled.get("reason") != reason:
        return 0.0
    try:
        since = dt.datetime.fromisoformat(str(stalled.get("lastTransitionTime")).replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    return max(0.0, (dt.datetime.now(dt.UTC) - since).total_seconds())


def readable(conditions: object) -> list[Condition]:
    """The conditions of a status as a list of mappings: a status is hostile input (anyone who
    may patch it can write anything), so what is not a list of mappings is not recorded."""
    if not isinstance(conditions, list):
        return []
    return [c for c in conditions if isinstance(c, dict) and isinstance(c.get("type"), str)]


def get_condition(conditions: list[Condition] | None, ctype: str) -> Condition | None:
    return next((c for c in readable(conditions) if c.get("type") == ctype), None)


def set_condition(
    conditions: list[Condition] | None,
    ctype: str,
    status: str,
    reason: str,
    message: str,
    generation: int | None,
    now: str | None = None,
) -> list[Condition]:
    """Return a new list with `ctype` set; other conditions are kept in order."""
    previous = get_condition(conditions, ctype)
    transition = (
        previous["lastTransitionTime"]
        if previous and previous.get("status") == status and previous.get("lastTransitionTime")
        else (now or now_iso())
    )
    new: Condition = {
        "type": ctype,
        "status": status,
        "reason": reason,
        "message": bounded(message),
        "observedGeneration": generation,
        "lastTransitionTime": transition,
    }
    out = [c for c in readable(conditions) if c.get("type") != ctype]
    out.append(new)
    order = {ConditionType.READY: 0, ConditionType.RECONCILING: 1, ConditionType.STALLED: 2,
             ConditionType.SUSPENDED: 3, ConditionType.PINNED: 4}
    return sorted(out, key=lambda c: order.get(c.get("type", ""), 9))


def remove_condition(conditions: list[Condition] | None, ctype: str) -> list[Condition]:
    return [c for c in readable(conditions) if c.get("type") != ctype]


def _without(conditions: list[Condition], *types: str) -> list[Condition]:
    return [c for c in conditions if c.get("type") not in types]


def mark_ready(conditions: list[Condition] | None, message: str, generation: int | None) -> list[Condition]:
    """Ready=True; Reconciling, Stalled and Suspended removed (they are present only while true)."""
    out = set_condition(conditions, ConditionType.READY, "True", Reason.SUCCEEDED, message, generation)
    return _without(out, ConditionType.RECONCILING, ConditionType.STALLED, ConditionType.SUSPENDED)


def mark_suspended(conditions: list[Condition] | None, message: str, generation: int | None) -> list[Condition]:
    """Suspended=True; Reconciling and Stalled removed; Ready kept only while it is True (a flow
    stored before the suspension stays loadable where it was). So kstatus computes Current (a
    suspended object is where it will stay), never InProgress or Failed for ever, and a
    ``kubectl wait --for=condition=Ready`` is not told that a flow never stored is stored."""
    ready = get_condition(conditions, ConditionType.READY)
    out = _without(readable(conditions), ConditionType.RECONCILING, ConditionType.STALLED)
    if not ready or ready.get("status") != "True":
        out = _without(out, ConditionType.READY)
    return set_condition(out, ConditionType.SUSPENDED, "True", Reason.SUSPENDED, message, generation)


def mark_reconciling(conditions: list[Condition] | None, message: str, generation: int | None) -> list[Condition]:
    """Work in progress: Reconciling=True, Ready=Unknown, Stalled removed."""
    out = set_condition(conditions, ConditionType.RECONCILING, "True", Reason.PROGRESSING, message, generation)
    out = set_condition(out, ConditionType.READY, "Unknown", Reason.PROGRESSING, message, generation)
    return _without(out, ConditionType.STALLED, ConditionType.SUSPENDED)


def mark_failed(
    conditions: list[Condition] | None, reason: str, message: str, generation: int | None, *, stalled: bool
) -> list[Condition]:
    """Ready=False with `reason`. `stalled`: a person must act (no retry until something changes);
    otherwise the failure is temporary and Reconciling stays True while retrying."""
    out = _without(set_condition(conditions, ConditionType.READY, "False", reason, message, generation),
                   ConditionType.SUSPENDED)
    if stalled:
        out = set_condition(out, ConditionType.STALLED, "True", reason, message, generation)
        return remove_condition(out, ConditionType.RECONCILING)
    out = set_condition(out, ConditionType.RECONCILING, "True", reason, f"Retrying: {message}", generation)
    return remove_condition(out, ConditionType.STALLED)


def mark_source_verified(conditions: list[Condition] | None, verified_by: str | None,
                         generation: int | None) -> list[Condition]:
    """SourceVerified=True naming what was verified by which key (a verified git source), or no
    SourceVerified at all (the source is not verified)."""
    if verified_by is None:
        return remove_condition(conditions, ConditionType.SOURCE_VERIFIED)
    return set_condition(conditions, ConditionType.SOURCE_VERIFIED, "True", Reason.SUCCEEDED,
                         f"Verified {verified_by}", generation)


def mark_unverified(conditions: list[Condition] | None, message: str, generation: int | None) -> list[Condition]:
    """SourceVerified=False: the source's commit or tag did not verify (Ready says the same)."""
    return set_condition(conditions, ConditionType.SOURCE_VERIFIED, "False", Reason.VERIFICATION_FAILED, message,
                         generation)


def without_times(conditions: list[Condition] | None) -> list[Condition]:
    """Conditions with transition times dropped: for comparing desired with current status."""
    return [{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in readable(conditions)]
