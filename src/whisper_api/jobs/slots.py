"""Running places for jobs, handed out fairly between API keys.

A FIFO semaphore lets one key that queued eight jobs run all eight before another key's job that
came a moment later. Here a freed place goes to a waiting job of the key with the fewest jobs
running; among equals, of the key served longest ago (keys take turns); within a key, the
oldest. Without API keys every job has the same key, so the order is first come, first served.
"""

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class FairSlots:
    def __init__(self, size: int) -> None:
        self._free = size
        self._running: Counter[str | None] = Counter()
        self._waiting: list[tuple[str | None, asyncio.Future[None]]] = []
        self._served: dict[str | None, int] = {}  # each key's last turn
        self._turn = 0

    @asynccontextmanager
    async def place(self, tenant: str | None) -> AsyncIterator[None]:
        await self.acquire(tenant)
        try:
            yield
        finally:
            self.release(tenant)

    async def acquire(self, tenant: str | None) -> None:
        if self._free and not self._waiters():
            self._free -= 1
            self._serve(tenant)
            return
        entry = (tenant, asyncio.get_running_loop().create_future())
        self._waiting.append(entry)
        try:
            await entry[1]
        except asyncio.CancelledError:
            if entry[1].done() and not entry[1].cancelled():
                self.release(tenant)  # the place came as the job was cancelled: pass it on
            else:
                entry[1].cancel()
                self._waiting.remove(entry)
            raise

    def release(self, tenant: str | None) -> None:
        self._running[tenant] -= 1
        waiting = self._waiters()
        if not waiting:
            self._free += 1
            return
        index = min(waiting, key=lambda i: self._rank(self._waiting[i][0]))
        tenant, future = self._waiting.pop(index)
        self._serve(tenant)
        future.set_result(None)

    def _rank(self, tenant: str | None) -> tuple[int, int]:
        return self._running[tenant], self._served.get(tenant, 0)

    def _serve(self, tenant: str | None) -> None:
        self._running[tenant] += 1
        self._turn += 1
        self._served[tenant] = self._turn

    def _waiters(self) -> list[int]:
        """Where the jobs still waiting are listed: a cancelled one stays listed until its own
        task runs again and removes it, and is never handed a place."""
        return [i for i, (_, future) in enumerate(self._waiting) if not future.done()]
