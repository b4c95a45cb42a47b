"""Leases: which process owns which execution when several share one PostgreSQL database.

A process owns an execution while it holds its lease row (owner, expires_at). It claims the
lease of every execution it starts (in its own transaction, right after the start commits)
and, on a heartbeat every third of ``LEASE_TTL_MS``, renews what it holds, lets go of what it
finished, stops the actors of executions whose lease it lost, and takes over every
unfinished execution whose lease has expired (its owner died): recovery again. Claims are
decided by PostgreSQL under row locks, so two processes never both own one execution.
Stores without ``supports_leases`` (memory, SQLite: one process per store) skip all this.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import trio

logger = logging.getLogger("runbooks.leases")


class LeaseStore(Protocol):
    def claim(self, owner: str, ttl_s: float, fresh: Any = ()) -> list[str]: ...
    def renew(self, owner: str, ttl_s: float) -> set[str]: ...
    def release(self, owner: str, execution_ids: Any, *, finished: bool = False) -> None: ...


class Leases:
    def __init__(self, store: LeaseStore, ttl_ms: int, read: Callable[..., Awaitable[Any]]) -> None:
        self.store = store
        self.owner = uuid.uuid4().hex
        self.ttl_s = ttl_ms / 1000
        self._read = read
        self._finished: set[str] = set()

    async def claim_new(self, execution_id: str) -> bool:
        """Own an execution this process just started (or is about to run again)."""
        claimed: list[str] = await self._read(self.store.claim, self.owner, self.ttl_s, [execution_id])
        return execution_id in claimed

    async def claim_expired(self) -> list[str]:
        """Own every unfinished execution whose lease expired (or never was taken)."""
        return list(await self._read(self.store.claim, self.owner, self.ttl_s))

    def finished(self, execution_id: str) -> None:
        self._finished.add(execution_id)

    async def release_all(self, execution_ids: list[str]) -> None:
        """At shutdown: let another process take over what ran here at once."""
        await self._read(self.store.release, self.owner, execution_ids)
        await self._read(lambda: self.store.release(self.owner, sorted(self._finished), finished=True))

    async def heartbeat(self, live: Callable[[], set[str]], lost: Callable[[str], None],
                        take_over: Callable[[str], Awaitable[None]]) -> None:
        """Every ttl/3: release finished, renew held, stop lost, take over expired."""
        while True:
            await trio.sleep(self.ttl_s / 3)
            try:
                await self._beat(live, lost, take_over)
            except Exception as exc:  # the database is away: the next beat tries again
                logger.warning("lease heartbeat failed: %s", exc)

    async def _beat(self, live: Callable[[], set[str]], lost: Callable[[str], None],
                    take_over: Callable[[str], Awaitable[None]]) -> None:
        if self._finished:
            done, self._finished = sorted(self._finished), set()
            await self._read(lambda: self.store.release(self.owner, done, finished=True))
        running = live()  # before renewing: what starts meanwhile is claimed, not lost
        held: set[str] = await self._read(self.store.renew, self.owner, self.ttl_s)
        for execution_id in running - held:
            if execution_id not in live():
                continue  # finished meanwhile
            logger.warning("lost the lease of execution %s: stopping it here", execution_id)
            lost(execution_id)
        for execution_id in await self.claim_expired():
            if execution_id not in live():
                logger.info("taking over execution %s", execution_id)
                await take_over(execution_id)
