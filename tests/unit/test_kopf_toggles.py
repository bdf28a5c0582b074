"""kopf's toggle sets wake their waiters only when the set's state changes (controller/kopf_toggles.py):
kopf's start holds every object's worker on one set until all are indexed, and waking all of them
at every drop made a start with N objects cost N² wake-ups. Real kopf classes, no server."""

from __future__ import annotations

import asyncio

from kopf._cogs.aiokits import aiotoggles

from flowstore.controller.kopf_toggles import wake_only_on_change

N = 2000


async def start_like_kopf(n: int) -> tuple[int, int]:
    """n objects: a toggle each, n workers waiting for the whole set, the toggles dropped one by
    one. Returns (notify_all calls, workers that got through)."""
    indexed = aiotoggles.ToggleSet(all)
    notifies = 0
    real = indexed._condition.notify_all

    def counting() -> None:
        nonlocal notifies
        notifies += 1
        real()

    indexed._condition.notify_all = counting  # type: ignore[method-assign]
    toggles = [await indexed.make_toggle(name=str(i)) for i in range(n)]
    passed = 0

    async def worker() -> None:
        nonlocal passed
        await indexed.wait_for(True)
        passed += 1

    workers = [asyncio.ensure_future(worker()) for _ in range(n)]
    await asyncio.sleep(0)
    assert passed == 0
    for toggle in toggles:
        await indexed.drop_toggle(toggle)
    await asyncio.wait_for(asyncio.gather(*workers), 30)
    return notifies, passed


def test_the_waiters_are_woken_once_when_the_set_turns_on_and_all_get_through() -> None:
    assert wake_only_on_change()
    assert wake_only_on_change()  # once per process
    notifies, passed = asyncio.run(start_like_kopf(N))
    assert passed == N
    assert notifies <= 2  # kopf's own methods notified 2 * N times (every make and every drop)


def test_a_set_that_does_not_change_state_wakes_nobody_and_one_that_does_wakes_all() -> None:
    wake_only_on_change()

    async def scenario() -> None:
        paused = aiotoggles.ToggleSet(any)  # kopf's pausing set: on while any toggle is on
        woken: list[str] = []

        async def waiter() -> None:
            await paused.wait_for(True)
            woken.append("on")

        task = asyncio.ensure_future(waiter())
        off = await paused.make_toggle(False)
        await asyncio.sleep(0.01)
        assert not woken
        on = await paused.make_toggle(True)
        await asyncio.wait_for(task, 5)
        assert woken == ["on"]
        await paused.drop_toggles([on, off])
        assert paused.is_off()

    asyncio.run(scenario())
