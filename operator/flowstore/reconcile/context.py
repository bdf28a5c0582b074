"""What one StoredFlow reconcile knows, step by step, and how it ends Ready.

A :class:`FlowContext` is made once the FlowStorage is resolved (step 1): from then on the
storage's spec is always there, and its storage opened once for the whole pass (its credentials
read once; every later step uses ``ctx.storage``, as Flux's reconcileSource hands its client
down). Later steps fill in the source, the format and the inputs digest. The storage family's
publisher is passed alongside, never held here: the publishers build on this module, not the
other way round (an import-linter contract keeps it).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from typing import Any

from flowstore.api import conditions as cond
from flowstore.api.constants import ConditionType, EventReason, Reason
from flowstore.api.history import History, Revision
from flowstore.api.models import BuildSpec, FlowSpec, StorageSpec
from flowstore.api.seals import Seals
from flowstore.api.status import Artifact, GitPin, ImageRef, Storing, Superseded
from flowstore.artifacts.signing import Signer
from flowstore.reconcile import revisions
from flowstore.reconcile.failures import Failure
from flowstore.reconcile.ports import Event, Outcome, Pending, sha256_of
from flowstore.reconcile.revisions import Stored
from flowstore.reconcile.signatures import sign_status
from flowstore.reconcile.storages import storage_marker
from flowstore.storage import Storage, backend_class

#: how soon after a pass that retired objects due at once the pass that deletes them comes
RETIRED_RECHECK_SECONDS = 1.0


@dataclasses.dataclass
class GitSource:
    """Git-hosted storages: the file the flow is, at the commit its ref resolves to now."""

    path: str
    commit: str
    #: what status.git will record
    pin: GitPin
    #: the recorded digest of the file when the ref still resolves to the pinned commit (commits
    #: are immutable: the file is not read again until something else changed)
    recorded_digest: str | None = None


@dataclasses.dataclass
class FlowContext:
    obj: dict[str, Any]
    spec: FlowSpec
    namespace: str
    name: str
    generation: int | None
    #: the status being built (a copy of the object's)
    status: dict[str, Any]
    fs: dict[str, Any]
    storage_spec: StorageSpec
    #: the storage, opened once in step 1 (``None`` when opening it failed: ``open_failure``)
    opened: Storage | None = None
    #: why the storage could not be opened (e.g. its credentials Secret is missing): raised by
    #: the first step that needs the storage, so the steps before it report first, and a flow
    #: already stored stays Ready while the Secret is gone (agents use their own credentials)
    open_failure: Exception | None = None
    #: the flow's source: one script, or (``bundle``) a bundle of its files
    source: bytes = b""
    bundle: bool = False
    #: one script: the name of its file (the ConfigMap key, the git path's base name, flow.py)
    file_name: str | None = None
    #: a bundle: its entrypoint (``path/to/file.py[:object]``) and how many files it holds
    entrypoint: str | None = None
    file_count: int = 1
    fmt: str = "pickle"
    #: pickle: the versions of the Python, cloudpickle (and prefect) that built it
    versions: dict[str, str] | None = None
    inputs_digest: str = ""
    #: spec.signing's key: ready() signs the statement of what it records (reconcile/signatures.py)
    signer: Signer | None = None
    #: a verified git source: what was verified and by which key (the SourceVerified condition)
    verified_by: str | None = None
    #: Docker: the cosign signature made this pass for an older image ready() is to make current
    #: (a revert or a pin; ``publishers/image.py``), kept out of status until it is current
    image_signature: ImageRef | None = None
    git: GitSource | None = None
    #: the revisions status records (read once, changed as the pass goes: ``reconcile/revisions.py``)
    history: History = dataclasses.field(default_factory=History)
    #: Events of the steps before the end (retention), posted with the end's
    events: list[Event] = dataclasses.field(default_factory=list)
    #: the artifact :meth:`artifact` made this pass (fresh from its storage: ready() seals its revision)
    made: Artifact | None = None
    #: the operator's seals for this StoredFlow's records (``api/seals.py``); None: nothing the
    #: operator records is sealed, so nothing a recorded state addresses is deleted
    seals: Seals | None = None
    #: writes a Reconciling status before anything is built or stored (the operator: a status
    #: patch that must succeed first); None offline
    on_progress: Callable[[dict[str, Any]], None] | None = None

    def progress(self, message: str) -> None:
        """Say (in status) that work is under way, with what ``self.status`` holds now (e.g. the
        ``storing`` record): written before the work starts, so a crash leaves it behind."""
        if self.on_progress is not None:
            status = dict(self.status)
            status["conditions"] = cond.mark_reconciling(self.status.get("conditions"), message, self.generation)
            self.on_progress(status)

    def set_script(self, source: bytes, file_name: str) -> None:
        self.source, self.bundle, self.file_name, self.entrypoint, self.file_count = source, False, file_name, None, 1

    def set_bundle(self, data: bytes, entrypoint: object, file_count: int) -> None:
        self.source, self.bundle, self.file_name = data, True, None
        self.entrypoint, self.file_count = str(entrypoint), file_count

    def __post_init__(self) -> None:
        self.history = revisions.load(self.status, storage=storage_marker(self.storage_spec))

    @property
    def history_limit(self) -> int:
        """spec.revisionHistoryLimit, else the FlowStorage's, else the default."""
        return (self.spec.revision_history_limit or self.storage_spec.revision_history_limit
                or revisions.DEFAULT_HISTORY_LIMIT)

    @property
    def min_age(self) -> float:
        """The FlowStorage's spec.retention.minAge in seconds, else the default."""
        age = self.storage_spec.min_age_seconds
        return revisions.DEFAULT_MIN_AGE_SECONDS if age is None else age

    @property
    def deletes_objects(self) -> bool:
        """Whether flowstore deletes this storage's objects at all (not a git repository's)."""
        return backend_class(self.storage_spec.backend).deletes_objects

    @property
    def storage(self) -> Storage:
        """The FlowStorage's storage, opened in step 1. Raises what opening it raised."""
        if self.opened is None:
            raise self.open_failure or RuntimeError("the storage was not opened")
        return self.opened

    @property
    def uid(self) -> str:
        return str(self.obj["metadata"].get("uid") or "")

    @property
    def build(self) -> BuildSpec | None:
        """Where the flow's code runs at build time: the StoredFlow's spec.build, else its
        FlowStorage's, else None (the operator's sandbox)."""
        return self.spec.build or self.storage_spec.build

    def pending(self, waiting: Pending) -> Outcome:
        """Reconciling while a build runs elsewhere (a builder Job): nothing else changes."""
        status = dict(self.status)
        status["conditions"] = cond.mark_reconciling(self.status.get("conditions"), waiting.message, self.generation)
        return Outcome(status=status, requeue_after=waiting.retry_after)

    @property
    def recorded(self) -> Artifact | None:
        """The artifact status records now."""
        return Artifact.read(self.status)

    def artifact(self, *, location: str, url: str, digest: str, size: int, storage_state: Any = None,
                 source_digest: str | None = None) -> Artifact:
        """The artifact of this reconcile at `location` (:func:`ready` signs it when the storage
        signs); the backend state its storage answered with is sealed (``api/seals.py``)."""
        state = dict(storage_state) if storage_state else None
        self.made = Artifact(
            url=url, digest=digest, size=size, format=self.fmt,
            source_digest=source_digest or sha256_of(self.source), inputs_digest=self.inputs_digest,
            last_update_time=cond.now_iso(), storage_state=state,
            state_seal=self.seals.state(location, state) if self.seals is not None else None,
            file_name=self.file_name if self.fmt == "script" else None,
            entrypoint=self.entrypoint, file_count=self.file_count if self.bundle else None,
            versions=self.versions if self.fmt == "pickle" else None,
        )
        return self.made


def ready(ctx: FlowContext, stored: Stored, events: list[Event], *, uploaded: bool) -> Outcome:
    """Record `stored` as a revision (a new one, or the entry it already is), make the pinned
    revision (spec.pin) or else it current, bound the history, and end Ready: status names the
    current artifact and serializes its storage (enough for an agent to load the flow, never a
    secret). A pin that is not in the history ends Ready=False (PinNotFound), the new revision
    recorded all the same."""
    now = cond.now_iso()
    events = [*ctx.events, *events]
    history = ctx.history
    prior = {e.revision: e for e in history.entries}
    latest = revisions.record(history, stored)
    if ctx.seals is not None:
        # the operator vouches for a revision it made this pass, or one it had recorded (its seal
        # held) that this pass only refreshed from the source; never for what status alone says
        before = prior.get(latest.revision)
        if stored.artifact is ctx.made or (before is not None and ctx.seals.holds_revision(before.to_status(),
                                                                                           before.seal)):
            latest = revisions.seal(history, latest, ctx.seals)
    pin = ctx.spec.pin
    target = revisions.pinned(history, pin) if pin is not None else latest
    made_current = target is not None and revisions.designate(history, target, now)
    if made_current and target is not None and target is not latest and not uploaded:
        events.append(Event("Normal", EventReason.REVERTED, f"Made revision {target.revision} of flow "
                            f"{ctx.spec.flow_name!r} current again ({target.digest[:19]}…; nothing uploaded)"))
    keep = {n for n in (history.current, latest.revision) if n is not None}
    revisions.trim(history, ctx.history_limit, keep=keep, now=now,
                   retire=ctx.storage_spec.deletion_policy == "Delete" and ctx.deletes_objects)
    status = dict(ctx.status)
    status.pop("driftDetected", None)
    Storing.clear(status)  # nothing is under way any more
    Superseded.clear(status)  # read into history.retired (revisions.load)
    current = history.current_entry
    if current is not None:
        _describe_current(ctx, status, current, history.designation)
    history.write(status, latest=latest if pin is not None and target is not None else None)
    # each revision's statement signed (the current one and every retained one): a new key
    # re-signs them all here, a status update; nothing is stored again
    refused: list[int] = []
    resigned = sign_status(status, ctx.obj, ctx.signer, seals=ctx.seals, refused=refused)
    if refused:
        events.append(Event("Warning", EventReason.RECORD_IGNORED, (
            f"Did not sign revision(s) {', '.join(map(str, sorted(refused)))} of status.history: not recorded by this "
            "operator (no valid seal; status may have been written by someone else). Agents that verify signatures "
            "refuse them; store the flow again to replace them")))
    recorded = ctx.recorded
    if resigned and ctx.signer is not None and current is not None and recorded is not None \
            and recorded.revision == current.revision and recorded.designation == history.designation:
        events.append(Event("Normal", EventReason.SIGNED, f"Signed revision {current.revision} of flow "
                            f"{ctx.spec.flow_name!r} (and the {len(history.entries) - 1} retained) with key "
                            f"{ctx.signer.key_id} (nothing stored again)"))
    requeue = ctx.storage_spec.interval_seconds
    waiting = revisions.next_due(history, ctx.min_age, dt.datetime.now(dt.UTC))
    if waiting is not None:  # the pass that deletes what was retired (never this one: status first)
        requeue = min(requeue, max(RETIRED_RECHECK_SECONDS, waiting))
    status["observedGeneration"] = ctx.generation
    conditions = ctx.status.get("conditions")
    if pin is not None and target is None:
        message = (f"spec.pin names {pin.describe()}, which is not in status.history (revisions: "
                   f"{history.describe()}); pin one of those, or remove spec.pin")
        conditions = cond.set_condition(conditions, ConditionType.PINNED, "False", Reason.PIN_NOT_FOUND, message,
                                        ctx.generation)
        failure = Failure(Reason.PIN_NOT_FOUND, message, stalled=True)
        status["conditions"] = cond.mark_failed(conditions, failure.reason, message, ctx.generation, stalled=True)
        return Outcome(status=status, events=[*events, Event("Warning", failure.reason, message)],
                       requeue_after=waiting if waiting is not None else None, failure=failure, uploaded=uploaded)
    assert current is not None
    where = f"commit {current.commit[:12]}: " if current.commit else ""
    if pin is not None:
        conditions = cond.set_condition(
            conditions, ConditionType.PINNED, "True", Reason.REVISION_PINNED,
            f"spec.pin holds revision {current.revision} ({current.digest[:19]}…); the newest is revision "
            f"{latest.revision}", ctx.generation)
        message = f"Pinned to revision {current.revision} ({where}{current.artifact.url})"
    else:
        conditions = cond.remove_condition(conditions, ConditionType.PINNED)
        message = f"Pinned to {where}{current.artifact.url}" if current.commit else f"Stored at {current.artifact.url}"
    status["conditions"] = cond.mark_ready(conditions, message, ctx.generation)
    status["conditions"] = cond.mark_source_verified(status["conditions"], ctx.verified_by, ctx.generation)
    return Outcome(status=status, events=events, requeue_after=requeue, uploaded=uploaded)


def _describe_current(ctx: FlowContext, status: dict[str, Any], current: Revision, designation: int) -> None:
    """Status as agents read it for the current revision: location, artifact, the serialized
    storage with the revision's backend state, and its commit or image."""
    # Opened with its credentials, the storage knows what the spec alone cannot (e.g. Azure's
    # accountURL, from the connection string); to_status() never holds secret values. When it
    # could not be opened (e.g. the Secret is gone): what the spec alone says.
    storage = ctx.opened if ctx.opened is not None else backend_class(ctx.storage_spec.backend).from_config(
        ctx.storage_spec.config)
    artifact = current.as_artifact(designation)
    serialized = storage.to_status()
    serialized["flows"] = {ctx.spec.flow_name: current.location}  # never the (shared, cached) storage's own
    serialized["storedAsScript"] = artifact.format == "script"
    serialized.update(artifact.storage_state or {})
    status.update(location=current.location, storage=serialized, labels=storage.labels, flowName=ctx.spec.flow_name)
    artifact.write(status)
    if current.commit:
        pins = [p for p in (ctx.git.pin if ctx.git is not None else None, GitPin.read(ctx.status)) if p is not None]
        pin = next((p for p in pins if p.commit == current.commit), pins[0] if pins else None)
        # the verification (spec.<backend>.verify) is of the commit it was made for: kept only there
        GitPin(repo=pin.repo if pin else "", path=current.location, ref=pin.ref if pin else "",
               commit=current.commit, url=current.artifact.url,
               verification=pin.verification if pin is not None and pin.commit == current.commit else None
               ).write(status)
    else:
        GitPin.clear(status)
    if current.image_digest:
        state = artifact.storage_state or {}
        # the image's cosign signature (publishers/image.py) is kept while the image is the same
        signed = next((ref for ref in (ImageRef.read(ctx.status), ctx.image_signature)
                       if ref is not None and ref.digest == current.image_digest and ref.signature_tag), None)
        ImageRef(name=current.image_name or str(state.get("imageName") or ""), tag=str(state.get("imageTag") or ""),
                 digest=current.image_digest, path=current.location,
                 signature_tag=signed.signature_tag if signed else None,
                 signature_key_id=signed.signature_key_id if signed else None).write(status)
    else:
        ImageRef.clear(status)
