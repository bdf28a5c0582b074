"""Agent side: find a StoredFlow, check where it points, download it, verify it, load it.

    from flowstore.client import load_flow
    flow = load_flow("etl-daily", "data")

A StoredFlow's status is hostile input (whoever may write ``storedflows/status`` is not the
tenant who wrote the spec). In this order, and before anything is unpickled or executed:

1. the StoredFlow is read and its status parsed into a typed view (``flowstore.agent.status``):
   a missing or wrong-typed field is a StatusError naming it; no digest, no load;
2. with a signing key (``signing_key=`` or ``FLOWSTORE_SIGNING_KEY``; set but empty is an
   error), the signature over the flow name and digest must verify;
3. where the status points must be where the agent trusts it to be (``flowstore.agent.trust``:
   the FlowStorage's spec, read from the API, or ``FLOWSTORE_TRUSTED_STORAGES``): otherwise
   UntrustedLocation, and no request carrying the agent's credentials is made;
4. the agent cache (``flowstore.artifacts.cache``) serves the digest's bytes if it has them
   (rehashed), else they are downloaded with the agent's own credentials, at most the recorded
   size (and never more than ``FLOWSTORE_MAX_ARTIFACT_BYTES``), and checked against the digest;
5. then loaded: unpickled, run as a script, or imported from the bundle's files (checked
   against its manifest on every use).

Every refusal is one of :data:`AGENT_ERRORS`, with a message saying what to do.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

from flowstore import kubeconfig
from flowstore.agent import status as statuses
from flowstore.agent import trust
from flowstore.agent.errors import (
    AgentError,
    ClusterError,
    FlowNotAvailable,
    StatusError,
    TrustUnavailable,
    UntrustedLocation,
)
from flowstore.agent.status import StoredFlowView
from flowstore.api.constants import FLOWSTORAGE_PLURAL, GROUP, STOREDFLOW_PLURAL, VERSION
from flowstore.artifacts import loading, signing
from flowstore.artifacts.builder import FlowObjectError
from flowstore.artifacts.bundle import BundleError
from flowstore.artifacts.cache import Cache, CacheError, parse_size
from flowstore.artifacts.flowfiles import IgnoreError
from flowstore.artifacts.loading import ArtifactFormatError
from flowstore.artifacts.signing import SignatureError
from flowstore.storage import StorageError, from_serialized
from flowstore.storage.base import verify_digest

__all__ = ["AGENT_ERRORS", "Artifact", "ClusterError", "FlowNotAvailable", "Located", "StatusError",
           "TrustUnavailable", "UntrustedLocation", "load_artifact", "load_flow", "locate", "resolve"]

#: everything an agent call raises for a StoredFlow it will not (or cannot) load
AGENT_ERRORS: tuple[type[Exception], ...] = (AgentError, StorageError, BundleError, SignatureError, CacheError,
                                             IgnoreError, ArtifactFormatError, FlowObjectError)
#: the largest artifact an agent downloads, whatever a status records
MAX_ARTIFACT_ENV = "FLOWSTORE_MAX_ARTIFACT_BYTES"
DEFAULT_MAX_ARTIFACT_BYTES = 256 * 2**20
SIGNING_KEY_ENV = "FLOWSTORE_SIGNING_KEY"


@dataclasses.dataclass(frozen=True)
class Located:
    """A StoredFlow whose status points where the agent trusts: the view, what vouched for it,
    and the storage document the agent builds its storage from (nothing else of the status)."""

    view: StoredFlowView
    trusted: trust.TrustedLocation
    storage_doc: dict[str, Any]


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
    from kubernetes import client, config

    try:
        kubeconfig.load()
    except (config.ConfigException, OSError) as exc:
        raise ClusterError(f"no Kubernetes cluster configured (in-cluster, or KUBECONFIG / ~/.kube/config): {exc}; "
                           "run this where the StoredFlow's cluster is configured") from None
    return client.CustomObjectsApi()


def cluster_api() -> Any:
    """The Kubernetes API client an agent reads StoredFlows (and FlowStorages) with."""
    return _custom_api()


def _get(api: Any, plural: str, namespace: str, name: str, kind: str) -> Any:
    """One object from the API; None when it does not exist; ClusterError for anything else."""
    from kubernetes.client.exceptions import ApiException

    try:
        return api.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
    except ApiException as exc:
        if exc.status == 404:
            return None
        if exc.status in (401, 403):
            raise ClusterError(f"this agent may not get {plural}.{GROUP} {namespace}/{name} (HTTP {exc.status}); "
                               f"grant its ServiceAccount or user get on {plural} in namespace {namespace} "
                               "(docs/security-agents.md has a Role)") from None
        raise ClusterError(f"reading {kind} {namespace}/{name} failed: HTTP {exc.status} {exc.reason}") from None
    except (OSError, ValueError) as exc:  # urllib3's connection errors are OSErrors
        raise ClusterError(f"reading {kind} {namespace}/{name} failed: the Kubernetes API is unreachable "
                           f"({type(exc).__name__})") from None


def read(name: str, namespace: str, *, api: Any = None) -> StoredFlowView:
    """The StoredFlow, its status parsed (not yet checked against what the agent trusts)."""
    api = api or _custom_api()
    obj = _get(api, STOREDFLOW_PLURAL, namespace, name, "StoredFlow")
    if obj is None:
        raise FlowNotAvailable(f"StoredFlow {namespace}/{name} not found")
    return statuses.parse(obj, namespace=namespace, name=name)


def flowstorage_source(api: Any) -> trust.TrustSource:
    """Trust what the StoredFlow's FlowStorage spec says (read from the API now)."""
    def source(view: StoredFlowView) -> list[trust.TrustedLocation]:
        ref = view.storage_ref
        if not ref:
            raise TrustUnavailable(f"{view.what} names no FlowStorage (spec.storageRef); cannot check its status")
        try:
            obj = _get(api, FLOWSTORAGE_PLURAL, view.namespace, ref, "FlowStorage")
        except ClusterError as exc:
            raise TrustUnavailable(
                f"{view.what}: cannot read its FlowStorage to check where the status points: {exc}; or list the "
                f"storages this agent trusts in {trust.ALLOWLIST_ENV}") from None
        if obj is None:
            raise TrustUnavailable(f"{view.what}: its FlowStorage {view.namespace}/{ref} (spec.storageRef) does not "
                                   "exist, so nothing says where the flow may be; create it, or fix storageRef")
        return [trust.from_flowstorage(obj, namespace=view.namespace, name=ref)]

    return source


def default_sources(api: Any) -> list[trust.TrustSource]:
    """``FLOWSTORE_TRUSTED_STORAGES`` when set, else the FlowStorage."""
    return [trust.allowlist_source(), flowstorage_source(api)]


def resolve(name: str, namespace: str, *, api: Any = None,
            sources: Sequence[trust.TrustSource] | None = None) -> Located:
    """The StoredFlow, its status checked against what the agent trusts (UntrustedLocation
    otherwise). Makes no request to the storage."""
    api = api or _custom_api()
    return check_location(read(name, namespace, api=api), api=api, sources=sources)


def check_location(view: StoredFlowView, *, api: Any, sources: Sequence[trust.TrustSource] | None = None) -> Located:
    """`view`, once its status is checked against what the agent trusts (UntrustedLocation)."""
    location = trust.trusted_location(view, sources if sources is not None else default_sources(api))
    return Located(view=view, trusted=location, storage_doc=trust.agent_storage(view, location))


def locate(name: str, namespace: str, *, api: Any = None) -> dict[str, Any]:
    """The StoredFlow's status (location, artifact, storage, labels, conditions), once it is
    checked to point where the agent trusts."""
    return dict(resolve(name, namespace, api=api).view.status)


def seed_storage(name: str, namespace: str, *, api: Any = None) -> dict[str, Any]:
    """The StoredFlow's storage as the seed serializes it (``flows`` = {flow name: location}):
    what Prefect 1.4.1's ``StorageSchema`` loads, so a Prefect 1 flow can be registered with its
    storage pointing at the artifact flowstore stored. Built from the checked ``status.storage``
    (nothing is downloaded; no credentials are needed). What the seed has no field for (the
    sha256, key prefixes, ...) is not in it: the status keeps it."""
    return from_serialized(resolve(name, namespace, api=api).storage_doc).serialize()


# ---------------------------------------------------------------------- keys and limits
def signing_key_from(signing_key: bytes | str | None) -> bytes | None:
    """The agent's signing key: the argument, else ``$FLOWSTORE_SIGNING_KEY``, else none. A key
    given but empty (``FLOWSTORE_SIGNING_KEY=``) is an error, never "verification off": unset it
    to verify digests only."""
    if signing_key is not None:
        key, where = signing_key, "the signing key given"
    elif SIGNING_KEY_ENV in os.environ:
        key, where = os.environ[SIGNING_KEY_ENV], SIGNING_KEY_ENV
    else:
        return None
    key = key.encode("utf-8") if isinstance(key, str) else bytes(key)
    if not key.strip():
        raise SignatureError(f"{where} is set but empty, so no signature could be checked; set it to the "
                             "FlowStorage's signing key, or unset it to check digests only")
    return key


def check_signature(view: StoredFlowView, key: bytes | None) -> None:
    """With a key, refuse an unsigned artifact or one whose signature does not cover its flow
    name and digest. Needs no download: the bytes must then match the digest."""
    if key is not None:
        signing.verify(key, view.flow_name, view.artifact.digest, view.artifact.signature,
                       what=view.artifact.url or view.location)


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
def download(located: Located) -> bytes:
    """The artifact, from the storage the checked status names, with the agent's credentials:
    at most the recorded size, verified against the recorded sha256 (IntegrityError otherwise)."""
    view = located.view
    storage = from_serialized(located.storage_doc)
    data = storage.get_bytes_bounded(view.location, view.artifact.size)
    verify_digest(data, view.artifact.digest, what=view.artifact.url or view.location)
    return data


def fetch(located: Located, *, cache: Cache | None = None, pin: bool = False) -> tuple[bytes, bool]:
    """The verified artifact bytes from the agent cache, or downloaded (and then cached), and
    whether they were downloaded."""
    view = located.view
    check_size(view)
    cache = cache or Cache()
    return cache.artifact(view.artifact.digest, lambda: download(located), size=view.artifact.size, pin=pin)


def load_artifact(name: str, namespace: str, *, api: Any = None, signing_key: bytes | str | None = None,
                  cache: Cache | None = None) -> Artifact:
    """The stored bytes (the script, the bundle or the pickle envelope), verified: status parsed,
    signature checked (with a key), location trusted, sha256 matched."""
    api = api or _custom_api()
    key = signing_key_from(signing_key)
    view = read(name, namespace, api=api)
    check_signature(view, key)
    located = check_location(view, api=api)
    data, downloaded = fetch(located, cache=cache)
    return Artifact(data=data, located=located, downloaded=downloaded)


def load_flow(name: str, namespace: str, *, api: Any = None, signing_key: bytes | str | None = None,
              cache: Cache | None = None) -> Any:
    """The flow object, verified (:func:`load_artifact`): unpickled from the envelope; or, for a
    script, extracted by running the script in this process (the agent's job, as in the seed);
    or, for a flow of several files, imported from the bundle's files in the agent cache."""
    artifact = load_artifact(name, namespace, api=api, signing_key=signing_key, cache=cache)
    return loading.load(artifact.data, artifact.format, flow_name=artifact.view.flow_name or None,
                        cache=cache or Cache())
