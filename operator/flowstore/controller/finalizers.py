"""Which StoredFlows carry the finalizer ``flowstore.dev/cleanup``: those whose FlowStorage
deletes objects (``deletionPolicy: Delete``). Under Retain (the default) a deletion has nothing
to delete, so the object carries no finalizer: ``kubectl delete`` completes without the
operator (uninstalled, down, another shard's), and a new flow costs one API write fewer.

kopf adds and removes the finalizer by the deletion handler's ``when`` filter (this module's
:func:`needs_finalizer`), on the StoredFlow's own events. A FlowStorage switched to Delete gives
its existing flows no event; their next pass (the switch queues them all) adds it before anything
is stored (:func:`missing`), so a flow is never deleted under Delete without its cleanup.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flowstore.api.constants import FINALIZER
from flowstore.api.models import storage_ref


def deletes_objects(flowstorage: Mapping[str, Any] | None) -> bool | None:
    """Whether the FlowStorage's deletionPolicy is Delete (None: not known here)."""
    if flowstorage is None:
        return None
    spec = flowstorage.get("spec")
    return isinstance(spec, Mapping) and spec.get("deletionPolicy") == "Delete"


def holds(body: Mapping[str, Any]) -> bool:
    finalizers = (body.get("metadata") or {}).get("finalizers") or []
    return FINALIZER in finalizers


def needs_finalizer(body: Mapping[str, Any], flowstorage: Mapping[str, Any] | None) -> bool:
    """Whether StoredFlow `body` should carry the finalizer, its FlowStorage being `flowstorage`
    (as the operator's watch last saw it; None: not seen, e.g. at start: keep what it has)."""
    deletes = deletes_objects(flowstorage)
    return holds(body) if deletes is None else deletes


def missing(body: Mapping[str, Any], flowstorage: Mapping[str, Any] | None) -> bool:
    """The finalizer is needed and not there (and the object is not being deleted)."""
    meta = body.get("metadata") or {}
    return not meta.get("deletionTimestamp") and deletes_objects(flowstorage) is True and not holds(body)


def storage_of(body: Mapping[str, Any]) -> str:
    return storage_ref(body.get("spec") or {})
