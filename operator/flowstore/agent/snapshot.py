"""A self-contained pull step: one revision of a StoredFlow, carried in the step itself, so a
worker downloads and verifies it with its own backend credentials and no Kubernetes API.

``flowstore locate NAME -o prefect-pull-step --self-contained`` writes :func:`snapshot` of the
(checked) status into the step: the StoredFlow's uid, its flow name and location, the artifact
(digest, size, format, url, file name, entrypoint, revision, designation, signature and key id) and
the storage document without ``labels`` (a status never holds a secret value; the FlowStorage's
Secrets stay where they are, the worker uses its own credentials). The worker parses it back
(:func:`view_from`) with the same checks as a status read from the API.

The step is written by whoever may edit the deployment, so it is as hostile as a status: its
place is believed only when something that person cannot edit vouches for it, before any request
carrying the worker's credentials. That is ``FLOWSTORE_TRUSTED_STORAGES`` when the worker sets
it, else the operator's signed statement, verified with the worker's keys (:func:`signed_source`:
the signature covers the storage and the location, so an edited endpoint or key does not
verify). A worker with neither refuses the step (no FlowStorage can be read without the API).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from flowstore.agent import status as statuses
from flowstore.agent import trust
from flowstore.agent.errors import StatusError, TrustUnavailable
from flowstore.agent.status import StoredFlowView
from flowstore.api.backends import STATUS_FIELDS
from flowstore.artifacts.statement import signed_storage
from flowstore.artifacts.verified import Verified

#: the artifact fields a snapshot keeps (what the agent checks and what the statement covers)
_ARTIFACT_FIELDS = ("digest", "size", "format", "url", "fileName", "entrypoint", "fileCount", "revision",
                    "designation", "lastUpdateTime", "signature", "keyId")
#: the largest snapshot a worker reads (a status is bounded by the API server; a step is not)
MAX_SNAPSHOT_BYTES = 64 * 1024


def snapshot(view: StoredFlowView) -> dict[str, Any]:
    """What a self-contained step carries of `view` (the status as read for the revision pinned)."""
    status = view.status
    artifact = status.get("artifact") or {}
    kept: dict[str, Any] = {
        "flowName": view.flow_name,
        "location": view.location,
        "artifact": {k: artifact[k] for k in _ARTIFACT_FIELDS if artifact.get(k) is not None},
        "storage": {**signed_storage(view.storage), "flows": {view.flow_name: view.location}},
    }
    if view.git_commit:
        kept["git"] = {"commit": view.git_commit}
    return {"uid": view.uid, "status": kept}


def view_from(carried: Any, *, namespace: str, name: str) -> StoredFlowView:
    """The view of a snapshot a step carried, checked as a status read from the API is
    (StatusError naming the field)."""
    what = f"the self-contained pull step of StoredFlow {namespace}/{name}"
    if not isinstance(carried, Mapping) or not isinstance(carried.get("status"), Mapping):
        raise StatusError(f"{what}: self_contained must be a mapping with uid and status, as "
                          "`flowstore locate NAME -o prefect-pull-step --self-contained` prints it; print it again")
    if len(repr(carried)) > MAX_SNAPSHOT_BYTES:
        raise StatusError(f"{what} is larger than {MAX_SNAPSHOT_BYTES} bytes; print it again")
    uid = carried.get("uid")
    obj = {"metadata": {"name": name, "namespace": namespace, "uid": uid if isinstance(uid, str) else None},
           "spec": {}, "status": dict(carried["status"])}
    return statuses.parse(obj, namespace=namespace, name=name)


def signed_source(checked: Verified) -> trust.TrustSource:
    """Trust the place the operator's verified statement names (the storage and location it
    signed): for a self-contained step, whose storage cannot be compared with a FlowStorage."""
    def source(view: StoredFlowView) -> Sequence[trust.TrustedLocation] | None:
        storage = checked.statement.storage
        fields = STATUS_FIELDS.get(str(storage.get("type")))
        if fields is None:
            return None
        place = {f: storage[f] for f in fields.place if storage.get(f) is not None}
        return [trust.TrustedLocation(
            type=str(storage["type"]), place=place,
            source=f"the statement signed with key {checked.key.key_id}",
            remedy="The step was edited after it was printed: print it again with `flowstore locate NAME "
                   "-o prefect-pull-step --self-contained`")]

    return source


def sources(checked: Verified | None) -> list[trust.TrustSource]:
    """What vouches for a self-contained step's place: ``FLOWSTORE_TRUSTED_STORAGES`` when set,
    else the verified statement; TrustUnavailable (before any request) when the worker has neither."""
    if checked is not None:
        return [trust.allowlist_source(), signed_source(checked)]

    def refuse(view: StoredFlowView) -> Sequence[trust.TrustedLocation] | None:
        raise TrustUnavailable(
            f"{view.what}: a self-contained pull step names its own storage, and this worker has nothing to check it "
            f"against (it reads no FlowStorage without a cluster): set {trust.ALLOWLIST_ENV} to the storages it "
            "trusts, or give it the FlowStorage's public key (FLOWSTORE_VERIFY_KEY) so the operator's signature "
            "is checked; nothing was requested")

    return [trust.allowlist_source(), refuse]
