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
from collections.abc import Callable
from typing import Any

from flowstore.api import conditions as cond
from flowstore.api.constants import EventReason
from flowstore.api.models import BuildSpec, FlowSpec, StorageSpec
from flowstore.api.status import Artifact, GitPin, Storing
from flowstore.artifacts.signing import Signer
from flowstore.reconcile.ports import Event, Outcome, Pending, sha256_of
from flowstore.reconcile.signatures import number_revision, sign_status
from flowstore.storage import Storage, backend_class


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
    git: GitSource | None = None
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

    def artifact(self, *, url: str, digest: str, size: int, storage_state: Any = None,
                 source_digest: str | None = None) -> Artifact:
        """The artifact of this reconcile (:func:`ready` signs it when the storage signs)."""
        return Artifact(
            url=url, digest=digest, size=size, format=self.fmt,
            source_digest=source_digest or sha256_of(self.source), inputs_digest=self.inputs_digest,
            last_update_time=cond.now_iso(), storage_state=dict(storage_state) if storage_state else None,
            file_name=self.file_name if self.fmt == "script" else None,
            entrypoint=self.entrypoint, file_count=self.file_count if self.bundle else None,
            versions=self.versions if self.fmt == "pickle" else None,
        )


def ready(ctx: FlowContext, location: str, artifact: Artifact, events: list[Event], *,
          uploaded: bool) -> Outcome:
    """Ready=True at `location`: status names the artifact and serializes the storage (enough
    for an agent to load the flow, never a secret)."""
    # Opened with its credentials, the storage knows what the spec alone cannot (e.g. Azure's
    # accountURL, from the connection string); to_status() never holds secret values. When it
    # could not be opened (e.g. the Secret is gone): what the spec alone says.
    storage = ctx.opened if ctx.opened is not None else backend_class(ctx.storage_spec.backend).from_config(
        ctx.storage_spec.config)
    serialized = storage.to_status()
    serialized["flows"] = {ctx.spec.flow_name: location}  # never the (shared, cached) storage's own
    serialized["storedAsScript"] = ctx.fmt == "script"
    serialized.update(artifact.storage_state or {})
    status = dict(ctx.status)
    status.pop("driftDetected", None)
    Storing.clear(status)  # nothing is under way any more
    status.update(observedGeneration=ctx.generation, location=location, storage=serialized, labels=storage.labels,
                  flowName=ctx.spec.flow_name)
    artifact.write(status)
    number_revision(ctx.obj.get("status"), status)
    resigned = sign_status(status, ctx.obj, ctx.signer)
    if resigned and ctx.signer is not None and artifact.inputs_digest == (
            ((ctx.obj.get("status") or {}).get("artifact") or {}).get("inputsDigest")):
        events = [*events, Event("Normal", EventReason.SIGNED, f"Signed revision {status['artifact']['revision']} of "
                                 f"flow {ctx.spec.flow_name!r} with key {ctx.signer.key_id} (nothing stored again)")]
    pin = GitPin.read(status)
    message = f"Pinned to commit {pin.commit[:12]}: {artifact.url}" if pin else f"Stored at {artifact.url}"
    status["conditions"] = cond.mark_ready(ctx.status.get("conditions"), message, ctx.generation)
    status["conditions"] = cond.mark_source_verified(status["conditions"], ctx.verified_by, ctx.generation)
    return Outcome(status=status, events=events, requeue_after=ctx.storage_spec.interval_seconds, uploaded=uploaded)
