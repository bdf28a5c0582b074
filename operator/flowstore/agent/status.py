"""A StoredFlow as an agent reads it: the object from the API, parsed into a typed view before
anything else looks at it.

Whoever may write ``storedflows/status`` is not the tenant who wrote the spec, so every field is
checked for its type and shape here, once, and a bad one is a :class:`StatusError` naming the
field — never a TypeError or AttributeError somewhere downstream. What the status says about
*where* the flow lives is only believed after :mod:`flowstore.agent.trust` compared it with what
the agent trusts; this module only says whether it is well-formed.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from flowstore.agent.errors import FlowNotAvailable, StatusError

#: formats this agent knows how to load
FORMATS = ("pickle", "script", "bundle")
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
#: no string an agent reads from status is longer (a location, a URL, a file name)
MAX_TEXT = 4096


@dataclasses.dataclass(frozen=True)
class ArtifactView:
    """``status.artifact``: what was stored and how to verify it."""

    digest: str  # sha256:<64 hex>
    size: int
    format: str  # one of FORMATS
    url: str
    signature: str | None
    file_name: str | None
    entrypoint: str | None


@dataclasses.dataclass(frozen=True)
class StoredFlowView:
    """A StoredFlow, as far as an agent needs it, every field checked for its type."""

    namespace: str
    name: str
    #: metadata.uid as the API server gave it ("" when absent): a signed statement names it
    uid: str
    #: spec.storageRef.name (the tenant's word: the status writer cannot change the spec)
    storage_ref: str | None
    #: spec.key: the location the tenant chose, if any
    key: str | None
    #: spec.objectName: the variable holding the flow, if the tenant named it
    object_name: str | None
    flow_name: str
    location: str
    artifact: ArtifactView
    #: status.storage as written: hostile until :func:`flowstore.agent.trust.agent_storage` filtered it
    storage: Mapping[str, Any]
    git_commit: str | None
    #: the whole status, for ``flowstore locate``
    status: Mapping[str, Any]

    @property
    def what(self) -> str:
        return f"StoredFlow {self.namespace}/{self.name}"

    @property
    def storage_type(self) -> str:
        return str(self.storage["type"])


def parse(obj: Any, *, namespace: str, name: str) -> StoredFlowView:
    """The typed view of the StoredFlow object `obj` (what the API returned for `namespace`/`name`).
    FlowNotAvailable when it was never stored; StatusError when a field is not what the operator
    writes."""
    what = f"StoredFlow {namespace}/{name}"
    if not isinstance(obj, Mapping):
        raise StatusError(f"{what}: the API returned {type(obj).__name__}, not an object")
    spec = _mapping(obj.get("spec"), what, "spec")
    status = _mapping(obj.get("status"), what, "status")
    meta = _mapping(obj.get("metadata"), what, "metadata")
    if not status.get("location") or not status.get("artifact") or not status.get("storage"):
        raise FlowNotAvailable(f"{what} has not been stored yet; see "
                               f"`kubectl describe storedflow {name} -n {namespace}`")
    storage_ref = _mapping(spec.get("storageRef"), what, "spec.storageRef")
    artifact = _mapping(status["artifact"], what, "status.artifact")
    storage = _mapping(status["storage"], what, "status.storage")
    git = _mapping(status.get("git"), what, "status.git")
    storage_type = storage.get("type")
    if not isinstance(storage_type, str) or not storage_type:
        raise _bad(what, "status.storage.type", storage_type, "a storage type (S3, Local, Git, …)")
    if "__version__" in storage:
        raise _bad(what, "status.storage", "__version__", "the operator's camelCase storage document "
                   "(Storage.to_status), not the seed's serialized form")
    return StoredFlowView(
        namespace=namespace, name=name,
        uid=_text(meta.get("uid"), what, "metadata.uid", optional=True) or "",
        storage_ref=_text(storage_ref.get("name"), what, "spec.storageRef.name", optional=True),
        key=_text(spec.get("key"), what, "spec.key", optional=True),
        object_name=_text(spec.get("objectName"), what, "spec.objectName", optional=True),
        flow_name=_text(status.get("flowName", ""), what, "status.flowName", empty=True) or "",
        location=_text(status["location"], what, "status.location") or "",
        artifact=_artifact(artifact, what),
        storage=storage,
        git_commit=_text(git.get("commit"), what, "status.git.commit", optional=True),
        status=status,
    )


def _artifact(doc: Mapping[str, Any], what: str) -> ArtifactView:
    digest = doc.get("digest")
    if not isinstance(digest, str) or not DIGEST.match(digest):
        raise _bad(what, "status.artifact.digest", digest,
                   "a sha256 digest (sha256: and 64 hex digits); refusing to load what cannot be verified")
    size = doc.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise _bad(what, "status.artifact.size", size, "the artifact's size in bytes (a whole number)")
    fmt = doc.get("format")
    if fmt not in FORMATS:
        if isinstance(fmt, str) and fmt:
            raise StatusError(f"{what} has an artifact of format {fmt[:40]!r}; this agent knows "
                              f"{', '.join(FORMATS)}: upgrade flowstore on the agent")
        raise _bad(what, "status.artifact.format", fmt, f"one of {', '.join(FORMATS)}")
    return ArtifactView(
        digest=digest, size=size, format=str(fmt),
        url=_text(doc.get("url", ""), what, "status.artifact.url", empty=True) or "",
        signature=_text(doc.get("signature"), what, "status.artifact.signature", optional=True),
        file_name=_text(doc.get("fileName"), what, "status.artifact.fileName", optional=True),
        entrypoint=_text(doc.get("entrypoint"), what, "status.artifact.entrypoint", optional=True),
    )


def _mapping(value: Any, what: str, field: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise _bad(what, field, value, "an object")
    return value


def _text(value: Any, what: str, field: str, *, optional: bool = False, empty: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or (not value and not (empty or optional)) or len(value) > MAX_TEXT \
            or "\x00" in value:
        raise _bad(what, field, value, f"text (at most {MAX_TEXT} characters)")
    return value or None if optional else value


def _bad(what: str, field: str, value: Any, expected: str) -> StatusError:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return StatusError(
        f"{what}: {field} is {type(value).__name__} {shown}, not {expected}. The operator does not write that: "
        "the status was edited or written by an incompatible version. Check who may write storedflows/status, "
        "and let the operator store the flow again (kubectl annotate storedflow … "
        "flowstore.dev/requested-at=\"$(date +%s)\" --overwrite)")
