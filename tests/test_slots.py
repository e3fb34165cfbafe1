"""Job places handed out fairly between API keys (jobs/slots.py)."""

import asyncio

from whisper_api.jobs.slots import FairSlots


async def _take(slots: FairSlots, tenant: str | None, order: list[str], name: str,
                hold: asyncio.Event) -> None:
    async with slots.place(tenant):
        order.append(name)
        await hold.wait()


async def _started(order: list[str], count: int) -> None:
    for _ in range(200):
        if len(order) >= count:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"only {order} started")


def _run_in_turn(jobs: list[tuple[str | None, str]], size: int) -> list[str]:
    """Start `jobs` (key, name) in this order; let them finish one at a time; the start order."""
    async def scenario() -> list[str]:
        slots, order = FairSlots(size), []
        holds = {name: asyncio.Event() for _, name in jobs}
        tasks = {}
        for tenant, name in jobs:
            tasks[name] = asyncio.create_task(_take(slots, tenant, order, name, holds[name]))
            await asyncio.sleep(0)  # each one waits before the next arrives
        for count in range(size, len(jobs) + 1):
            await _started(order, count)
            holds[order[count - size]].set()
        for hold in holds.values():  # the last ones
            hold.set()
        await asyncio.wait_for(asyncio.gather(*tasks.values()), 5)
        return order

    return asyncio.run(scenario())


def test_keys_take_turns_for_a_freed_place() -> None:
    # a's four jobs came first, then b's and c's: b and c do not wait for all of a's.
    jobs = [("a", "a1"), ("a", "a2"), ("a", "a3"), ("a", "a4"), ("b", "b1"), ("c", "c1")]
    assert _run_in_turn(jobs, 1) == ["a1", "b1", "c1", "a2", "a3", "a4"]
    assert _run_in_turn(jobs, 2) == ["a1", "a2", "b1", "c1", "a3", "a4"]


def test_without_keys_first_come_first_served() -> None:
    jobs = [(None, f"j{i}") for i in range(5)]
    assert _run_in_turn(jobs, 2) == [f"j{i}" for i in range(5)]


def test_a_cancelled_waiter_loses_no_place() -> None:
    async def scenario() -> list[str]:
        slots, order = FairSlots(1), []
        hold, free = asyncio.Event(), asyncio.Event()
        free.set()
        first = asyncio.create_task(_take(slots, "a", order, "a1", hold))
        await _started(order, 1)
        gone = asyncio.create_task(_take(slots, "b", order, "b1", free))
        late = asyncio.create_task(_take(slots, "c", order, "c1", free))
        await asyncio.sleep(0)
        gone.cancel()  # cancelled while waiting: c1 gets the place
        hold.set()
        await asyncio.wait_for(asyncio.gather(first, late), 5)
        # And one handed the place as it is cancelled passes it on.
        again = FairSlots(1)
        async with again.place("a"):
            granted = asyncio.create_task(again.acquire("b"))
            after = asyncio.create_task(_take(again, "c", order, "c2", free))
            await asyncio.sleep(0)
        granted.cancel()
        await asyncio.wait_for(after, 5)
        return order

    assert asyncio.run(scenario()) == ["a1", "c1", "c2"]
