"""The pure reconcile core for StoredFlow and FlowStorage: no kopf, no kubernetes client.

The cluster and the build sandbox are reached through the small :class:`Ports` protocol, so
this module runs the same under the operator, offline from the CLI, and in unit tests.

A StoredFlow is reconciled by an ordered list of steps; each has a one-paragraph contract,
returns early by raising :class:`ReconcileError`, and never performs an upload unless every
input of the artifact changed digest (content addressing):

1. ``resolve_storage``  the referenced FlowStorage exists and its spec parses.
2. ``resolve_source``   the flow's source bytes (inline, ConfigMap key).
3. ``plan``             the inputs digest: source, flow/object name, format, key, storage place.
4. ``up_to_date``       nothing changed (and, when due, the artifact is still there, unchanged):
                        finish with zero uploads and zero script executions.
5. ``check_conflict``   no older StoredFlow stores the same flowName in the same storage.
6. ``build``            script mode: compile-check the bytes; pickle mode: run the script in
                        the sandbox and wrap the pickle in the envelope.
7. ``upload``           put the bytes, then confirm the backend holds exactly them.

Docker storages hold all flows of a FlowStorage in one image: step 7 is ``store_in_image``
(submit the payload to the debounced image builder, then record the image's digest).

Git-hosted storages (GitHub, GitLab, Bitbucket, CodeCommit, Git) are read-only: step 2
resolves the ref to a commit and reads the file there, step 6 checks it, and step 7 is
``pin`` (record the commit and the file's digest) instead of an upload.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol, cast

from flowstore.api import conditions as cond
from flowstore.api.constants import REQUESTED_AT_ANNOTATION, Reason
from flowstore.api.models import FlowSpec, SpecError, StorageSpec
from flowstore.build import envelope, signing
from flowstore.build.keys import slugify
from flowstore.controller.failures import Failure, ReconcileError, classify
from flowstore.controller.images import ImageBuilder
from flowstore.storage import InvalidConfig, NotFound, ObjectInfo, Storage, StorageError, backend_class
from flowstore.storage.git_base import GitHosted, normalize_path

#: bumped when the artifact format changes, so every artifact is rebuilt once
FORMAT_VERSION = "1"


class Ports(Protocol):
    """What the core needs from the world. Implementations: ``kube.KubePorts``, test fakes."""

    def get_flowstorage(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    def get_configmap(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    def list_storedflows(self, namespace: str) -> list[dict[str, Any]]: ...
    def build_pickle(self, source: bytes, *, flow_name: str, object_name: str | None) -> bytes: ...
    def check_script(self, source: bytes) -> None: ...
    def storage_for(self, spec: StorageSpec, credentials: Mapping[str, str] | None, cache_key: str) -> Storage: ...

    #: StoredFlow uid -> (inputs digest, location) of uploads not yet recorded in status, kept
    #: across passes so a retry of the same inputs reuses its location (no orphaned objects)
    pending_locations: dict[Any, tuple[str, str]]
    #: the debounced one-image-per-storage builder (Docker storages)
    images: ImageBuilder


@dataclasses.dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclasses.dataclass
class Outcome:
    """What one reconcile decided: the full desired status, Events to post, and when to run
    again (None: only when something referenced changes)."""

    status: dict[str, Any]
    events: list[Event] = dataclasses.field(default_factory=list)
    requeue_after: float | None = None
    failure: Failure | None = None
    uploaded: bool = False
    built: bool = False


def sha256_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- shared helpers
def read_credentials(ports: Ports, namespace: str, spec: StorageSpec) -> tuple[dict[str, str] | None, str]:
    """The referenced Secret's data (decoded) and a cache key; (None, "") for the SDK default chain."""
    if not spec.secret_name:
        return None, ""
    secret = ports.get_secret(namespace, spec.secret_name)
    if secret is None:
        raise ReconcileError(
            Reason.SECRET_NOT_FOUND,
            f"Secret {spec.secret_name!r} (spec.{spec.backend}.credentialsSecretRef) was not found in "
            f"namespace {namespace!r}; create it or fix the reference.",
            stalled=True,
        )
    data = dict(secret.get("data") or {})
    return data, f"{secret['metadata'].get('uid')}/{secret['metadata'].get('resourceVersion')}"


def read_signing_key(ports: Ports, namespace: str, spec: StorageSpec) -> bytes | None:
    """The HMAC key named by spec.signing.secretRef, or None when signing is off."""
    if spec.signing is None:
        return None
    name, key = spec.signing
    secret = ports.get_secret(namespace, name)
    if secret is None:
        raise ReconcileError(
            Reason.SECRET_NOT_FOUND,
            f"Secret {name!r} (spec.signing.secretRef) was not found in namespace {namespace!r}; create it "
            "or remove spec.signing.", stalled=True)
    value = (secret.get("data") or {}).get(key)
    if not value:
        raise ReconcileError(
            Reason.SECRET_NOT_FOUND,
            f"Secret {name!r} has no key {key!r} (spec.signing.secretRef.key); add the signing key there.",
            stalled=True)
    if len(value) < 16:
        raise SpecError(f"the signing key in Secret {name!r} is shorter than 16 characters; use a random key")
    return str(value).encode("utf-8")


def open_storage(ports: Ports, namespace: str, fs: dict[str, Any], spec: StorageSpec) -> Storage:
    credentials, secret_version = read_credentials(ports, namespace, spec)
    if credentials is None and spec.backend in _TOKEN_BACKENDS:
        # No Secret means anonymous: never the operator's own environment (an agent's fallback),
        # or any FlowStorage in any namespace could read with the operator's token.
        credentials = {}
    if spec.backend == "docker":
        spec, refs_version = resolve_docker_refs(ports, namespace, spec)
        secret_version += "|" + refs_version
    cache_key = json.dumps([fs["metadata"].get("uid"), spec.backend, spec.config, secret_version], sort_keys=True,
                           default=lambda b: hashlib.sha256(b).hexdigest())
    try:
        return ports.storage_for(spec, credentials, cache_key)
    except InvalidConfig as exc:
        where = f" (Secret {spec.secret_name!r} in namespace {namespace!r})" if spec.secret_name else ""
        raise InvalidConfig(f"{exc.message}{where}") from None


def resolve_docker_refs(ports: Ports, namespace: str, spec: StorageSpec) -> tuple[StorageSpec, str]:
    """The docker block names a Dockerfile in a ConfigMap and files in ConfigMaps/Secrets;
    the storage gets their contents. Returns the spec with them filled in and a version key."""
    config = dict(spec.config)
    versions: list[str] = []

    def read(ref: Mapping[str, Any], kind: str, field: str) -> bytes:
        name, key = ref["name"], ref["key"]
        obj = ports.get_configmap(namespace, name) if kind == "ConfigMap" else ports.get_secret(namespace, name)
        if obj is None:
            raise ReconcileError(Reason.SOURCE_NOT_FOUND, f"{kind} {name!r} ({field}) was not found in namespace "
                                 f"{namespace!r}; create it or fix the reference.", stalled=True)
        data, binary = obj.get("data") or {}, obj.get("binaryData") or {}
        versions.append(f"{kind}/{name}@{obj['metadata'].get('resourceVersion')}")
        if key in data:
            return str(data[key]).encode("utf-8")
        if key in binary:
            import base64

            return base64.b64decode(binary[key])
        raise ReconcileError(Reason.SOURCE_NOT_FOUND, f"{kind} {name!r} has no key {key!r} ({field}).", stalled=True)

    dockerfile = config.get("dockerfile")
    if isinstance(dockerfile, Mapping) and dockerfile.get("configMapRef"):
        config["dockerfile"] = read(dockerfile["configMapRef"], "ConfigMap", "spec.docker.dockerfile").decode()
    files: dict[str, bytes] = {}
    for i, item in enumerate(config.get("files") or []):
        if not isinstance(item, Mapping):
            continue
        ref, kind = (item["secretRef"], "Secret") if item.get("secretRef") else (item["configMapRef"], "ConfigMap")
        files[str(item["path"])] = read(ref, kind, f"spec.docker.files[{i}]")
    if config.get("files") is not None:
        config["files"] = files
    tls_ref = config.get("daemonTLSSecretRef")
    if isinstance(tls_ref, Mapping) and tls_ref.get("name"):
        name = str(tls_ref["name"])
        secret = ports.get_secret(namespace, name)
        if secret is None:
            raise ReconcileError(Reason.SOURCE_NOT_FOUND, f"Secret {name!r} (spec.docker.daemonTLSSecretRef) was not "
                                 f"found in namespace {namespace!r}; create it with ca.crt, tls.crt and tls.key.",
                                 stalled=True)
        versions.append(f"Secret/{name}@{secret['metadata'].get('resourceVersion')}")
        config["daemonTLS"] = {key: str(value) for key, value in (secret.get("data") or {}).items()
                               if key in ("ca.crt", "tls.crt", "tls.key")}
    return dataclasses.replace(spec, config=config), ",".join(versions)


#: backends whose credentials are tokens/passwords (their classes fall back to environment
#: variables for agents); S3 and CodeCommit keep the SDK's default chain (IRSA) on purpose
_TOKEN_BACKENDS = {"github", "gitlab", "bitbucket", "git"}


def storage_identity(spec: StorageSpec) -> dict[str, Any]:
    """The part of a storage's configuration that decides *where* artifacts go (not labels)."""
    cls = backend_class(spec.backend)
    ignored = {"labels", "addDefaultLabels", "secrets", "storedAsScript", "clientOptions", "validate", "checkFlow",
               "daemonURL", "daemonTLS", "daemonTLSSecretRef"}
    return {"type": cls.type_name, **{k: v for k, v in sorted(spec.config.items()) if k not in ignored}}


# --------------------------------------------------------------------------- StoredFlow
@dataclasses.dataclass
class FlowContext:
    obj: dict[str, Any]
    spec: FlowSpec
    namespace: str
    name: str
    generation: int | None
    status: dict[str, Any]
    fs: dict[str, Any] | None = None
    storage_spec: StorageSpec | None = None
    source: bytes = b""
    fmt: str = "pickle"
    inputs_digest: str = ""
    signing_key: bytes | None = None
    #: git-hosted storages: the opened storage and what status.git will say
    repo: GitHosted | None = None
    git: dict[str, Any] | None = None
    #: git-hosted: the recorded digest of the file when the ref still resolves to the pinned
    #: commit (commits are immutable: the file is not read again until something else changed)
    source_digest: str | None = None


def is_git_hosted(spec: StorageSpec) -> bool:
    return issubclass(backend_class(spec.backend), GitHosted)


def requested_at(obj: Mapping[str, Any]) -> str | None:
    """The reconcile-now annotation's value when it has not been handled yet."""
    value = ((obj.get("metadata") or {}).get("annotations") or {}).get(REQUESTED_AT_ANNOTATION)
    return value if value and value != (obj.get("status") or {}).get("lastHandledReconcileAt") else None


def _mark_handled(obj: Mapping[str, Any], outcome: Outcome) -> Outcome:
    value = ((obj.get("metadata") or {}).get("annotations") or {}).get(REQUESTED_AT_ANNOTATION)
    if value:
        outcome.status["lastHandledReconcileAt"] = value
    return outcome


def reconcile_stored_flow(
    obj: dict[str, Any],
    ports: Ports,
    *,
    check_drift: bool = False,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    siblings: Callable[[str], list[dict[str, Any]]] | None = None,
) -> Outcome:
    """Bring one StoredFlow to its desired state. Never raises: failures become conditions.

    `siblings(storage_name)` returns the StoredFlows of the namespace that use that storage
    (the operator serves it from an index; default: list them through the ports). A new
    ``flowstore.dev/requested-at`` annotation forces a drift check."""
    check_drift = check_drift or requested_at(obj) is not None
    return _mark_handled(obj, _reconcile_stored_flow(obj, ports, check_drift=check_drift,
                                                     on_progress=on_progress, siblings=siblings))


def _reconcile_stored_flow(
    obj: dict[str, Any],
    ports: Ports,
    *,
    check_drift: bool = False,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    siblings: Callable[[str], list[dict[str, Any]]] | None = None,
) -> Outcome:
    meta = obj["metadata"]
    status = dict(obj.get("status") or {})
    generation = meta.get("generation")
    try:
        spec = FlowSpec.parse(obj.get("spec") or {})
    except SpecError as exc:
        return _failed(status, generation, classify(exc), None)
    ctx = FlowContext(obj, spec, meta["namespace"], meta["name"], generation, status)
    if spec.suspend:
        return Outcome(status=_suspended(status, generation))
    try:
        resolve_storage(ctx, ports)
        assert ctx.storage_spec is not None
        if ctx.storage_spec.suspend:
            return Outcome(status=_suspended(status, generation), requeue_after=None)
        resolve_source(ctx, ports)
        ctx.signing_key = read_signing_key(ports, ctx.namespace, ctx.storage_spec)
        plan(ctx)
        done = up_to_date(ctx, ports, check_drift=check_drift)
        if done is not None:
            return done
        check_conflict(ctx, ports, siblings)
        if ctx.git is not None and ctx.source_digest is not None:  # something besides the file changed
            ctx.source = ctx.repo.read_file(ctx.git["path"], ctx.git["commit"]) if ctx.repo else b""
            ctx.source_digest = None
            plan(ctx)
        if on_progress is not None:
            progress = dict(status)
            progress["conditions"] = cond.mark_reconciling(
                status.get("conditions"), f"Storing flow {spec.flow_name!r}", generation
            )
            on_progress(progress)
        if ctx.storage_spec is not None and ctx.storage_spec.backend == "docker":
            return store_in_image(ctx, ports)
        data = build(ctx, ports)
        if ctx.git is not None:
            return pin(ctx, ports, data)
        return upload(ctx, ports, data)
    except Exception as exc:  # every failure becomes a condition; the operator never crashes
        failure = classify(exc)
        requeue = failure.retry_after if not failure.stalled else None
        if failure.stalled and ctx.storage_spec is not None and failure.reason in _RECHECKED:
            requeue = recheck_after(status.get("conditions"), failure.reason, ctx.storage_spec.interval_seconds)
        return _failed(status, generation, failure, requeue)


# Stalled failures caused by things outside the operator's watches (buckets, credentials,
# Secrets — Secrets are deliberately not watched: that would stream every Secret of the cluster
# into the operator) are rechecked with a doubling delay: RECHECK_FIRST_SECONDS after the
# failure first shows, then about as long again as it has lasted, up to RECHECK_SECONDS (or the
# storage's interval when shorter). A Secret applied in the same bundle as the resource that
# names it, but a moment later, is thus picked up within seconds, and a lasting problem costs
# one read a minute.
RECHECK_FIRST_SECONDS = 2.0
RECHECK_SECONDS = 60.0
_RECHECKED = {Reason.AUTH_FAILED, Reason.BUCKET_NOT_FOUND, Reason.SECRET_NOT_FOUND, Reason.INVALID_SPEC,
              # git-hosted: a push fixes these, and no watch tells us about pushes
              Reason.REPOSITORY_NOT_FOUND, Reason.REF_NOT_FOUND, Reason.FILE_NOT_FOUND}


def recheck_after(conditions: list[dict[str, Any]] | None, reason: str, interval: float) -> float:
    """When to look again at a resource stalled for `reason` (see RECHECK_SECONDS)."""
    lasted = cond.stalled_for(conditions, reason)
    return min(interval, RECHECK_SECONDS, max(RECHECK_FIRST_SECONDS, lasted))


def resolve_storage(ctx: FlowContext, ports: Ports) -> None:
    """Step 1. The FlowStorage named by spec.storageRef must exist in the same namespace; until
    it does the StoredFlow waits (not stalled: creating it is enough, and its watch wakes us)."""
    fs = ports.get_flowstorage(ctx.namespace, ctx.spec.storage_name)
    if fs is None:
        raise ReconcileError(
            Reason.STORAGE_NOT_FOUND,
            f"FlowStorage {ctx.spec.storage_name!r} does not exist in namespace {ctx.namespace!r}; "
            "the flow will be stored as soon as it is created.",
            stalled=False,
            retry_after=60.0,
        )
    ctx.fs = fs
    ctx.storage_spec = StorageSpec.parse(fs.get("spec") or {})
    git_hosted = is_git_hosted(ctx.storage_spec)
    if ctx.spec.source.path is not None and not git_hosted:
        raise SpecError(
            f"spec.source.path is for git-hosted storages, but FlowStorage {ctx.spec.storage_name!r} is "
            f"{ctx.storage_spec.backend!r}; use spec.source.inline or spec.source.configMapRef"
        )
    if git_hosted:
        backend = ctx.storage_spec.backend
        if ctx.spec.source.path is None and (ctx.spec.source.inline is not None or ctx.spec.source.config_map):
            raise SpecError(
                f"FlowStorage {ctx.spec.storage_name!r} is {backend!r}: flows are read from the repository, so "
                f"use spec.source.path (the file in the repository) instead of {ctx.spec.source.describe()}")
        if ctx.spec.stored_as_script is False:
            raise SpecError(f"{backend!r} storages keep flows as scripts in the repository; remove "
                            "spec.storedAsScript: false")


def resolve_source(ctx: FlowContext, ports: Ports) -> None:
    """Step 2. Read the flow's source bytes. A missing ConfigMap or key stalls the StoredFlow
    until the ConfigMap changes (its watch wakes us)."""
    src = ctx.spec.source
    assert ctx.storage_spec is not None and ctx.fs is not None
    if is_git_hosted(ctx.storage_spec):
        resolve_git_source(ctx, ports)
        return
    if src.inline is not None:
        ctx.source = src.inline.encode("utf-8")
        return
    assert src.config_map is not None and src.config_map_key is not None
    cm = ports.get_configmap(ctx.namespace, src.config_map)
    if cm is None:
        raise ReconcileError(
            Reason.SOURCE_NOT_FOUND,
            f"ConfigMap {src.config_map!r} (spec.source.configMapRef) was not found in namespace "
            f"{ctx.namespace!r}; create it or fix the reference.",
            stalled=True,
        )
    data: dict[str, Any] = cm.get("data") or {}
    binary: dict[str, Any] = cm.get("binaryData") or {}
    if src.config_map_key in data:
        ctx.source = str(data[src.config_map_key]).encode("utf-8")
    elif src.config_map_key in binary:
        import base64

        ctx.source = base64.b64decode(binary[src.config_map_key])
    else:
        keys = sorted([*data, *binary])
        raise ReconcileError(
            Reason.SOURCE_NOT_FOUND,
            f"ConfigMap {src.config_map!r} has no key {src.config_map_key!r} (it has: "
            f"{', '.join(keys) or 'no keys'}); fix spec.source.configMapRef.key or the ConfigMap.",
            stalled=True,
        )


def resolve_git_source(ctx: FlowContext, ports: Ports) -> None:
    """Step 2, git-hosted: resolve the ref to a commit and read the flow's file there. A missing
    repository, ref or file stalls the StoredFlow (rechecked at the interval: a push fixes it);
    the last good pinned commit stays recorded."""
    assert ctx.storage_spec is not None and ctx.fs is not None
    # (the operator's ports hand out a counting proxy, so this is a cast, not an isinstance check)
    storage = cast(GitHosted, open_storage(ports, ctx.namespace, ctx.fs, ctx.storage_spec))
    path = ctx.spec.source.path or storage.path
    if not path:
        raise SpecError(f"no flow file: set spec.source.path, or path in FlowStorage {ctx.spec.storage_name!r}")
    path = normalize_path(path)
    commit = storage.resolve_ref()
    pinned = ctx.status.get("git") or {}
    recorded = (ctx.status.get("artifact") or {}).get("sourceDigest")
    if pinned.get("commit") == commit and pinned.get("path") == path and recorded:
        ctx.source_digest = str(recorded)
    else:
        ctx.source = storage.read_file(path, commit)
    ctx.repo = storage
    ctx.git = {"repo": storage.repo_name(), "path": path, "ref": storage.ref or "(default branch)",
               "commit": commit, "url": storage.web_url(path, commit)}


def plan(ctx: FlowContext) -> None:
    """Step 3. Decide the format and the inputs digest: the digest of everything that decides
    the artifact's bytes and place. Equal digests mean nothing needs to be stored."""
    assert ctx.storage_spec is not None
    as_script = ctx.spec.stored_as_script
    if as_script is None:
        as_script = ctx.storage_spec.stored_as_script
    ctx.fmt = "script" if as_script or ctx.git is not None else "pickle"
    inputs = {
        "formatVersion": FORMAT_VERSION,
        "source": ctx.source_digest or sha256_of(ctx.source),
        "flowName": ctx.spec.flow_name,
        "objectName": ctx.spec.object_name,
        "format": ctx.fmt,
        "key": ctx.spec.key,
        "storage": storage_identity(ctx.storage_spec),
        # a new signing key (or none) re-signs: artifacts are stored again with the new signature
        "signingKey": signing.key_id(ctx.signing_key) if ctx.signing_key else None,
        # git-hosted: the file (not the commit: a commit that leaves the file alone changes nothing)
        **({"path": ctx.git["path"], "checkFlow": ctx.storage_spec.config.get("checkFlow", True)}
           if ctx.git is not None else {}),
    }
    ctx.inputs_digest = sha256_of(json.dumps(inputs, sort_keys=True).encode())


def up_to_date(ctx: FlowContext, ports: Ports, *, check_drift: bool) -> Outcome | None:
    """Step 4. When status records an artifact for exactly these inputs, only refresh status
    (labels, observedGeneration). With `check_drift`, first confirm the backend still holds
    the artifact with its recorded digest; a missing or changed artifact is stored again."""
    artifact = ctx.status.get("artifact") or {}
    location = ctx.status.get("location")
    if not location or artifact.get("inputsDigest") != ctx.inputs_digest:
        return None
    ports.pending_locations.pop(ctx.obj["metadata"].get("uid"), None)  # status records it
    events: list[Event] = []
    opened: Storage | None = None
    if check_drift:
        assert ctx.fs is not None and ctx.storage_spec is not None
        storage = opened = open_storage(ports, ctx.namespace, ctx.fs, ctx.storage_spec)
        pinned = (ctx.status.get("git") or {}).get("commit")
        image = ctx.status.get("image") or {}
        if ctx.storage_spec.backend == "docker" and image.get("digest"):
            try:
                held = cast(Any, storage).read_flow(str(image["digest"]), location)
                info: ObjectInfo | None = ObjectInfo(size=len(held), sha256=sha256_of(held).removeprefix("sha256:"))
            except NotFound:
                info = None
            recorded = str(artifact.get("digest", "")).removeprefix("sha256:")
            if info is None or info.sha256 != recorded:
                ctx.status["driftDetected"] = "is missing" if info is None else "has changed"
                return None
            return _ready(ctx, ports, location, artifact, events, uploaded=False, opened=opened)
        if is_git_hosted(ctx.storage_spec) and pinned and requested_at(ctx.obj) is None:
            # A commit's content never changes, and resolving the ref (step 2) already showed the
            # repository is there: the periodic check reads nothing. Only an explicit reconcile-now
            # request reads the pinned file again.
            return _ready(ctx, ports, location, artifact, events, uploaded=False, opened=opened)
        if is_git_hosted(ctx.storage_spec) and pinned:
            try:
                data = cast(GitHosted, storage).read_file(normalize_path(location), pinned)
                info = ObjectInfo(size=len(data), sha256=sha256_of(data).removeprefix("sha256:"))
            except NotFound:
                info = None
        else:
            storage.restore_state(artifact.get("storageState"))
            info = storage.stat(location)
        recorded = str(artifact.get("digest", "")).removeprefix("sha256:")
        if info is None or info.size != artifact.get("size") or (info.sha256 and info.sha256 != recorded):
            what = "is missing" if info is None else "has changed"
            ctx.status["driftDetected"] = what
            return None
    return _ready(ctx, ports, location, artifact, events, uploaded=False, opened=opened)


def check_conflict(ctx: FlowContext, ports: Ports,
                   siblings: Callable[[str], list[dict[str, Any]]] | None = None) -> None:
    """Step 5. The seed's rule: one flow name per storage. The oldest StoredFlow keeps it; a
    newer one naming the same flow in the same FlowStorage stalls with NameConflict."""
    mine = (ctx.obj["metadata"].get("creationTimestamp") or "", ctx.name)
    assert ctx.storage_spec is not None
    single = backend_class(ctx.storage_spec.backend).single_flow
    others = siblings(ctx.spec.storage_name) if siblings else ports.list_storedflows(ctx.namespace)
    for other in others:
        meta = other["metadata"]
        spec = other.get("spec") or {}
        if meta["name"] == ctx.name or meta.get("deletionTimestamp"):
            continue
        if (spec.get("storageRef") or {}).get("name") != ctx.spec.storage_name:
            continue
        if spec.get("flowName") != ctx.spec.flow_name and not single:
            continue
        if single and (meta.get("creationTimestamp") or "", meta["name"]) < mine:
            raise ReconcileError(
                Reason.NAME_CONFLICT,
                f"FlowStorage {ctx.spec.storage_name!r} holds one flow only and StoredFlow {meta['name']!r} "
                "already stores it; use a FlowStorage per flow for this backend.",
                stalled=True,
            )
        if (meta.get("creationTimestamp") or "", meta["name"]) < mine:
            raise ReconcileError(
                Reason.NAME_CONFLICT,
                f"StoredFlow {meta['name']!r} already stores a flow named {ctx.spec.flow_name!r} in "
                f"FlowStorage {ctx.spec.storage_name!r}; flow names are unique per storage. Rename "
                "spec.flowName or use another FlowStorage.",
                stalled=True,
            )


def build(ctx: FlowContext, ports: Ports) -> bytes:
    """Step 6. Script mode stores the source bytes after a syntax check, never executing them.
    Pickle mode runs the script in the sandbox (separate process, scrubbed environment,
    timeout, memory cap) and wraps the pickled flow in the seed's envelope."""
    if ctx.git is not None:
        ports.check_script(ctx.source)
        if ctx.storage_spec is not None and ctx.storage_spec.config.get("checkFlow", True):
            # the flow object must exist: the same sandboxed loader as pickle builds; the pickle
            # itself is discarded (agents read the file at the pinned commit)
            ports.build_pickle(ctx.source, flow_name=ctx.spec.flow_name, object_name=ctx.spec.object_name)
        return ctx.source
    if ctx.fmt == "script":
        ports.check_script(ctx.source)
        return ctx.source
    pickled = ports.build_pickle(ctx.source, flow_name=ctx.spec.flow_name, object_name=ctx.spec.object_name)
    return envelope.wrap(pickled)


def upload(ctx: FlowContext, ports: Ports, data: bytes) -> Outcome:
    """Step 7. Upload to a fresh location (the seed's timestamped key, or spec.key), confirm the
    backend holds exactly these bytes, and only then point status at it: status never names a
    half-written artifact."""
    assert ctx.fs is not None and ctx.storage_spec is not None
    storage = open_storage(ports, ctx.namespace, ctx.fs, ctx.storage_spec)
    # A retry of the same inputs reuses the location of the attempt that failed (the put may
    # have landed before the backend or the status write went away): one object, no orphans.
    pending = ports.pending_locations
    uid = ctx.obj["metadata"].get("uid")
    earlier = pending.get(uid)
    if earlier is not None and earlier[0] == ctx.inputs_digest:
        location = earlier[1]
    else:
        location = storage.location_for(ctx.spec.flow_name, key=ctx.spec.key)
        if len(pending) > 4096:
            pending.clear()
        pending[uid] = (ctx.inputs_digest, location)
    stored = storage.put_bytes(location, data)
    info = storage.stat(location)
    if info is None or info.size != len(data) or (info.sha256 and info.sha256 != stored.sha256):
        raise StorageError(f"{stored.url} did not read back as written; will store again")
    previous = ctx.status.get("location")
    previous_state = (ctx.status.get("artifact") or {}).get("storageState") or {}
    artifact = {
        "url": stored.url,
        "digest": "sha256:" + stored.sha256,
        "size": stored.size,
        "format": ctx.fmt,
        "sourceDigest": sha256_of(ctx.source),
        "inputsDigest": ctx.inputs_digest,
        "lastUpdateTime": cond.now_iso(),
    }
    if stored.storage_state:
        artifact["storageState"] = dict(stored.storage_state)
    if ctx.signing_key:
        artifact["signature"] = signing.sign(ctx.signing_key, ctx.spec.flow_name, str(artifact["digest"]))
    drift = ctx.status.pop("driftDetected", None)
    ctx.status.pop("git", None)  # e.g. the flow moved from a git-hosted storage to this one
    verb = f"Stored again (the artifact {drift})" if drift else ("Updated" if previous else "Stored")
    digest = "sha256:" + stored.sha256
    events = [Event("Normal", "Stored", f"{verb} flow {ctx.spec.flow_name!r} at {stored.url} ({stored.size} bytes, "
                    f"{digest[:19]}…)")]
    superseded = previous and (previous != location or previous_state != dict(stored.storage_state))
    if superseded and ctx.storage_spec.deletion_policy == "Delete":
        try:  # the superseded artifact is addressed by its own location and recorded state
            storage.restore_state(previous_state)
            storage.delete(str(previous))
        except StorageError as exc:
            events.append(Event("Warning", "CleanupFailed", f"Could not delete superseded {previous}: {exc}"))
        finally:
            storage.restore_state(stored.storage_state)
    outcome = _ready(ctx, ports, location, artifact, events, uploaded=True, opened=storage)
    outcome.built = ctx.fmt == "pickle"
    return outcome


def store_in_image(ctx: FlowContext, ports: Ports) -> Outcome:
    """Step 7, Docker: the flow goes into its storage's one image. The first pass builds the
    payload (sandbox) and submits it to the debounced image builder; later passes find the
    built image and record it. Until then the StoredFlow is Reconciling ("building image")."""
    from flowstore.storage.docker import ImageFlow

    assert ctx.fs is not None and ctx.storage_spec is not None
    storage = cast(Any, open_storage(ports, ctx.namespace, ctx.fs, ctx.storage_spec))
    batch_key = (ctx.namespace, ctx.spec.storage_name, ctx.fs["metadata"].get("uid"))
    job = ports.images.lookup(batch_key, ctx.spec.flow_name, ctx.inputs_digest)
    if job is None:
        data = build(ctx, ports)
        # the file's extension tells the image's healthcheck and agents the format (.py: script)
        ext = "py" if ctx.fmt == "script" else "prefect"
        location = storage.location_for(ctx.spec.flow_name, key=ctx.spec.key) if ctx.spec.key \
            else f"{storage.flow_directory}/flows/{slugify(ctx.spec.flow_name)}.{ext}"
        flow = ImageFlow(name=ctx.spec.flow_name, location=location, data=data)
        namespace, storage_name = ctx.namespace, ctx.spec.storage_name

        def others(names: set[str]) -> list[Any]:
            return image_siblings(ports, storage, namespace, storage_name, exclude=names)

        job = ports.images.submit(batch_key, storage, flow, ctx.inputs_digest,
                                  waiter=("storedflows", ctx.namespace, ctx.name), others=others)
    if not job.done.is_set():
        status = dict(ctx.status)
        status["conditions"] = cond.mark_reconciling(
            ctx.status.get("conditions"), f"Building the image of FlowStorage {ctx.spec.storage_name!r} with flow "
            f"{ctx.spec.flow_name!r}", ctx.generation)
        return Outcome(status=status, requeue_after=2.0)
    if job.error is not None:
        job.reported = True
        raise job.error
    built, flow = job.result, job.payload
    digest = sha256_of(flow.data)
    artifact = {
        "url": f"{built.name}@{built.digest}",
        "digest": digest,
        "size": len(flow.data),
        "format": ctx.fmt,
        "sourceDigest": sha256_of(ctx.source) if ctx.source else digest,
        "inputsDigest": ctx.inputs_digest,
        "lastUpdateTime": cond.now_iso(),
        "storageState": {"imageName": built.name, "imageTag": built.tag, "imageDigest": built.digest},
    }
    if ctx.signing_key:
        artifact["signature"] = signing.sign(ctx.signing_key, ctx.spec.flow_name, digest)
    previous = (ctx.status.get("image") or {}).get("digest")
    ctx.status.pop("driftDetected", None)
    ctx.status.pop("git", None)
    ctx.status["image"] = {"name": built.name, "tag": built.tag, "digest": built.digest, "path": flow.location}
    verb = "Moved" if previous and previous != built.digest else "Stored"
    events = [Event("Normal", "Stored", f"{verb} flow {ctx.spec.flow_name!r} in image {built.name}:{built.tag} "
                    f"({built.digest[:19]}…) at {flow.location}")]
    outcome = _ready(ctx, ports, flow.location, artifact, events, uploaded=True, opened=storage)
    outcome.built = ctx.fmt == "pickle"
    return outcome


def image_siblings(ports: Ports, storage: Any, namespace: str, storage_name: str, *,
                   exclude: set[str]) -> list[Any]:
    """The other flows of a Docker storage, for its next image: each read back from the image
    its status records (so nothing is rebuilt) and checked against its recorded digest."""
    from flowstore.storage.docker import ImageFlow

    flows = []
    for other in ports.list_storedflows(namespace):
        spec, status = other.get("spec") or {}, other.get("status") or {}
        name = status.get("flowName") or spec.get("flowName")
        image = status.get("image") or {}
        if (spec.get("storageRef") or {}).get("name") != storage_name or other["metadata"].get("deletionTimestamp"):
            continue
        if name in exclude or not image.get("digest") or not status.get("location"):
            continue
        if image.get("name") != getattr(storage, "image_repository", image.get("name")):
            continue  # in another repository (the storage changed): it is being rebuilt anyway
        try:
            data = storage.read_flow(str(image["digest"]), str(status["location"]))
        except StorageError as exc:
            logging.getLogger(__name__).warning("flow %r left out of the next image: %s", name, exc.message)
            continue
        if sha256_of(data) != (status.get("artifact") or {}).get("digest"):
            logging.getLogger(__name__).warning("flow %r left out of the next image: digest mismatch", name)
            continue
        flows.append(ImageFlow(name=str(name), location=str(status["location"]), data=data))
    return flows


def pin(ctx: FlowContext, ports: Ports, data: bytes) -> Outcome:
    """Step 7, git-hosted: nothing is uploaded. Record the commit and the file's digest; agents
    read the file at exactly that commit and verify it."""
    assert ctx.git is not None and ctx.repo is not None
    commit, path = ctx.git["commit"], ctx.git["path"]
    digest = sha256_of(data)
    artifact = {
        "url": ctx.git["url"],
        "digest": digest,
        "size": len(data),
        "format": "script",
        "sourceDigest": digest,
        "inputsDigest": ctx.inputs_digest,
        "lastUpdateTime": cond.now_iso(),
        "storageState": ctx.repo.pinned_state(commit),
    }
    if ctx.signing_key:
        artifact["signature"] = signing.sign(ctx.signing_key, ctx.spec.flow_name, digest)
    previous = (ctx.status.get("git") or {}).get("commit")
    ctx.status.pop("driftDetected", None)
    verb = f"Moved flow {ctx.spec.flow_name!r} from commit {previous[:12]} to" if previous and previous != commit \
        else f"Pinned flow {ctx.spec.flow_name!r} to"
    events = [Event("Normal", "Pinned", f"{verb} commit {commit[:12]} of {ctx.git['repo']} ({path}, {len(data)} "
                    f"bytes, {digest[:19]}…)")]
    ctx.status["git"] = dict(ctx.git)
    outcome = _ready(ctx, ports, path, artifact, events, uploaded=False, opened=ctx.repo)
    outcome.built = bool(ctx.storage_spec and ctx.storage_spec.config.get("checkFlow", True))
    return outcome


def _ready(ctx: FlowContext, ports: Ports, location: str, artifact: dict[str, Any], events: list[Event], *,
           uploaded: bool, opened: Storage | None = None) -> Outcome:
    assert ctx.storage_spec is not None and ctx.fs is not None
    if opened is None:
        try:
            opened = open_storage(ports, ctx.namespace, ctx.fs, ctx.storage_spec)
        except Exception:  # e.g. the Secret is gone: what the spec alone says
            opened = None
    # Opened with its credentials, the storage knows what the spec alone cannot (e.g. Azure's
    # accountURL, from the connection string); serialize() never holds secret values.
    storage = opened if opened is not None else backend_class(ctx.storage_spec.backend).from_config(
        ctx.storage_spec.config)
    serialized = storage.serialize()
    serialized["flows"] = {ctx.spec.flow_name: location}  # never the (shared, cached) storage's own
    serialized["storedAsScript"] = ctx.fmt == "script"
    serialized.update(artifact.get("storageState") or {})
    status = dict(ctx.status)
    status.pop("driftDetected", None)
    status.update(
        observedGeneration=ctx.generation,
        location=location,
        artifact=artifact,
        storage=serialized,
        labels=storage.labels,
        flowName=ctx.spec.flow_name,
    )
    pinned = (status.get("git") or {}).get("commit")
    message = f"Pinned to commit {pinned[:12]}: {artifact['url']}" if pinned and "git" in status \
        else f"Stored at {artifact['url']}"
    status["conditions"] = cond.mark_ready(ctx.status.get("conditions"), message, ctx.generation)
    return Outcome(
        status=status,
        events=events,
        requeue_after=ctx.storage_spec.interval_seconds,
        uploaded=uploaded,
    )


def _failed(status: dict[str, Any], generation: int | None, failure: Failure, requeue: float | None) -> Outcome:
    """Ready=False; the last good location and artifact stay recorded and loadable."""
    new = dict(status)
    new.pop("driftDetected", None)
    new["observedGeneration"] = generation
    new["conditions"] = cond.mark_failed(
        status.get("conditions"), failure.reason, failure.message, generation, stalled=failure.stalled
    )
    event = Event("Warning", failure.reason, failure.message)
    return Outcome(status=new, events=[event], requeue_after=requeue, failure=failure)


def _suspended(status: dict[str, Any], generation: int | None) -> dict[str, Any]:
    new = dict(status)
    new["observedGeneration"] = generation
    conds = cond.remove_condition(status.get("conditions"), "Reconciling")
    ready = cond.get_condition(conds, "Ready")
    message = "Suspended: spec.suspend is true; nothing is stored or checked until it is false"
    new["conditions"] = cond.set_condition(
        conds, "Ready", ready["status"] if ready else "Unknown", Reason.SUSPENDED, message, generation
    )
    return new


# --------------------------------------------------------------------------- FlowStorage
def reconcile_flow_storage(obj: dict[str, Any], ports: Ports) -> Outcome:
    return _mark_handled(obj, _reconcile_flow_storage(obj, ports))


def _reconcile_flow_storage(obj: dict[str, Any], ports: Ports) -> Outcome:
    """Check a FlowStorage: the spec parses, its credentials resolve, and its bucket/directory is
    reachable (the seed's healthcheck); publish the serialized storage, labels, and
    ``status.flows`` (flow name -> location) from the StoredFlows that are Ready in it."""
    meta = obj["metadata"]
    namespace, generation = meta["namespace"], meta.get("generation")
    status = dict(obj.get("status") or {})
    try:
        spec = StorageSpec.parse(obj.get("spec") or {})
    except SpecError as exc:
        return _failed(status, generation, classify(exc), None)
    flows: dict[str, str] = {}
    for sf in ports.list_storedflows(namespace):
        sf_spec, sf_status = sf.get("spec") or {}, sf.get("status") or {}
        if sf.get("metadata", {}).get("deletionTimestamp"):
            continue
        if (sf_spec.get("storageRef") or {}).get("name") == meta["name"] and sf_status.get("location"):
            name = sf_status.get("flowName") or sf_spec.get("flowName")
            # A flow whose last change failed keeps its last good location (still loadable); only
            # one that lost its name to an older StoredFlow is left out.
            ready = cond.get_condition(sf_status.get("conditions"), "Ready") or {}
            if name and ready.get("reason") != Reason.NAME_CONFLICT:
                flows[name] = sf_status["location"]
    status["flows"] = flows
    if spec.suspend:
        return Outcome(status=_suspended(status, generation))
    try:
        storage = open_storage(ports, namespace, obj, spec)
        storage.check_container()
    except Exception as exc:
        failure = classify(exc)
        requeue = (failure.retry_after if not failure.stalled
                   else recheck_after(status.get("conditions"), failure.reason, spec.interval_seconds))
        return _failed(status, generation, failure, requeue)
    serialized = storage.serialize()
    serialized.pop("flows", None)
    status.update(observedGeneration=generation, storage=serialized, labels=storage.labels)
    status["conditions"] = cond.mark_ready(
        status.get("conditions"), f"{storage.type_name} storage reachable; {len(flows)} flow(s) stored", generation
    )
    return Outcome(status=status, requeue_after=spec.interval_seconds)


def status_changed(current: Mapping[str, Any] | None, desired: Mapping[str, Any]) -> bool:
    """True when writing `desired` would change anything but condition timestamps."""
    cur = dict(current or {})
    want = dict(desired)
    cur_conds, want_conds = cur.pop("conditions", None), want.pop("conditions", None)
    return cur != want or cond.without_times(cur_conds) != cond.without_times(want_conds)
