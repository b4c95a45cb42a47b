"""``FairGate``: the turns of execution actors, taken round-robin across tenants.

Every transition of an execution (its messages applied, the change committed, the effects
performed) runs in a turn. At most ``capacity`` turns run at once in a process; an actor that
finds none free waits in its tenant's line, and a turn that ends is handed to the first actor
of the waiting tenant that holds the fewest turns (in ring order among equals), so one tenant
with ten thousand runnable executions has one place in the ring like a tenant with one.

A tenant holding fewer turns than an equal share of the capacity (among the tenants holding
turns), with none of its actors in line, is not made to wait at all: it borrows a turn beyond
the capacity, and the next turn that ends repays it instead of being handed on. So a quiet
tenant's execution starts its transition at once while a flood holds every turn, and the
turns out stay within twice the capacity, back to it as turns end. The commits of a tenant
in flight are bounded the same way, so its batches do not crowd the persistence actor's
mailbox either (which shares its batches by tenant too: ``runtime.shell.batches``).
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
        self._held: dict[str, int] = {}  # tenant -> turns it holds
        self._borrowed = 0  # turns beyond capacity taken by tenants below their share, repaid by turns that end

    @property
    def waiting(self) -> int:
        return sum(len(line) for line in self._lines.values())

    @asynccontextmanager
    async def turn(self, tenant_id: str) -> AsyncIterator[None]:
        """Hold one turn while the block runs (waiting in the tenant's line for it)."""
        if self._free and not self._ring:
            self._free -= 1
            self._count(tenant_id, 1)
        elif self._below_share(tenant_id) and self._borrowed < self.capacity:
            self._borrowed += 1  # a tenant below its share is not made to wait behind others' turns
            self._count(tenant_id, 1)
        else:
            await self._wait(tenant_id)
        try:
            yield
        finally:
            self._release(tenant_id)

    def _below_share(self, tenant_id: str) -> bool:
        """Whether the tenant, with none of its actors in line, holds fewer turns than an equal
        share of the capacity among the tenants holding turns."""
        if tenant_id in self._lines:
            return False
        tenants = len(self._held) + (tenant_id not in self._held)
        return self._held.get(tenant_id, 0) < self.capacity // tenants

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
                self._release(tenant_id)
            else:
                self._leave(tenant_id, handed)
            raise

    def _count(self, tenant_id: str, more: int) -> None:
        held = self._held.get(tenant_id, 0) + more
        if held:
            self._held[tenant_id] = held
        else:
            del self._held[tenant_id]

    def _release(self, tenant_id: str) -> None:
        self._count(tenant_id, -1)
        self._hand_on()

    def _leave(self, tenant_id: str, handed: trio.Event) -> None:
        line = self._lines[tenant_id]
        line.remove(handed)
        if not line:
            del self._lines[tenant_id]
            self._ring.remove(tenant_id)

    def _hand_on(self) -> None:
        """The turn goes to the first actor of the waiting tenant holding the fewest turns, the
        first in the ring among equals (which then goes to the back of the ring if more of its
        actors wait), else it is free."""
        if self._borrowed:  # the turn repays one borrowed: the turns out go back to capacity
            self._borrowed -= 1
            return
        if not self._ring:
            self._free += 1
            return
        tenant_id = min(self._ring, key=lambda tenant: self._held.get(tenant, 0))
        self._ring.remove(tenant_id)
        line = self._lines[tenant_id]
        handed = line.popleft()
        if line:
            self._ring.append(tenant_id)
        else:
            del self._lines[tenant_id]
        self._count(tenant_id, 1)  # (counted as it is handed: the next hand-on sees it held)
        handed.set()
