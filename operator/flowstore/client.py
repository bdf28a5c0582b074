"""Agent side: find a StoredFlow, read where it lives, download it, verify it, load it.

    from flowstore.client import load_flow
    flow = load_flow("etl-daily", "data")

Nothing is unpickled or executed before the downloaded bytes match the sha256 recorded in
the StoredFlow's status. Backend credentials are the agent's own (the SDK's default chain:
environment, workload identity, …); the status never carries secrets.

With keys (``verify_key=`` / ``FLOWSTORE_VERIFY_KEY``: the FlowStorage's ed25519 public key;
``signing_key=`` / ``FLOWSTORE_SIGNING_KEY``: its HMAC key), the signed statement of the revision
is verified first, before any request to the storage (``flowstore.artifacts.verified``,
docs/signing.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from flowstore import kubeconfig
from flowstore.api.backends import backend
from flowstore.api.constants import GROUP, STOREDFLOW_PLURAL, VERSION
from flowstore.artifacts import loading, verified
from flowstore.artifacts.signing import KeySource
from flowstore.storage import AuthFailed, TemplateValueMissing, from_serialized
from flowstore.storage.base import verify_digest
from flowstore.workload import agent_identity


class FlowNotAvailable(LookupError):
    """The StoredFlow does not exist or has never been stored."""


@dataclasses.dataclass(frozen=True)
class Artifact:
    data: bytes
    status: dict[str, Any]

    @property
    def format(self) -> str:
        return str(self.status["artifact"]["format"])


def _custom_api() -> Any:
    from kubernetes import client

    kubeconfig.load()
    return client.CustomObjectsApi()


def storedflow(name: str, namespace: str, *, api: Any = None) -> dict[str, Any]:
    """The StoredFlow object (spec and status), as the API server has it."""
    from kubernetes.client.exceptions import ApiException

    api = api or _custom_api()
    try:
        obj: dict[str, Any] = api.get_namespaced_custom_object(GROUP, VERSION, namespace, STOREDFLOW_PLURAL, name)
    except ApiException as exc:
        if exc.status == 404 and _names_the_object(exc):  # else the kind itself is unknown: no CRDs
            raise FlowNotAvailable(f"StoredFlow {namespace}/{name} not found") from None
        raise
    return obj


def locate(name: str, namespace: str, *, api: Any = None) -> dict[str, Any]:
    """The StoredFlow's status (location, artifact, storage, labels, conditions)."""
    return stored_status(storedflow(name, namespace, api=api), name, namespace)


def stored_status(obj: dict[str, Any], name: str, namespace: str) -> dict[str, Any]:
    """`obj`'s status, once it has been stored (FlowNotAvailable before)."""
    status = dict(obj.get("status") or {})
    if not status.get("location") or not status.get("artifact") or not status.get("storage"):
        raise FlowNotAvailable(
            f"StoredFlow {namespace}/{name} has not been stored yet; "
            f"see `kubectl describe storedflow {name} -n {namespace}`"
        )
    return status


def _names_the_object(exc: Any) -> bool:
    """A 404 about the object (a Status naming it), not about the resource type: an API server
    without flowstore's CRDs answers "404 page not found"."""
    import json

    try:
        details = json.loads(exc.body or "{}").get("details") or {}
    except (ValueError, AttributeError):
        return False
    return bool(details.get("name"))


def seed_storage(name: str, namespace: str, *, api: Any = None) -> dict[str, Any]:
    """The StoredFlow's storage as the seed serializes it (``flows`` = {flow name: location}):
    what Prefect 1.4.1's ``StorageSchema`` loads, so a Prefect 1 flow can be registered with its
    storage pointing at the artifact flowstore stored. Built from ``status.storage`` (nothing is
    downloaded; no credentials are needed). What the seed has no field for (the sha256, key
    prefixes, ...) is not in it: the status keeps it."""
    status = locate(name, namespace, api=api)
    return from_serialized(status["storage"]).serialize()


def load_artifact(name: str, namespace: str, *, api: Any = None, signing_key: bytes | str | None = None,
                  verify_key: KeySource | list[KeySource] | None = None,
                  identity: Mapping[str, Any] | None = None) -> Artifact:
    """Download the stored bytes (the script, or the pickle envelope) and verify their sha256.

    With keys (:func:`verify_statement`), the signed statement of the revision is verified
    first: unsigned, mismatched or older artifacts are refused before anything is requested."""
    obj = storedflow(name, namespace, api=api)
    status = stored_status(obj, name, namespace)
    checked = verify_statement(obj, status, namespace=namespace, name=name, verify_key=verify_key,
                               signing_key=signing_key)
    fetch_with = checked.signed_status(status) if checked is not None else status
    return Artifact(data=download(fetch_with, identity=identity), status=status)


def verify_statement(obj: Mapping[str, Any], status: Mapping[str, Any], *, namespace: str, name: str,
                     verify_key: KeySource | list[KeySource] | None = None,
                     signing_key: bytes | str | None = None, pinned: bool = False) -> verified.Verified | None:
    """With keys — `verify_key` (else ``$FLOWSTORE_VERIFY_KEY``), `signing_key` (else
    ``$FLOWSTORE_SIGNING_KEY``) — the statement of the revision `status` names, verified against
    what this agent asked for and is about to fetch, and admitted by its memory of designations
    (an older one refused unless `pinned`): SignatureError otherwise. Without keys, None (the
    sha256 alone is checked). Needs no download."""
    keys = verified.agent_keys(verify_key, signing_key)
    if not keys:
        return None
    return verified.check(obj, status, keys, namespace=namespace, name=name, pinned=pinned)


def has_keys(verify_key: KeySource | list[KeySource] | None = None, signing_key: bytes | str | None = None) -> bool:
    """Whether this agent verifies signatures (given keys, or keys in its environment)."""
    return bool(verified.agent_keys(verify_key, signing_key))


def download(status: dict[str, Any], *, identity: Mapping[str, Any] | None = None) -> bytes:
    """The artifact a StoredFlow's status names, from its storage, verified against the
    recorded sha256 (``IntegrityError`` otherwise). With `identity`, the storage is reached as
    this Pod's ServiceAccount (flowstore.workload)."""
    artifact = status["artifact"]
    acting_as = agent_identity(str(status["storage"].get("type", "")), identity)
    storage = from_serialized(status["storage"], **({"identity": acting_as} if acting_as is not None else {}))
    try:
        data = storage.get_bytes(status["location"])
    except (AuthFailed, TemplateValueMissing) as exc:
        if acting_as is not None:  # reached as this Pod's ServiceAccount: the storage's own message says it
            raise
        raise type(exc)(agent_advice(str(status["storage"].get("type")), exc)) from exc
    verify_digest(data, artifact["digest"], what=artifact.get("url", status["location"]))
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
    return (f"{problem}; this agent uses its own credentials, not the FlowStorage's Secret: give it {where}")


def load_flow(name: str, namespace: str, *, api: Any = None, signing_key: bytes | str | None = None,
              verify_key: KeySource | list[KeySource] | None = None, identity: Mapping[str, Any] | None = None) -> Any:
    """The flow object, verified: unpickled from the envelope; or, for a script, extracted by
    running the script in this process (the agent's job, as in the seed); or, for a flow of
    several files, imported from the bundle's files, extracted once into a cache directory
    keyed by the digest (``flowstore.artifacts.loading``)."""
    artifact = load_artifact(name, namespace, api=api, signing_key=signing_key, verify_key=verify_key,
                             identity=identity)
    return loading.load(artifact.data, artifact.format, flow_name=artifact.status.get("flowName"))
