"""Step 2 for storages the operator writes to: the flow's source bytes, from the StoredFlow
(``spec.source.inline``) or a ConfigMap key."""

from __future__ import annotations

import base64
from typing import Any

from flowstore.api.constants import Reason
from flowstore.controller.failures import ReconcileError
from flowstore.controller.reconcile.context import FlowContext
from flowstore.controller.reconcile.ports import Ports


def read_source(ctx: FlowContext, ports: Ports) -> None:
    """Fill ``ctx.source``. A missing ConfigMap or key stalls the StoredFlow until the ConfigMap
    changes (its watch wakes us)."""
    src = ctx.spec.source
    if src.inline is not None:
        ctx.source = src.inline.encode("utf-8")
        return
    assert src.config_map is not None and src.config_map_key is not None  # FlowSpec.parse: exactly one
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
        ctx.source = base64.b64decode(binary[src.config_map_key])
    else:
        keys = sorted([*data, *binary])
        raise ReconcileError(
            Reason.SOURCE_NOT_FOUND,
            f"ConfigMap {src.config_map!r} has no key {src.config_map_key!r} (it has: "
            f"{', '.join(keys) or 'no keys'}); fix spec.source.configMapRef.key or the ConfigMap.",
            stalled=True,
        )
