"""Reconciling one FlowStorage: its spec parses, its credentials resolve, and its bucket,
directory or registry is reachable (the seed's healthcheck), and its signing key (if any) is
usable. Status publishes the serialized storage, its labels, ``status.flows`` (flow name ->
location: the seed's ``flows``) and the public half of the signing key (``status.signing``)."""

from __future__ import annotations

from typing import Any

from flowstore.api import conditions as cond
from flowstore.api.backends import backend as backend_row
from flowstore.api.constants import Reason
from flowstore.api.models import SpecError, StorageSpec, storage_ref
from flowstore.api.status import recorded_flow_name, recorded_location
from flowstore.reconcile.failures import classify
from flowstore.reconcile.outcomes import failed, mark_handled, recheck_after, suspended
from flowstore.reconcile.ports import Outcome, Ports
from flowstore.reconcile.signatures import read_signer, signing_status
from flowstore.reconcile.storages import open_storage

#: status.flows lists at most this many flows (the first by name; flowCount has the number): the
#: object must stay small however many flows a storage holds (~100 bytes an entry)
MAX_STATUS_FLOWS = 1000


def reconcile_flow_storage(obj: dict[str, Any], ports: Ports, *,
                           members: list[dict[str, Any]] | None = None) -> Outcome:
    """`members`: the StoredFlows naming this storage (the operator serves them from an index;
    default: list the namespace's StoredFlows through the ports). Never raises."""
    return mark_handled(obj, _reconcile(obj, ports, members))


def stored_flows(name: str, storedflows: list[dict[str, Any]]) -> dict[str, str]:
    """Flow name -> location of the StoredFlows of storage `name` that have one. A flow whose
    last change failed keeps its last good location (still loadable); only one that lost its
    name to an older StoredFlow is left out."""
    flows: dict[str, str] = {}
    for sf in storedflows:
        sf_spec, sf_status = sf.get("spec") or {}, sf.get("status") or {}
        location = recorded_location(sf_status)
        if (sf.get("metadata") or {}).get("deletionTimestamp"):
            continue
        if storage_ref(sf_spec) != name or location is None:
            continue
        flow_name = recorded_flow_name(sf_status) or sf_spec.get("flowName")
        ready = cond.get_condition(sf_status.get("conditions"), "Ready") or {}
        if isinstance(flow_name, str) and flow_name and ready.get("reason") != Reason.NAME_CONFLICT:
            flows[flow_name] = location
    return flows


def _reconcile(obj: dict[str, Any], ports: Ports, members: list[dict[str, Any]] | None) -> Outcome:
    meta = obj["metadata"]
    namespace, generation = meta["namespace"], meta.get("generation")
    status = dict(obj.get("status") or {})
    try:
        spec = StorageSpec.parse(obj.get("spec") or {})
    except SpecError as exc:
        return failed(status, generation, classify(exc), None)
    row = backend_row(spec.backend)
    status["backend"] = row.class_name if row else spec.backend  # the TYPE column, from the spec: failures too
    listed = members if members is not None else ports.list_storedflows(namespace)
    flows = stored_flows(meta["name"], listed)
    status["flowCount"] = len(flows)
    status["flows"] = dict(sorted(flows.items())[:MAX_STATUS_FLOWS])
    if spec.suspend:
        return suspended(status, generation)
    try:
        storage = open_storage(ports, namespace, obj, spec)
        storage.check_container()
        signer = read_signer(ports, namespace, spec)
    except Exception as exc:
        failure = classify(exc)
        requeue = (failure.retry_after if not failure.stalled
                   else recheck_after(status.get("conditions"), failure.reason, spec.interval_seconds))
        return failed(status, generation, failure, requeue)
    serialized = storage.to_status()
    serialized.pop("flows", None)
    status.update(observedGeneration=generation, storage=serialized, labels=storage.labels)
    published = signing_status(signer)
    if published is None:
        status.pop("signing", None)
    else:
        status["signing"] = published
    status["conditions"] = cond.mark_ready(
        status.get("conditions"), f"{storage.type_name} storage reachable; {len(flows)} flow(s) stored", generation
    )
    return Outcome(status=status, requeue_after=spec.interval_seconds)
