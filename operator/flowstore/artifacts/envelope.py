"""The pickle envelope the seed's system reads and writes.

``{"flow": base64(cloudpickle.dumps(flow)), "versions": {"cloudpickle": …, "python": …, "flowstore": …}}``
as UTF-8 JSON. Bare cloudpickle bytes (the seed's format before it had an envelope) load too.
Loading warns when the writer's cloudpickle or Python version differs from the reader's,
since pickles of code are only portable between matching versions.
"""

from __future__ import annotations

import base64
import json
import sys
import warnings
from collections.abc import Mapping
from typing import Any

import cloudpickle

from flowstore import __version__
from flowstore.artifacts.builder import FlowObjectError, find_flow_object

__all__ = ["FlowObjectError", "dumps", "find_flow_object", "flow_from_compiled", "flow_from_script", "loads", "unwrap",
           "wrap"]


def _versions() -> dict[str, str]:
    return {
        "cloudpickle": cloudpickle.__version__,
        "python": "{}.{}.{}".format(*sys.version_info[:3]),
        "flowstore": __version__,
    }


def wrap(pickled: bytes, versions: Mapping[str, str] | None = None) -> bytes:
    """Envelope already-pickled flow bytes (the builder pickles; the operator only wraps).
    `versions`: what pickled them (the builder's Python, cloudpickle, prefect); default this
    process's. flowstore's own version is always the writer's."""
    recorded = {**(dict(versions) if versions is not None else _versions()), "flowstore": __version__}
    doc = {"flow": base64.b64encode(pickled).decode("ascii"), "versions": recorded}
    return json.dumps(doc, sort_keys=True).encode("utf-8")


def dumps(flow: Any) -> bytes:
    return wrap(cloudpickle.dumps(flow))


def unwrap(data: bytes) -> tuple[bytes, dict[str, str]]:
    """Return (pickled bytes, writer versions). Raises ValueError if `data` is neither an
    envelope nor a bare pickle."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        if data[:1] == b"\x80":  # a pickle protocol >= 2 header: the pre-envelope format
            return data, {}
        raise ValueError("not a flow envelope (expected JSON with 'flow' and 'versions')") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("flow"), str):
        raise ValueError("not a flow envelope (expected JSON with 'flow' and 'versions')")
    versions = doc.get("versions") or {}
    if not isinstance(versions, dict):
        raise ValueError("not a flow envelope ('versions' is not an object)")
    return base64.b64decode(doc["flow"], validate=True), {str(k): str(v) for k, v in versions.items()}


def loads(data: bytes) -> Any:
    """Unpickle a flow from envelope bytes. Callers must verify the digest first."""
    pickled, versions = unwrap(data)
    mine = _versions()
    for name in ("cloudpickle", "python"):
        theirs = versions.get(name)
        if theirs and theirs != mine[name]:
            warnings.warn(
                f"This flow was stored with {name} {theirs} and is being loaded with {mine[name]}; "
                "loading may fail or behave differently.",
                RuntimeWarning,
                stacklevel=2,
            )
    return cloudpickle.loads(pickled)


def flow_from_script(source: bytes, *, flow_name: str | None, object_name: str | None) -> Any:
    """Execute a flow script in *this* process and return its flow object (agent side only:
    the operator never calls this; it uses the sandbox)."""
    return flow_from_compiled(compile(source, "<stored flow>", "exec"), flow_name=flow_name, object_name=object_name)


def flow_from_compiled(code: Any, *, flow_name: str | None, object_name: str | None) -> Any:
    """Run a compiled flow script in *this* process and return its flow object."""
    namespace: dict[str, Any] = {"__name__": "__flowstore_flow__"}
    exec(code, namespace)  # noqa: S102 - running the flow is the agent's job
    return find_flow_object(namespace, flow_name=flow_name, object_name=object_name)
