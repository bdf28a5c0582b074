"""kopf's start with many objects, made linear.

Until its indexes are complete, kopf holds every object's event processing: during the first
listing it makes one toggle per object in a toggle set (``operator_indexed``), drops it once the
object is indexed, and every object's worker waits for the whole set. Each make and drop wakes
*every* waiting worker (``Condition.notify_all``), and each woken worker re-takes the
condition's lock in turn: with N objects, N² wake-ups. A restart with 10,000 StoredFlows spent
minutes there at full CPU before its first pass (measured: a SIGKILLed operator's successor had
served nothing 3 minutes after its start).

The waiters only wait for the set's state (all toggles on, or any) to change; a make or a drop
that does not change it needs to wake nobody. :func:`wake_only_on_change` makes
``ToggleSet.make_toggle``, ``drop_toggle`` and ``drop_toggles`` notify only when
``is_on()`` differs before and after. A toggle turned on or off by itself still notifies as
before (``Toggle.turn_to``). kopf has no setting for this; the patch replaces three methods of
``kopf._cogs.aiokits.aiotoggles.ToggleSet``. When a kopf release moves them, nothing breaks
but the saving: the operator logs it, and ``tests/unit/test_kopf_toggles.py`` fails.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

_MARK = "_flowstore_wakes_on_change"


def wake_only_on_change() -> bool:
    """Patch kopf's ToggleSet (once per process). Returns whether it is patched."""
    try:
        from kopf._cogs.aiokits import aiotoggles
    except ImportError:  # pragma: no cover - a kopf without that module
        logging.getLogger(__name__).warning("kopf's toggle sets were not found: a start with many objects is slow")
        return False
    cls: Any = getattr(aiotoggles, "ToggleSet", None)
    probe = cls(all) if cls is not None else None
    if probe is None or not all(hasattr(probe, n) for n in ("_condition", "_toggles", "is_on", "make_toggle",
                                                            "drop_toggle", "drop_toggles")):
        logging.getLogger(__name__).warning("kopf's toggle sets were not found: a start with many objects is slow")
        return False
    if getattr(cls, _MARK, False):
        return True
    toggle_cls = aiotoggles.Toggle

    async def make_toggle(self: Any, __val: bool = False, *, name: str | None = None) -> Any:
        toggle = toggle_cls(__val, name=name, condition=self._condition)
        async with self._condition:
            before = self.is_on()
            self._toggles.add(toggle)
            if self.is_on() != before:
                self._condition.notify_all()
        return toggle

    async def drop_toggle(self: Any, toggle: Any) -> None:
        async with self._condition:
            before = self.is_on()
            self._toggles.discard(toggle)
            if self.is_on() != before:
                self._condition.notify_all()

    async def drop_toggles(self: Any, toggles: Iterable[Any]) -> None:
        async with self._condition:
            before = self.is_on()
            self._toggles.difference_update(toggles)
            if self.is_on() != before:
                self._condition.notify_all()

    cls.make_toggle, cls.drop_toggle, cls.drop_toggles = make_toggle, drop_toggle, drop_toggles
    setattr(cls, _MARK, True)
    return True
