"""``FairGate``: the turns of execution actors, taken round-robin across tenants.

Every transition of an execution (its messages applied, the change committed, the effects
performed) runs in a turn. At most ``capacity`` turns run at once in a process; an actor that
finds none free waits in its tenant's line, and a turn that ends is handed to the first actor
of the next tenant in the ring, so one tenant with ten thousand runnable executions has one
place in the ring like a tenant with one: the other tenant's execution waits for at most one
turn of each tenant ahead of it, not for the backlog. The commits of a tenant in flight are
bounded the same way, so its batches do not crowd the persistence actor's mailbox either.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio


class FairGate:
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("a gate needs at least one turn")
        self.capacity = capacity
        self._free = capacity
        self._lines: dict[str, deque[trio.Event]] = {}  # tenant -> actors waiting, in arrival order
        self._ring: deque[str] = deque()  # tenants with actors waiting, in the order their turn comes

    @property
    def waiting(self) -> int:
        return sum(len(line) for line in self._lines.values())

    @asynccontextmanager
    async def turn(self, tenant_id: str) -> AsyncIterator[None]:
        """Hold one turn while the block runs (waiting in the tenant's line for it)."""
        if self._free and not self._ring:
            self._free -= 1
        else:
            await self._wait(tenant_id)
        try:
            yield
        finally:
            self._hand_on()

    async def _wait(self, tenant_id: str) -> None:
        handed = trio.Event()
        line = self._lines.get(tenant_id)
        if line is None:
            line = self._lines[tenant_id] = deque()
            self._ring.append(tenant_id)
        line.append(handed)
        try:
            await handed.wait()
        except BaseException:
            if handed.is_set():  # handed a turn as it was cancelled: the next one takes it
                self._hand_on()
            else:
                self._leave(tenant_id, handed)
            raise

    def _leave(self, tenant_id: str, handed: trio.Event) -> None:
        line = self._lines[tenant_id]
        line.remove(handed)
        if not line:
            del self._lines[tenant_id]
            self._ring.remove(tenant_id)

    def _hand_on(self) -> None:
        """The turn goes to the first actor of the next tenant in the ring (which then goes to
        the back of the ring if more of its actors wait), else it is free."""
        if not self._ring:
            self._free += 1
            return
        tenant_id = self._ring.popleft()
        line = self._lines[tenant_id]
        handed = line.popleft()
        if line:
            self._ring.append(tenant_id)
        else:
            del self._lines[tenant_id]
        handed.set()
