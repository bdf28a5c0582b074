"""Agent side: find a StoredFlow, read where it lives, download it, verify it, load it.

    from flowstore.client import load_flow
    flow = load_flow("etl-daily", "data")
    older = load_flow("etl-daily", "data", revision=3)   # any revision still in status.history

Nothing is unpickled or executed before the downloaded bytes match the sha256 recorded in
the StoredFlow's status (for an older revision, its history entry's). Backend credentials are
the agent's own (the SDK's default chain: environment, workload identity, …); the status never
carries secrets.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from flowstore import kubeconfig
from flowstore.api.backends import backend
from flowstore.api.constants import GROUP, STOREDFLOW_PLURAL, VERSION
from flowstore.api.history import RevisionNotFound, status_for
from flowstore.artifacts import loading, signing
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


def locate(name: str, namespace: str, *, api: Any = None, revision: int | None = None,
           digest: str | None = None) -> dict[str, Any]:
    """The StoredFlow's status (location, artifact, storage, labels, conditions); with
    `revision` or `digest`, as it reads with that revision of status.history current."""
    return stored_status(storedflow(name, namespace, api=api), name, namespace, revision=revision, digest=digest)


def stored_status(obj: dict[str, Any], name: str, namespace: str, *, revision: int | None = None,
                  digest: str | None = None) -> dict[str, Any]:
    """`obj`'s status, once it has been stored (FlowNotAvailable before); with `revision` or
    `digest`, as it reads with that revision of status.history current."""
    if revision is not None or digest is not None:
        try:
            return status_for(dict(obj.get("status") or {}), revision=revision, digest=digest)
        except RevisionNotFound as exc:
            raise FlowNotAvailable(f"StoredFlow {namespace}/{name}: {exc}") from None
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


def seed_storage(name: str, namespace: str, *, api: Any = None, revision: int | None = None,
                 digest: str | None = None) -> dict[str, Any]:
    """The StoredFlow's storage as the seed serializes it (``flows`` = {flow name: location}):
    what Prefect 1.4.1's ``StorageSchema`` loads, so a Prefect 1 flow can be registered with its
    storage pointing at the artifact flowstore stored. Built from ``status.storage`` (nothing is
    downloaded; no credentials are needed). What the seed has no field for (the sha256, key
    prefixes, ...) is not in it: the status keeps it."""
    status = locate(name, namespace, api=api, revision=revision, digest=digest)
    return from_serialized(status["storage"]).serialize()


def load_artifact(name: str, namespace: str, *, api: Any = None, signing_key: bytes | str | None = None,
                  identity: Mapping[str, Any] | None = None, revision: int | None = None,
                  digest: str | None = None) -> Artifact:
    """Download the stored bytes (the script, or the pickle envelope) and verify their sha256.
    `revision` or `digest` picks a revision of status.history instead of the current one.

    With a signing key (argument, or the environment variable FLOWSTORE_SIGNING_KEY), the
    artifact must also carry a valid signature: unsigned or mismatched artifacts are refused."""
    status = locate(name, namespace, api=api, revision=revision, digest=digest)
    check_signature(status, signing_key)
    return Artifact(data=download(status, identity=identity), status=status)


def signing_key_from(signing_key: bytes | str | None) -> bytes | None:
    """The agent's signing key: the argument, else ``$FLOWSTORE_SIGNING_KEY``, else none."""
    key = signing_key if signing_key is not None else os.environ.get("FLOWSTORE_SIGNING_KEY")
    if not key:
        return None
    return key.encode("utf-8") if isinstance(key, str) else key


def check_signature(status: dict[str, Any], signing_key: bytes | str | None = None) -> None:
    """With a signing key (see :func:`signing_key_from`), refuse a status whose artifact is
    unsigned or whose signature does not match its flow name and digest. Without one, nothing
    is checked. Needs no download: the signature covers the recorded digest, which the bytes
    must then match (:func:`download`)."""
    key = signing_key_from(signing_key)
    if key:
        artifact = status["artifact"]
        signing.verify(key, str(status.get("flowName", "")), str(artifact.get("digest", "")),
                       artifact.get("signature"), what=artifact.get("url", status["location"]))


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
              identity: Mapping[str, Any] | None = None, revision: int | None = None,
              digest: str | None = None) -> Any:
    """The flow object, verified: unpickled from the envelope; or, for a script, extracted by
    running the script in this process (the agent's job, as in the seed); or, for a flow of
    several files, imported from the bundle's files, extracted once into a cache directory
    keyed by the digest (``flowstore.artifacts.loading``). `revision` (a number of
    status.history) or `digest` (a revision's artifact digest) loads that revision, verified the
    same way; FlowNotAvailable names the revisions there are when it is not in the history."""
    artifact = load_artifact(name, namespace, api=api, signing_key=signing_key, identity=identity,
                             revision=revision, digest=digest)
    return loading.load(artifact.data, artifact.format, flow_name=artifact.status.get("flowName"))
