"""The operator's watch events lose managedFields before kopf keeps them (controller/watch_events.py),
through kopf's own watch stream as the installed kopf has it."""

from __future__ import annotations

import asyncio
from typing import Any

from kopf._cogs.clients import watching

from flowstore.controller.watch_events import drop_managed_fields, slim


def test_slim_drops_managed_fields_only() -> None:
    event = {"type": "MODIFIED", "object": {"metadata": {"name": "a", "managedFields": [{"manager": "x"}]},
                                            "spec": {"k": 1}}}
    assert slim(event) == {"type": "MODIFIED", "object": {"metadata": {"name": "a"}, "spec": {"k": 1}}}
    assert slim(watching.Bookmark.LISTED) is watching.Bookmark.LISTED  # kopf's markers pass through


def test_kopfs_watch_stream_is_wrapped(monkeypatch: Any) -> None:
    seen: list[dict[str, Any]] = [{"type": "ADDED", "object": {"metadata": {"name": "f", "managedFields": [{}]}}}]

    async def fake_stream(**_: Any) -> Any:
        for event in seen:
            yield event

    monkeypatch.setattr(watching, "infinite_watch", fake_stream)
    assert drop_managed_fields()
    assert drop_managed_fields()  # once: a second call does not wrap the wrapper
    assert watching.infinite_watch.__wrapped__ is fake_stream  # type: ignore[attr-defined]

    async def collect() -> list[Any]:
        stream = getattr(watching, "infinite_watch")  # noqa: B009 - called as kopf calls it, without its arguments
        return [e async for e in stream()]

    assert asyncio.run(collect()) == [{"type": "ADDED", "object": {"metadata": {"name": "f"}}}]
