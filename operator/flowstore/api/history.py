"""A StoredFlow's revisions as status records them (docs/revisions.md): ``status.history`` (newest
first), ``status.lastRevision``, ``status.retired`` and ``status.latest``; and, for agents, the
status as if a given revision were current (:func:`status_for`).

A revision is one artifact the operator stored (or, for git-hosted storages, pinned), numbered
per StoredFlow: numbers only grow and are never reused. An entry carries everything an agent
needs to load that revision without the current status (location, digest, size, format, file
name or entrypoint, versions, the backend state, the signature, the commit or image) and what
retention needs (when it stopped being current). Like every status record (``api/status.py``)
they are parsed as hostile input: an entry that is not readable is not recorded.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any, ClassVar, Self

from flowstore.api.status import Artifact, count, digest, mapping, section, text

#: what agents and tools can rely on: history is at most this long (the CRD bounds the limit)
MAX_HISTORY = 100
#: status.retired is bounded too (it only grows while deletes keep failing): the oldest go
MAX_RETIRED = 100


class RevisionNotFound(LookupError):
    """The revision or digest asked for is not in the StoredFlow's history."""


@dataclasses.dataclass(frozen=True)
class Revision:
    """One entry of ``status.history``."""

    revision: int
    location: str
    #: what was stored (its ``last_update_time`` is when it was stored: ``storedAt``)
    artifact: Artifact
    #: when it stopped being current (absent while current, and for a revision recorded while
    #: a pin kept another current, until it leaves the history)
    superseded_at: str | None = None
    #: git-hosted storages: the commit the revision is pinned to
    commit: str | None = None
    #: Docker storages: the image (``host/repo``) and its manifest digest
    image_name: str | None = None
    image_digest: str | None = None
    #: the operator's seal over this entry (``api/seals.py``): only a sealed entry is signed
    seal: str | None = None

    @property
    def digest(self) -> str:
        return self.artifact.digest

    @property
    def stored_at(self) -> str:
        return self.artifact.last_update_time

    @property
    def inputs_digest(self) -> str:
        return self.artifact.inputs_digest

    def object_key(self) -> str:
        """What identifies the stored object: its location and backend state (two revisions
        with equal keys are the same object, e.g. a fixed spec.key overwritten)."""
        return object_key(self.location, self.artifact.storage_state)

    def to_status(self) -> dict[str, Any]:
        a = self.artifact
        doc: dict[str, Any] = {"revision": self.revision, "digest": a.digest, "size": a.size, "format": a.format,
                               "url": a.url, "location": self.location, "sourceDigest": a.source_digest,
                               "inputsDigest": a.inputs_digest, "storedAt": a.last_update_time}
        if self.superseded_at:
            doc["supersededAt"] = self.superseded_at
        for key, value in (("fileName", a.file_name), ("entrypoint", a.entrypoint), ("signature", a.signature),
                           ("keyId", a.key_id)):
            if value:
                doc[key] = value
        if a.file_count is not None:
            doc["fileCount"] = a.file_count
        if a.versions:
            doc["versions"] = dict(a.versions)
        if a.storage_state:
            doc["storageState"] = dict(a.storage_state)
        if a.state_seal:
            doc["stateSeal"] = a.state_seal
        if self.commit:
            doc["git"] = {"commit": self.commit}
        if self.image_digest:
            doc["image"] = {"name": self.image_name or "", "digest": self.image_digest}
        if self.seal:
            doc["seal"] = self.seal
        return doc

    @classmethod
    def from_status(cls, doc: Any) -> Revision | None:
        """An entry, or None when it is not readable (no revision number, location or digest)."""
        if not isinstance(doc, Mapping):
            return None
        number, location = count(doc, "revision"), text(doc, "location")
        artifact = Artifact.from_status({**doc, "lastUpdateTime": doc.get("storedAt")})
        if not number or location is None or artifact is None:
            return None
        git, image = section(doc, "git") or {}, section(doc, "image") or {}
        return cls(revision=number, location=location, artifact=dataclasses.replace(artifact, revision=number),
                   superseded_at=text(doc, "supersededAt"), commit=text(git, "commit"),
                   image_name=text(image, "name"), image_digest=digest(image, "digest"), seal=text(doc, "seal"))

    def as_artifact(self, designation: int | None = None) -> Artifact:
        """``status.artifact`` while this revision is current."""
        return dataclasses.replace(self.artifact, revision=self.revision, designation=designation)


@dataclasses.dataclass(frozen=True)
class Retired:
    """One entry of ``status.retired``: a revision that left the history under ``deletionPolicy:
    Delete`` and whose object waits for deletion until ``retention.minAge`` passed since it
    stopped being current (so an agent mid-download keeps its bytes). Recorded in status before
    anything is deleted; dropped once deleted."""

    location: str
    superseded_at: str
    storage_state: Mapping[str, Any] | None = None
    revision: int | None = None
    #: the operator's seal over `storage_state` at `location` (``api/seals.py``)
    state_seal: str | None = None

    def object_key(self) -> str:
        return object_key(self.location, self.storage_state)

    def to_status(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"location": self.location, "supersededAt": self.superseded_at}
        if self.revision is not None:
            doc["revision"] = self.revision
        if self.storage_state:
            doc["storageState"] = dict(self.storage_state)
        if self.state_seal:
            doc["stateSeal"] = self.state_seal
        return doc

    @classmethod
    def from_status(cls, doc: Any) -> Retired | None:
        if not isinstance(doc, Mapping):
            return None
        location = text(doc, "location")
        if location is None:
            return None
        return cls(location=location, superseded_at=text(doc, "supersededAt") or "",
                   storage_state=mapping(doc, "storageState"), revision=count(doc, "revision"),
                   state_seal=text(doc, "stateSeal"))

    @classmethod
    def of(cls, entry: Revision, now: str) -> Retired:
        return cls(location=entry.location, superseded_at=entry.superseded_at or now,
                   storage_state=entry.artifact.storage_state, revision=entry.revision,
                   state_seal=entry.artifact.state_seal)


def object_key(location: str, storage_state: Mapping[str, Any] | None) -> str:
    return json.dumps([location, dict(storage_state or {})], sort_keys=True, default=str)


@dataclasses.dataclass
class History:
    """The revision records of one status: ``history`` (newest first: the order revisions were
    last recorded or made current), ``lastRevision`` (the highest number given out),
    ``retired`` and the current ``designation`` (``status.artifact.designation``)."""

    HISTORY: ClassVar[str] = "history"
    LAST_REVISION: ClassVar[str] = "lastRevision"
    RETIRED: ClassVar[str] = "retired"
    LATEST: ClassVar[str] = "latest"
    STORAGE: ClassVar[str] = "historyStorage"

    entries: list[Revision] = dataclasses.field(default_factory=list)
    last_revision: int = 0
    retired: list[Retired] = dataclasses.field(default_factory=list)
    #: the revision status.artifact names, and how many designations made a revision current
    current: int | None = None
    designation: int = 0
    #: which placement (FlowStorage type and where it puts artifacts) the entries are in
    storage: str | None = None

    @classmethod
    def read(cls, status: Mapping[str, Any] | None) -> Self:
        """The records in `status` (unreadable entries left out; duplicates of a revision number
        keep the first)."""
        doc: Mapping[str, Any] = status if isinstance(status, Mapping) else {}
        entries: list[Revision] = []
        raw = doc.get(cls.HISTORY)
        for item in raw[:MAX_HISTORY * 2] if isinstance(raw, list) else []:
            entry = Revision.from_status(item)
            if entry is not None and all(e.revision != entry.revision for e in entries):
                entries.append(entry)
        raw = doc.get(cls.RETIRED)
        retired = [r for r in (Retired.from_status(i) for i in (raw if isinstance(raw, list) else [])) if r]
        artifact = section(doc, Artifact.KEY) or {}
        current = count(artifact, "revision")
        numbers = [e.revision for e in entries] + [r.revision for r in retired if r.revision] + [current or 0]
        return cls(entries=entries, last_revision=max([count(doc, cls.LAST_REVISION) or 0, *numbers]),
                   retired=retired[-MAX_RETIRED:], current=current,
                   designation=count(artifact, "designation") or 0, storage=text(doc, cls.STORAGE))

    def write(self, status: dict[str, Any], latest: Revision | None = None) -> None:
        """Into `status`: history, lastRevision, retired (absent when empty) and latest (only
        when given: while a pin keeps another revision current)."""
        status[self.HISTORY] = [e.to_status() for e in self.entries]
        status[self.LAST_REVISION] = self.last_revision
        if self.storage:
            status[self.STORAGE] = self.storage
        self.write_retired(status)
        if latest is not None:
            status[self.LATEST] = {"revision": latest.revision, "digest": latest.digest}
        else:
            status.pop(self.LATEST, None)

    def write_retired(self, status: dict[str, Any]) -> None:
        """Only ``status.retired`` into `status` (a pass that failed after retention deleted)."""
        if self.retired:
            status[self.RETIRED] = [r.to_status() for r in self.retired[-MAX_RETIRED:]]
        else:
            status.pop(self.RETIRED, None)

    def find(self, *, revision: int | None = None, digest: str | None = None) -> Revision | None:
        """The entry with this number, or (the most recently current one) with this digest."""
        for entry in self.entries:
            if (revision is not None and entry.revision == revision) or (digest is not None and entry.digest == digest):
                return entry
        return None

    def with_inputs(self, inputs_digest: str) -> Revision | None:
        """The most recent entry stored from exactly these inputs (a revert finds it)."""
        return next((e for e in self.entries if e.inputs_digest == inputs_digest), None)

    @property
    def current_entry(self) -> Revision | None:
        return self.find(revision=self.current) if self.current else None

    def describe(self) -> str:
        """The revisions there are, for messages: ``3 (sha256:ab12…, current), 2 (…)``."""
        if not self.entries:
            return "none yet"
        return ", ".join(f"{e.revision} ({e.digest[:19]}…{', current' if e.revision == self.current else ''})"
                         for e in self.entries)


def status_for(status: Mapping[str, Any], *, revision: int | None = None, digest: str | None = None) -> dict[str, Any]:
    """`status` as it would read with the given revision current (for agents loading a revision
    that is not, or no longer, current): its location, artifact, storage state, commit or image.
    Neither given: `status` itself. Raises :class:`RevisionNotFound` naming the revisions there are."""
    if revision is None and digest is None:
        return dict(status)
    history = History.read(status)
    entry = history.find(revision=revision, digest=digest)
    if entry is None:
        asked = f"revision {revision}" if revision is not None else f"digest {digest}"
        raise RevisionNotFound(f"{asked} is not in the StoredFlow's history (revisions: {history.describe()}); "
                               "`flowstore history NAME` lists them")
    return view_for(status, history, entry)


def view_for(status: Mapping[str, Any], history: History, entry: Revision) -> dict[str, Any]:
    """:func:`status_for` with the history already read (``History.read(status)``) and the entry
    found: what signs every entry in one pass reads the history once."""
    view = dict(status)
    storage = dict(section(status, "storage") or {})
    storage.update(entry.artifact.storage_state or {})
    flow_name = text(status, "flowName")
    if flow_name:
        storage["flows"] = {flow_name: entry.location}
    storage["storedAsScript"] = entry.artifact.format == "script"
    view.update(location=entry.location, storage=storage,
                artifact=entry.as_artifact(history.designation if entry.revision == history.current else None)
                .to_status())
    if entry.commit:
        view["git"] = {**(section(status, "git") or {}), "commit": entry.commit, "path": entry.location,
                       "url": entry.artifact.url}
    if entry.image_digest:
        view["image"] = {**(section(status, "image") or {}), "name": entry.image_name, "digest": entry.image_digest,
                         "path": entry.location}
    return view

