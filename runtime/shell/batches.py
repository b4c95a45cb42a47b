"""``Batches``: what the persistence actor's next group commit holds, shared fairly across tenants.

The persistence actor takes what waits in its mailbox into ``Batches`` and commits one batch
at a time. Alone, a tenant's changes go in arrival order, as many as ``max_batch``: the
fewer commits, the more throughput. While several tenants commit (a change of another tenant
was taken within the last ``window_s``), a batch holds at most ``fair_batch`` changes of any
one tenant (its oldest): a tenant flooding the engine no longer makes every commit cycle
long, and another tenant's change rides in the very next batch instead of waiting behind
the flood's backlog. What a tenant sent stays in the order it was
sent; changes of different tenants waiting at once were sent by different tasks, each
waiting for its own answer, so no order between them was ever promised.

A ``Flush`` (answered once everything sent before it is committed) is a barrier: a batch
never takes a change from behind one, and the flush goes out once all before it have.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

M = TypeVar("M")
SYSTEM = ""  # the tenant of changes that are no tenant's (audit checkpoints, receipts, sweeps)
WINDOW_S = 1.0
FAIR_BATCH = 8


class Batches(Generic[M]):
    def __init__(self, tenant_of: Callable[[M], Hashable | None], *, max_batch: int,
                 fair_batch: int = FAIR_BATCH, window_s: float = WINDOW_S) -> None:
        """``tenant_of``: a message's tenant, or None for a barrier (a flush)."""
        if max_batch < 1 or fair_batch < 1:
            raise ValueError("a batch holds at least one change")
        self.tenant_of = tenant_of
        self.max_batch = max_batch
        self.fair_batch = fair_batch
        self.window_s = window_s
        self._held: deque[M] = deque()
        self._seen: dict[Hashable, float] = {}  # tenant -> when a change of it was last taken

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, message: M) -> None:
        self._held.append(message)

    def drain(self) -> list[M]:
        """Everything held, in arrival order (to refuse it)."""
        held, self._held = list(self._held), deque()
        return held

    def shared(self, now: float) -> bool:
        """Whether more than one tenant committed within the window or waits now (the engine's
        own changes, no tenant's, do not count: they wait for nobody)."""
        for tenant, seen in list(self._seen.items()):
            if seen < now - self.window_s:
                del self._seen[tenant]
        tenants = set(self._seen)
        for message in self._held:
            tenant = self.tenant_of(message)
            if tenant is None:
                break
            if tenant != SYSTEM:
                tenants.add(tenant)
                if len(tenants) > 1:
                    return True
        return len(tenants) > 1

    def take(self, now: float) -> list[M]:
        """The next batch: up to the first barrier; a barrier at the front alone."""
        if not self._held:
            return []
        if self.tenant_of(self._held[0]) is None:
            return [self._held.popleft()]
        if not self.shared(now):  # one tenant: in arrival order, up to a barrier
            taken: list[M] = []
            while self._held and len(taken) < self.max_batch and self.tenant_of(self._held[0]) is not None:
                taken.append(self._held.popleft())
            self._note(taken, now)
            return taken
        counts: dict[Hashable, int] = {}
        taken = []
        kept: deque[M] = deque()
        barrier = False
        while self._held:
            message = self._held.popleft()
            tenant = self.tenant_of(message)
            if barrier or tenant is None:  # from a barrier on, nothing is taken
                barrier = True
                kept.append(message)
                continue
            count = counts.get(tenant, 0)
            if count >= self.fair_batch or len(taken) >= self.max_batch:
                kept.append(message)
                continue
            counts[tenant] = count + 1
            taken.append(message)
        self._held = kept
        self._note(taken, now)
        return taken

    def _note(self, taken: list[M], now: float) -> None:
        for message in taken:
            tenant = self.tenant_of(message)
            if tenant != SYSTEM:
                self._seen[tenant] = now
