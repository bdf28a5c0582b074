"""Revisions in the reconcile core (docs/revisions.md): what one pass stored becomes a revision, the
pin (or else the newest) is made current, the history is bounded, and what leaves it under
``deletionPolicy: Delete`` is retired — recorded in ``status.retired`` for deletion once
``retention.minAge`` has passed since it stopped being current.

Pure: these functions change a :class:`~flowstore.api.history.History` in memory; the deletions
themselves are the publishers' (``reconcile/retention.py``), always in a later pass than the one
that retired the object, so status names an object as retired before it is deleted.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from typing import Any

from flowstore.api.history import History, Retired, Revision, object_key
from flowstore.api.models import Pin
from flowstore.api.seals import Seals
from flowstore.api.status import Artifact, GitPin, ImageRef, Superseded, recorded_location

#: spec.revisionHistoryLimit when neither the StoredFlow nor its FlowStorage sets one
DEFAULT_HISTORY_LIMIT = 10
#: FlowStorage spec.retention.minAge when unset: how long an object that stopped being current
#: is kept at least (an agent that read the old status and is mid-download still gets its bytes)
DEFAULT_MIN_AGE_SECONDS = 600.0


@dataclasses.dataclass(frozen=True)
class Stored:
    """What a publisher stored, or found stored, for the current inputs: a revision to be."""

    location: str
    artifact: Artifact
    commit: str | None = None
    image_name: str | None = None
    image_digest: str | None = None

    @classmethod
    def of(cls, entry: Revision) -> Stored:
        return cls(entry.location, entry.artifact, entry.commit, entry.image_name, entry.image_digest)


def load(status: Mapping[str, Any] | None, *, storage: str | None = None) -> History:
    """The revisions `status` records; a status written before revisions existed becomes one:
    its artifact revision 1 (nothing is uploaded), and a ``status.superseded`` record a retired
    object (deleted as every retired one is). `storage` (``storages.storage_marker``): where the
    StoredFlow's FlowStorage puts artifacts now; a history recorded in another place (the flow
    moved to another FlowStorage, or its bucket changed) is forgotten — its objects are left
    where they are, never deleted through a storage that does not hold them — and numbering goes
    on from lastRevision."""
    history = History.read(status)
    legacy = history.storage is None and not history.entries and history.current is None
    if storage is not None and history.storage not in (None, storage):
        history.entries, history.retired, history.current = [], [], None
    if storage is not None:
        history.storage = storage
    artifact, location = Artifact.read(status), recorded_location(status)
    if legacy and artifact is not None and location is not None:
        git, image = GitPin.read(status), ImageRef.read(status)
        history.last_revision += 1
        entry = Revision(revision=history.last_revision, location=location,
                         artifact=dataclasses.replace(artifact, revision=history.last_revision),
                         commit=git.commit if git else None, image_name=image.name if image else None,
                         image_digest=image.digest if image else None)
        history.entries, history.current, history.designation = [entry], entry.revision, 1
    superseded = Superseded.read(status)
    if superseded is not None and legacy and all(
            r.object_key() != object_key(superseded.location, superseded.storage_state) for r in history.retired):
        # the old mechanism deleted it a second after the swap: due at once
        history.retired.append(Retired(location=superseded.location, storage_state=superseded.storage_state,
                                       superseded_at=artifact.last_update_time if artifact else "",
                                       state_seal=superseded.state_seal))
    return history


def record(history: History, stored: Stored) -> Revision:
    """The entry for `stored`: the one that already names the same object with the same bytes
    (updated with what this pass knows: inputs, signature, file details; its number and storedAt
    kept), else a new revision at the top. A new revision stored over an object that earlier
    entries name (a fixed spec.key) replaces them: their bytes are gone."""
    key = object_key(stored.location, stored.artifact.storage_state)
    for i, entry in enumerate(history.entries):
        if entry.object_key() == key and entry.digest == stored.artifact.digest:
            updated = dataclasses.replace(
                entry, artifact=dataclasses.replace(stored.artifact, revision=entry.revision,
                                                    last_update_time=entry.stored_at, designation=None),
                commit=stored.commit or entry.commit, image_name=stored.image_name or entry.image_name,
                image_digest=stored.image_digest or entry.image_digest)
            history.entries[i] = updated
            return updated
    history.last_revision += 1
    entry = Revision(revision=history.last_revision, location=stored.location,
                     artifact=dataclasses.replace(stored.artifact, revision=history.last_revision, designation=None),
                     commit=stored.commit, image_name=stored.image_name, image_digest=stored.image_digest)
    history.entries = [entry] + [e for e in history.entries if e.object_key() != key]
    return entry


def seal(history: History, entry: Revision, seals: Seals) -> Revision:
    """`entry` with the operator's seal over what it now says (``api/seals.py``), in its place."""
    sealed = dataclasses.replace(entry, seal=seals.revision(entry.to_status()))
    history.entries = [sealed if e.revision == entry.revision else e for e in history.entries]
    return sealed


def pinned(history: History, pin: Pin) -> Revision | None:
    """The entry spec.pin names, if it is in the history."""
    return history.find(revision=pin.revision, digest=pin.digest)


def designate(history: History, target: Revision, now: str) -> bool:
    """Make `target` current: the revision current until now gets its supersededAt, `target`
    moves to the top, the designation counter grows. False when it already was current."""
    if history.current == target.revision:
        return False
    entries = []
    for entry in history.entries:
        if entry.revision == target.revision:
            continue
        if entry.revision == history.current and not entry.superseded_at:
            entry = dataclasses.replace(entry, superseded_at=now)
        entries.append(entry)
    history.entries = [dataclasses.replace(target, superseded_at=None), *entries]
    history.current = target.revision
    history.designation += 1
    return True


def trim(history: History, limit: int, *, keep: set[int], retire: bool, now: str) -> list[Revision]:
    """Bound the history to `limit` entries (plus those in `keep`: the current, the pinned, the
    newest recorded, whatever their place). Entries that leave it are retired when `retire`
    (deletionPolicy Delete, on a storage whose objects flowstore deletes) and no kept entry names
    their object; returns the entries that left."""
    kept: list[Revision] = []
    left: list[Revision] = []
    for entry in history.entries:
        (kept if len(kept) < limit or entry.revision in keep else left).append(entry)
    history.entries = kept
    if retire:
        named = {e.object_key() for e in kept} | {r.object_key() for r in history.retired}
        for entry in left:
            if entry.object_key() not in named:
                history.retired.append(Retired.of(entry, now))
                named.add(entry.object_key())
    return left


def due(history: History, min_age: float, now: dt.datetime) -> list[Retired]:
    """Retired objects whose minAge has passed (an unreadable time counts as long past)."""
    return [r for r in history.retired if seconds_since(r.superseded_at, now) >= min_age]


def next_due(history: History, min_age: float, now: dt.datetime) -> float | None:
    """Seconds until the next retired object is due (0 when one is), None when none waits."""
    waits = [max(0.0, min_age - seconds_since(r.superseded_at, now)) for r in history.retired]
    return min(waits) if waits else None


def seconds_since(when: str, now: dt.datetime) -> float:
    try:
        then = dt.datetime.fromisoformat(when.replace("Z", "+00:00"))
    except ValueError:
        return float("inf")
    if then.tzinfo is None:
        return float("inf")
    return (now - then).total_seconds()


def in_use(history: History, *, extra: tuple[str, ...] = ()) -> set[str]:
    """Object keys the status still names (history entries), and `extra` ones."""
    return {e.object_key() for e in history.entries} | set(extra)
