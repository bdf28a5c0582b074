"""Shards: the operator's label selector on kopf's watches (``--watch-label-selector``).

kopf (since 1.45) sends ``settings.watching.label_selectors`` as the ``labelSelector`` of every
LIST and WATCH request of the resources it is set for. flowstore sets it for FlowStorages and
StoredFlows only, so an operator never receives, indexes or holds another shard's objects
(ConfigMaps and the CRDs themselves carry no shard label and stay unfiltered).
:func:`filter_watches` refuses a kopf without the setting rather than silently watching everything.

When a label change moves an object out of the shard, the API server ends its watch with a
DELETED event that shows the object as it was before the change (no deletionTimestamp): kopf
forgets it but cannot tell its daemon to stop (its filters would see the old labels). The
reconcile loop itself reads the object's labels at each pass and ends (controller/runtime.py);
the DELETED event pokes it (handlers.py).
"""

from __future__ import annotations

import kopf

from flowstore.api.constants import FLOWSTORAGE_PLURAL, GROUP, STOREDFLOW_PLURAL
from flowstore.api.selectors import LabelSelector

#: the resources a shard's selector filters: flowstore's own, which users label
SHARDED_PLURALS = (FLOWSTORAGE_PLURAL, STOREDFLOW_PLURAL)


def filter_watches(settings: kopf.OperatorSettings, selector: LabelSelector | None) -> None:
    """Make kopf's LIST and WATCH requests of FlowStorages and StoredFlows carry `selector`."""
    if not selector:
        return
    selectors = getattr(settings.watching, "label_selectors", None)
    if selectors is None:  # kopf < 1.45: it would watch every object, and no shard would be one
        raise RuntimeError(f"kopf {getattr(kopf, '__version__', '?')} cannot filter watches by label; "
                           "--watch-label-selector needs kopf >= 1.45 (pip install 'kopf>=1.45')")
    for plural in SHARDED_PLURALS:
        selectors[GROUP, plural] = str(selector)

