"""What kopf keeps of each watched object, made smaller.

The work queue keeps the last body the watch delivered of every FlowStorage and StoredFlow, for
as long as the object lives (runtime.py, packed), and kopf's per-object worker holds it while the
object is busy. About half of a StoredFlow's body in memory is ``metadata.managedFields``: the
API server's record of which client set which field (server-side apply), some 11 KB of small dicts per flow once the
operator has written its status. Neither kopf nor flowstore reads it, and a patch flowstore
or kopf sends never names it, so the watch events lose it before anything keeps them.

kopf has no setting for this; :func:`drop_managed_fields` wraps its watch stream
(``kopf._cogs.clients.watching.infinite_watch``, looked up by kopf's queueing at each call).
When a kopf release moves it, nothing breaks but the saving: the operator logs it, and
``tests/unit/test_watch_events.py`` fails so the wrapper gets updated.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

_MARK = "_flowstore_slim"


def slim(raw_event: Any) -> Any:
    """The watch event without its object's managedFields (the same event, changed in place)."""
    if isinstance(raw_event, dict):
        obj = raw_event.get("object")
        meta = obj.get("metadata") if isinstance(obj, dict) else None
        if isinstance(meta, dict):
            meta.pop("managedFields", None)
    return raw_event


def drop_managed_fields() -> bool:
    """Wrap kopf's watch stream so that events lose managedFields (once per process). Returns
    whether kopf's stream is wrapped."""
    try:
        from kopf._cogs.clients import watching
    except ImportError:  # pragma: no cover - a kopf without that module
        logging.getLogger(__name__).warning("kopf's watch stream was not found: objects keep their managedFields")
        return False
    stream: Callable[..., AsyncIterator[Any]] | None = getattr(watching, "infinite_watch", None)
    if stream is None:
        logging.getLogger(__name__).warning("kopf's watch stream was not found: objects keep their managedFields")
        return False
    if getattr(stream, _MARK, False):
        return True

    @functools.wraps(stream)
    async def slimmed(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        async for raw_event in stream(*args, **kwargs):
            yield slim(raw_event)

    setattr(slimmed, _MARK, True)
    watching.infinite_watch = slimmed  # type: ignore[assignment]
    return True
