"""``Lease``: this incarnation's hold on its executions, and what it does when the hold slips.

The incarnation's row is renewed every quarter of ``LEASE_TTL_MS`` (on a steady beat, however
long each renewal takes), by a task of its own on a
connection of its own (a worker thread outside the read lane: a burst of slow reads never
holds a renewal back). Each renewal tells what it found (``Renewal``):

- *renewed*: the hold lasts until the renewal was *sent* plus the TTL, less a margin
  (``MARGIN``: 15 % of the TTL, the time to stop what runs here). This process counts from the moment it sent the
  renewal; the database counts from the moment it ran it, never earlier: the hold here always
  ends first.
- *lapsed*: the row had run out before this renewal reached the database (the process
  stalled, or the network did): the other processes may have taken executions over. This
  process lets go of all of them (if it had not already), starts its heartbeat again and takes
  back those nobody took meanwhile (each under a new epoch).
- *replaced*: a later start of the same instance id took over. This process stops acting as
  an owner for good.

**Self-fencing.** When the hold ends without a renewal (the database or the network is away,
or the process was paused: ``SIGSTOP``, a long GC, a VM migration), this process stops
acting as an owner at once, before any other process may take over: ``holds()`` turns False
(checked on every request, so a process that wakes up past its hold never answers from
memory), and ``on_lost`` stops every execution here (their attempts in flight are cancelled).
When a renewal succeeds again, ``on_back`` takes back what is still this incarnation's.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from runtime.store.ledger import Renewal, Renewer

logger = logging.getLogger("runbooks.cluster")
MARGIN = 0.15  # of the TTL: the hold here ends this much before the database's
BEATS = 4  # renewals per TTL


class Lease:
    def __init__(self, renewer: Renewer, owner: str, ttl_s: float, ping: Callable[[int], str], *,
                 on_lost: Callable[[], None], on_back: Callable[[], Awaitable[None]],
                 on_replaced: Callable[[], None]) -> None:
        self._renewer = renewer
        self.owner = owner
        self.ttl_s = ttl_s
        self._ping = ping
        self._on_lost = on_lost
        self._on_back = on_back
        self._on_replaced = on_replaced
        self.held_until = -float("inf")  # trio time
        self.replaced = False
        self.fenced = False  # executions were let go of (the hold ended); none is run here now
        self._beats = 0
        self._renewed = trio.Event()

    @property
    def interval_s(self) -> float:
        return self.ttl_s / BEATS

    def holds(self) -> bool:
        """Whether this process may act as the owner of its executions now."""
        return not self.replaced and not self.fenced and trio.current_time() < self.held_until

    def registered(self, sent_at: float) -> None:
        """The incarnation's row was written by a request sent at ``sent_at`` (trio time)."""
        self.held_until = sent_at + self.ttl_s * (1 - MARGIN)

    async def run(self) -> None:
        """Renew until cancelled (or replaced); beside it, let go when the hold ends."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch)
                await self._renewing()
                nursery.cancel_scope.cancel()
        finally:
            self._renewer.close()

    async def _renewing(self) -> None:
        beat = trio.current_time()
        while True:
            beat = max(beat + self.interval_s, trio.current_time())
            await trio.sleep_until(beat)
            sent = trio.current_time()
            try:
                found = await self._call(self._renewer.renew, self.owner, self.ttl_s, self._ping(self._beats))
            except Exception as exc:  # the database is away: the next beat tries again
                logger.warning("heartbeat failed: %s", exc)
                continue
            self._beats += 1
            if found is None:
                continue
            if found == "replaced":
                self.replaced = True
                self._let_go()
                self._on_replaced()
                return
            if found == "lapsed":
                logger.error("this process's heartbeat ran out before it could renew it (it stalled, or the "
                             "database was out of reach): its executions may have been taken over")
                self._let_go()
                try:
                    rejoined = await self._call(self._renewer.rejoin, self.owner, self.ttl_s)
                except Exception as exc:  # the row stays lapsed: the next renewal says so again
                    logger.warning("heartbeat: rejoining failed: %s", exc)
                    continue
                if not rejoined:
                    continue  # (replaced meanwhile, or no answer: the next renewal says so)
            self.held_until = sent + self.ttl_s * (1 - MARGIN)
            self._renewed.set()
            self._renewed = trio.Event()
            if self.fenced:
                self.fenced = False
                logger.warning("heartbeat renewed: this process runs its executions again")
                await self._on_back()

    async def _call(self, job: Callable[..., Renewal | bool], *args: object) -> Renewal | bool | None:
        """``job`` in a worker thread of its own; abandoned (None) if it hangs past the hold
        (or past a beat, once the hold has ended): a slow answer is still worth waiting for
        while it can come in time, and a new connection costs more than the old one's wait."""
        started = trio.current_time()
        with trio.move_on_at(max(self.held_until, started + self.interval_s)):
            return await trio.to_thread.run_sync(job, *args, abandon_on_cancel=True,
                                                 limiter=trio.CapacityLimiter(1))
        self._renewer.abandon()
        logger.warning("heartbeat: the database did not answer within %.2f s", trio.current_time() - started)
        return None

    async def _watch(self) -> None:
        """Let go of every execution when the hold ends without a renewal."""
        while True:
            renewed = self._renewed
            await trio.sleep_until(self.held_until)
            if trio.current_time() >= self.held_until and not self.fenced:
                logger.error("this process could not renew its heartbeat in time: it stops running its "
                             "executions before another process may take them over")
                self._let_go()
            await renewed.wait()

    def _let_go(self) -> None:
        if not self.fenced:
            self.fenced = True
            self._on_lost()
