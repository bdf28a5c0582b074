"""Agent side: find a StoredFlow, check where it points, download it, verify it, load it.

    from flowstore.client import load_flow
    flow = load_flow("etl-daily", "data")
    older = load_flow("etl-daily", "data", revision=3)   # any revision still in status.history

A StoredFlow's status is hostile input (whoever may write ``storedflows/status`` is not the
tenant who wrote the spec). In this order, and before anything is unpickled or executed:

1. the StoredFlow is read and its status parsed into a typed view (``flowstore.agent.status``):
   a missing or wrong-typed field is a StatusError naming it; no digest, no load (for an older
   revision — ``revision=`` or ``digest=`` — the status as it reads with that entry of
   status.history current: ``flowstore.api.history.status_for``; every later check applies to it
   the same way);
2. with keys — ed25519 public keys (``verify_key=`` or ``FLOWSTORE_VERIFY_KEY``), or the weaker
   shared HMAC key (``signing_key=`` or ``FLOWSTORE_SIGNING_KEY``); set but empty is an error —
   the signed statement of the revision is rebuilt from what the agent asked for and what the
   status says it is about to fetch, and must verify; an older designation than one this agent
   verified is refused unless pinned (an older revision asked for by number or digest is: its
   statement, designation 0 unless current, is verified all the same; ``flowstore.artifacts.
   verified``, docs/security.md). From then on only the signed storage document and location
   are used;
3. where the (signed) status points must be where the agent trusts it to be
   (``flowstore.agent.trust``: the FlowStorage's spec, read from the API, or
   ``FLOWSTORE_TRUSTED_STORAGES``): otherwise UntrustedLocation, and no request carrying the
   agent's credentials is made;
4. the agent cache (``flowstore.artifacts.cache``) serves the digest's bytes if it has them
   (rehashed), else they are downloaded with the agent's own credentials, at most the recorded
   size (and never more than ``FLOWSTORE_MAX_ARTIFACT_BYTES``), and checked against the digest;
5. then loaded: unpickled, run as a script, or imported from the bundle's files (checked
   against its manifest on every use).

Every refusal is one of :data:`AGENT_ERRORS`, with a message saying what to do.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from flowstore import kubeconfig
from flowstore.agent import status as statuses
from flowstore.agent import trust
from flowstore.agent.errors import (
    AgentError,
    FlowNotAvailable,
    StatusError,
    TrustUnavailable,
    UntrustedLocation,
)
from flowstore.agent.status import StoredFlowView
from flowstore.api.backends import backend
from flowstore.api.constants import FLOWSTORAGE_PLURAL, GROUP, STOREDFLOW_PLURAL, VERSION
from flowstore.api.history import RevisionNotFound, status_for
from flowstore.artifacts import loading, verified
from flowstore.artifacts.builder import FlowObjectError
from flowstore.artifacts.bundle import BundleError
from flowstore.artifacts.cache import Cache, CacheError, parse_size
from flowstore.artifacts.flowfiles import IgnoreError
from flowstore.artifacts.loading import ArtifactFormatError
from flowstore.artifacts.signing import KeySource, SignatureError
from flowstore.storage import AuthFailed, StorageError, TemplateValueMissing, from_serialized
from flowstore.storage.base import verify_digest
from flowstore.workload import agent_identity

__all__ = ["AGENT_ERRORS", "Artifact", "FlowNotAvailable", "Located", "StatusError", "TrustUnavailable",
           "UntrustedLocation", "agent_advice", "load_artifact", "load_flow", "locate", "resolve", "storedflow",
           "verify_statement"]

#: everything an agent call raises for a StoredFlow it will not (or cannot) load
AGENT_ERRORS: tuple[type[Exception], ...] = (AgentError, StorageError, BundleError, SignatureError, CacheError,
                                             IgnoreError, ArtifactFormatError, FlowObjectError)
#: the largest artifact an agent downloads, whatever a status records
MAX_ARTIFACT_ENV = "FLOWSTORE_MAX_ARTIFACT_BYTES"
DEFAULT_MAX_ARTIFACT_BYTES = 256 * 2**20
#: the agent's keys, as one argument: one public key, several (a rotation), or None (the environment's)
VerifyKeys = KeySource | list[KeySource] | None


@dataclasses.dataclass(frozen=True)
class Located:
    """A StoredFlow whose status points where the agent trusts: the view, what vouched for it,
    and the storage document the agent builds its storage from (nothing else of the status)."""

    view: StoredFlowView
    trusted: trust.TrustedLocation
    storage_doc: dict[str, Any]
    #: the statement verified for it (None: this agent holds no keys, only the sha256 is checked)
    statement: verified.Verified | None = None


@dataclasses.dataclass(frozen=True)
class Artifact:
    data: bytes
    located: Located
    #: True when this call downloaded it, False when the agent cache had it
    downloaded: bool = True

    @property
    def view(self) -> StoredFlowView:
        return self.located.view

    @property
    def status(self) -> dict[str, Any]:
        return dict(self.located.view.status)

    @property
    def format(self) -> str:
        return self.view.artifact.format


# ---------------------------------------------------------------------- the cluster
def _custom_api() -> Any:
    from kubernetes import client

    kubeconfig.load()
    return client.CustomObjectsApi()


def cluster_api() -> Any:
    """The Kubernetes API client an agent reads StoredFlows (and FlowStorages) with. No cluster
    configured is kubernetes' ConfigException (the CLI says so in one line: flowstore.cli_errors)."""
    return _custom_api()


def _get(api: Any, plural: str, namespace: str, name: str) -> Any:
    """One object from the API, or None when that object does not exist (a 404 naming it; a 404
    without a name means the kind itself is unknown: no CRDs). Other API errors propagate."""
    from kubernetes.client.exceptions import ApiException

    try:
        return api.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
    except ApiException as exc:
        if exc.status == 404 and _names_the_object(exc):
            return None
        raise


def _names_the_object(exc: Any) -> bool:
    """A 404 about the object (a Status naming it), not about the resource type: an API server
    without flowstore's CRDs answers "404 page not found"."""
    try:
        details = json.loads(exc.body or "{}").get("details") or {}
    except (ValueError, AttributeError, TypeError):
        return False
    return bool(details.get("name"))


def storedflow(name: str, namespace: str, *, api: Any = None) -> dict[str, Any]:
    """The StoredFlow object (spec and status), as the API server has it: untrusted (see
    :func:`read` for its parsed view, :func:`resolve` for a view checked against what the agent
    trusts)."""
    obj = _get(api or _custom_api(), STOREDFLOW_PLURAL, namespace, name)
    if obj is None:
        raise FlowNotAvailable(f"StoredFlow {namespace}/{name} not found")
    return dict(obj)


def read(name: str, namespace: str, *, api: Any = None, revision: int | None = None,
         digest: str | None = None) -> StoredFlowView:
    """The StoredFlow, its status parsed (not yet checked against what the agent trusts); with
    `revision` (a number of status.history) or `digest` (a revision's artifact digest), the status
    as it reads with that revision current (FlowNotAvailable, naming the revisions there are,
    when it is not in the history)."""
    obj = storedflow(name, namespace, api=api)
    if revision is not None or digest is not None:
        try:
            obj["status"] = status_for(obj.get("status") or {}, revision=revision, digest=digest)
        except RevisionNotFound as exc:
            raise FlowNotAvailable(f"StoredFlow {namespace}/{name}: {exc}") from None
    return statuses.parse(obj, namespace=namespace, name=name)


def flowstorage_source(api: Any) -> trust.TrustSource:
    """Trust what the StoredFlow's FlowStorage spec says (read from the API now)."""
    def source(view: StoredFlowView) -> list[trust.TrustedLocation]:
        ref = view.storage_ref
        if not ref:
            raise TrustUnavailable(f"{view.what} names no FlowStorage (spec.storageRef); cannot check its status")
        from kubernetes.client.exceptions import ApiException

        try:
            obj = _get(api, FLOWSTORAGE_PLURAL, view.namespace, ref)
        except ApiException as exc:
            if exc.status not in (401, 403):
                raise
            raise TrustUnavailable(
                f"{view.what}: this agent may not read its FlowStorage {view.namespace}/{ref} (HTTP {exc.status}) "
                f"to check where the status points; grant it get on flowstorages in namespace {view.namespace} "
                f"(docs/security-agents.md has a Role), or list the storages it trusts in "
                f"{trust.ALLOWLIST_ENV}") from None
        if obj is None:
            raise TrustUnavailable(f"{view.what}: its FlowStorage {view.namespace}/{ref} (spec.storageRef) does not "
                                   "exist, so nothing says where the flow may be; create it, or fix storageRef")
        return [trust.from_flowstorage(obj, namespace=view.namespace, name=ref)]

    return source


def default_sources(api: Any) -> list[trust.TrustSource]:
    """``FLOWSTORE_TRUSTED_STORAGES`` when set, else the FlowStorage."""
    return [trust.allowlist_source(), flowstorage_source(api)]


def resolve(name: str, namespace: str, *, api: Any = None, sources: Sequence[trust.TrustSource] | None = None,
            verify_key: VerifyKeys = None, signing_key: bytes | str | None = None, revision: int | None = None,
            digest: str | None = None) -> Located:
    """The StoredFlow (or one revision of it, by number or digest: :func:`read`), its signed
    statement verified when the agent holds keys (:func:`verify_statement`; a revision asked for
    is pinned: an older designation than this agent verified is allowed), its status checked
    against what the agent trusts (UntrustedLocation otherwise). Makes no request to the storage."""
    api = api or _custom_api()
    view = read(name, namespace, api=api, revision=revision, digest=digest)
    checked = verify_statement(view, verify_key=verify_key, signing_key=signing_key,
                               pinned=revision is not None or digest is not None)
    return check_location(view, api=api, sources=sources, checked=checked)


def check_location(view: StoredFlowView, *, api: Any, sources: Sequence[trust.TrustSource] | None = None,
                   checked: verified.Verified | None = None) -> Located:
    """`view`, once its status is checked against what the agent trusts (UntrustedLocation).
    With a verified statement (`checked`), the status's storage and location are the signed ones
    (:func:`signed_view`): what is checked is what is fetched."""
    if checked is not None:
        view = signed_view(view, checked)
    location = trust.trusted_location(view, sources if sources is not None else default_sources(api))
    return Located(view=view, trusted=location, storage_doc=trust.agent_storage(view, location), statement=checked)


def locate(name: str, namespace: str, *, api: Any = None, revision: int | None = None,
           digest: str | None = None) -> dict[str, Any]:
    """The StoredFlow's status (location, artifact, storage, labels, conditions), once it is
    checked to point where the agent trusts (and, with keys, its statement verified); with
    `revision` or `digest`, as it reads with that revision of status.history current."""
    return dict(resolve(name, namespace, api=api, revision=revision, digest=digest).view.status)


def seed_storage(name: str, namespace: str, *, api: Any = None, revision: int | None = None,
                 digest: str | None = None) -> dict[str, Any]:
    """The StoredFlow's storage as the seed serializes it (``flows`` = {flow name: location}):
    what Prefect 1.4.1's ``StorageSchema`` loads, so a Prefect 1 flow can be registered with its
    storage pointing at the artifact flowstore stored. Built from the checked ``status.storage``
    (nothing is downloaded; no credentials are needed). What the seed has no field for (the
    sha256, key prefixes, ...) is not in it: the status keeps it."""
    return from_serialized(resolve(name, namespace, api=api, revision=revision, digest=digest).storage_doc).serialize()


# ---------------------------------------------------------------------- keys and limits
def verify_statement(view: StoredFlowView, *, verify_key: VerifyKeys = None, signing_key: bytes | str | None = None,
                     pinned: bool = False) -> verified.Verified | None:
    """With keys — `verify_key` (else ``$FLOWSTORE_VERIFY_KEY``: ed25519 public keys), `signing_key`
    (else ``$FLOWSTORE_SIGNING_KEY``: the shared HMAC key, the weaker kind) — the statement of the
    revision `view` names, verified against what this agent asked for and is about to fetch, and
    admitted by its memory of designations (an older one refused unless `pinned`): SignatureError
    otherwise. Without keys, None (the sha256 alone is checked). Needs no download, sends nothing."""
    keys = verified.agent_keys(verify_key, signing_key)
    if not keys:
        return None
    return verified.check(view.status, keys, namespace=view.namespace, name=view.name, uid=view.uid, pinned=pinned)


def has_keys(verify_key: VerifyKeys = None, signing_key: bytes | str | None = None) -> bool:
    """Whether this agent verifies signatures (keys given, or in its environment; set but empty
    is an error)."""
    return bool(verified.agent_keys(verify_key, signing_key))


def signed_view(view: StoredFlowView, checked: verified.Verified) -> StoredFlowView:
    """`view` with its storage document and location replaced by the signed ones: nothing the
    signature does not cover (``labels``, ``flows``, a member added to the status) can steer a
    request."""
    signed = checked.signed_status(view.status)
    return dataclasses.replace(view, storage=signed["storage"], location=signed["location"])


def max_artifact_bytes() -> int:
    value = os.environ.get(MAX_ARTIFACT_ENV)
    if not value:
        return DEFAULT_MAX_ARTIFACT_BYTES
    try:
        return parse_size(value, what=MAX_ARTIFACT_ENV)
    except CacheError as exc:
        raise StatusError(str(exc)) from None


def check_size(view: StoredFlowView) -> None:
    limit = max_artifact_bytes()
    if view.artifact.size > limit:
        raise StatusError(f"{view.what} records an artifact of {view.artifact.size} bytes, more than this agent "
                          f"downloads ({limit}; {MAX_ARTIFACT_ENV} raises it)")


# ---------------------------------------------------------------------- bytes and flows
def download(located: Located, *, identity: Mapping[str, Any] | None = None) -> bytes:
    """The artifact, from the storage the checked status names, with the agent's credentials
    (its environment; with `identity`, this Pod's ServiceAccount: flowstore.workload): at most the
    recorded size, verified against the recorded sha256 (IntegrityError otherwise)."""
    view = located.view
    acting_as = agent_identity(view.storage_type, identity)
    storage = from_serialized(located.storage_doc, **({"identity": acting_as} if acting_as is not None else {}))
    try:
        data = storage.get_bytes_bounded(view.location, view.artifact.size)
    except (AuthFailed, TemplateValueMissing) as exc:
        if acting_as is not None:  # reached as this Pod's ServiceAccount: the storage's own message says it
            raise
        raise type(exc)(agent_advice(view.storage_type, exc)) from exc
    verify_digest(data, view.artifact.digest, what=view.artifact.url or view.location)
    return data


def agent_advice(storage_type: str, exc: Exception) -> str:
    """`exc`'s problem, with what an agent can do about it. The storages' own messages end in
    advice for whoever configured the FlowStorage ("check the keys in the referenced Secret");
    an agent never sees that Secret: it reads the names of its own environment."""
    problem = str(exc).split("; ")[0]
    row = backend(storage_type)
    if isinstance(exc, TemplateValueMissing):
        return (f"{problem}; set it in this agent's environment (agents fill a Webhook storage's ${{…}} templates "
                "from their own environment, not from the FlowStorage's Secret)")
    where = row.agent_credentials if row and row.agent_credentials else "its own environment"
    return f"{problem}; this agent uses its own credentials, not the FlowStorage's Secret: give it {where}"


def fetch(located: Located, *, cache: Cache | None = None, pin: bool = False,
          identity: Mapping[str, Any] | None = None) -> tuple[bytes, bool]:
    """The verified artifact bytes from the agent cache, or downloaded (and then cached), and
    whether they were downloaded."""
    view = located.view
    check_size(view)
    cache = cache or Cache()
    return cache.artifact(view.artifact.digest, lambda: download(located, identity=identity),
                          size=view.artifact.size, pin=pin)


def load_artifact(name: str, namespace: str, *, api: Any = None, signing_key: bytes | str | None = None,
                  verify_key: VerifyKeys = None, identity: Mapping[str, Any] | None = None,
                  cache: Cache | None = None, revision: int | None = None, digest: str | None = None) -> Artifact:
    """The stored bytes (the script, the bundle or the pickle envelope), verified: status parsed,
    signed statement verified (with keys), location trusted, sha256 matched — the first three
    before any request to the storage. `revision` or `digest` picks a revision of status.history
    instead of the current one, checked the same way (pinned: :func:`resolve`)."""
    located = resolve(name, namespace, api=api, verify_key=verify_key, signing_key=signing_key, revision=revision,
                      digest=digest)
    data, downloaded = fetch(located, cache=cache, identity=identity)
    return Artifact(data=data, located=located, downloaded=downloaded)


def load_flow(name: str, namespace: str, *, api: Any = None, signing_key: bytes | str | None = None,
              verify_key: VerifyKeys = None, identity: Mapping[str, Any] | None = None,
              cache: Cache | None = None, revision: int | None = None, digest: str | None = None) -> Any:
    """The flow object, verified (:func:`load_artifact`): unpickled from the envelope; or, for a
    script, extracted by running the script in this process (the agent's job, as in the seed);
    or, for a flow of several files, imported from the bundle's files in the agent cache.
    `revision` (a number of status.history) or `digest` (a revision's artifact digest) loads that
    revision, verified the same way."""
    artifact = load_artifact(name, namespace, api=api, signing_key=signing_key, verify_key=verify_key,
                             identity=identity, cache=cache, revision=revision, digest=digest)
    return loading.load(artifact.data, artifact.format, flow_name=artifact.view.flow_name or None,
                        cache=cache or Cache())
