"""A source's message published once: its receipt commits with the event's deliveries.

An event that comes from a source (a signed webhook, a bus message) carries a ``Delivery``:
its source and the message's own id. Its event id is derived from both, so the executions
its event rules start (idempotency key ``...:event:<event id>``) are the same ones however
often the message arrives. The receipt of the message is written in the same commit as
what the event becomes, and a store that already holds the receipt writes nothing of that
commit, so a message delivered again (a sender's retry, a bus redelivery after a crash,
another process taking the same message) has no second effect, and the caller is told
``duplicate``.

With several processes (PostgreSQL) that commit is the publish itself: the receipt and a
command for every waiting step, or the retained event, in one transaction
(``Routing.publish``). With one process (memory, SQLite), waiting steps are known in memory and each commits its
own delivery. The messages in hand (a bus's fetched batch: ``publish_many``) are looked up
first, in one read; one taken before is a duplicate, and no other publish here takes the
same message until this one is done. The event of a new message for exactly one waiting
step is handed to it with its receipt, which commits with the step taking it: one commit,
as for a publish without a receipt, and a store that holds the receipt already refuses
that commit whole. Any other event (for several steps, for none, or its step stopped
waiting meanwhile): the receipt is committed first with the steps the event is for
(``pending``), the event is handed to them, and a second commit settles the receipt (and
retains the event if none took it). A restart in between hands the event to the same steps
again (``resume``): a step that took it no longer waits, so none takes it twice.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any

import attrs
import trio

from runtime.api.access import CommitChange, Read
from runtime.api.routing import Routing, Rules
from runtime.model import Event
from runtime.model.jsonsafe import json_size
from runtime.model.records import Change, Delivery, Receipt
from runtime.shell.clock import Clock
from runtime.shell.events import EventRouter, PublishResult
from runtime.shell.settings import Settings
from runtime.store.base import Store

logger = logging.getLogger("runbooks.sources")
AT_ONCE = 64  # the messages of one batch being published at once (each waits for its commit)
Item = tuple[str, str, object, str, Delivery]  # (event type, correlation key, payload, tenant, delivery)
SWEEP_EVERY_S = 3600.0  # settled receipts past their keep time are deleted this often


def event_id_of(delivery: Delivery) -> str:
    """The id of the event a delivery becomes: the same for every arrival of one message."""
    digest = hashlib.sha256(f"{delivery.source_id}\x00{delivery.delivery_id}".encode()).hexdigest()
    return f"src-{digest[:28]}"


@attrs.define(eq=False)
class OncePublisher:
    store: Store
    read: Read
    commit: CommitChange
    clock: Clock
    settings: Settings
    router: EventRouter
    routing: Routing
    _in_flight: dict[tuple[str, str], trio.Event] = attrs.field(factory=dict, init=False)

    async def publish(self, event_type: str, key: str, payload: object, tenant_id: str, delivery: Delivery,
                      rules: Rules) -> PublishResult:
        """Publish the event of ``delivery`` unless its message was taken before."""
        [result] = await self.publish_many([(event_type, key, payload, tenant_id, delivery)], rules)
        if isinstance(result, BaseException):
            raise result
        return result

    async def publish_many(self, items: Sequence[Item], rules: Rules) -> list[PublishResult | Exception]:
        """Publish the events of many messages (a bus's fetched batch), each unless taken
        before; each item's result, or the error that item met (the others go on)."""
        taken = [self._taken(*item) for item in items]
        if self.routing.cluster is not None:
            return await _each(taken, lambda event, receipt: self.routing.publish(
                event.tenant_id, event.type, event.correlation_key, event.payload, rules=rules, event=event,
                receipt=receipt))
        mine: set[int] = set()  # the items whose message no other publish here has in hand
        for index, (_, receipt) in enumerate(taken):
            ident = (receipt.source_id, receipt.delivery_id)
            if ident not in self._in_flight:
                self._in_flight[ident] = trio.Event()
                mine.add(index)
        def release(index: int) -> None:
            if index in mine:
                mine.discard(index)
                receipt = taken[index][1]
                self._in_flight.pop((receipt.source_id, receipt.delivery_id)).set()

        try:
            known = await self._known([receipt for index, (_, receipt) in enumerate(taken) if index in mine])

            async def one(index: int, event: Event, receipt: Receipt) -> PublishResult:
                if index not in mine:  # the same message in hand here: after it, decided by its commit
                    return await self._publish_after(event, receipt, rules)
                try:
                    if (receipt.source_id, receipt.delivery_id) in known:
                        return PublishResult(0, False, event.id, duplicate=True)
                    return await self._publish_new(event, receipt, rules)
                finally:
                    release(index)

            return await _each([(index, *pair) for index, pair in enumerate(taken)], one)
        finally:
            for index in list(mine):  # (the read failed: none was published)
                release(index)

    def _taken(self, event_type: str, key: str, payload: object, tenant_id: str,
               delivery: Delivery) -> tuple[Event, Receipt]:
        event = self.router.new_event(tenant_id, event_type, key, payload, event_id_of(delivery))
        return event, Receipt(delivery.source_id, delivery.delivery_id, tenant_id, event.id, event.received_at,
                              event.received_at + timedelta(milliseconds=delivery.keep_ms))

    async def _known(self, receipts: list[Receipt]) -> set[tuple[str, str]]:
        """Which of these messages were taken before: one read per source."""
        by_source: dict[str, list[str]] = {}
        for receipt in receipts:
            by_source.setdefault(receipt.source_id, []).append(receipt.delivery_id)
        known: set[tuple[str, str]] = set()
        for source_id, ids in by_source.items():
            known.update((source_id, found) for found in await self.read(self.store.receipts_known, source_id, ids))
        return known

    async def _publish_after(self, event: Event, receipt: Receipt, rules: Rules) -> PublishResult:
        ident = (receipt.source_id, receipt.delivery_id)
        while (first := self._in_flight.get(ident)) is not None:  # the same message twice at once here:
            await first.wait()  # the second waits for the first's commit, which then decides
        done = self._in_flight[ident] = trio.Event()
        try:
            return await self._publish_here(event, receipt, await rules(event))
        finally:
            del self._in_flight[ident]
            done.set()

    async def _publish_new(self, event: Event, receipt: Receipt, rules: Rules) -> PublishResult:
        """A message not taken before (and in hand here only): an event for one waiting step
        is handed to it with its receipt, committed with the step taking it (one commit, as a
        publish without a receipt); any other goes the way that survives a restart midway."""
        started = await rules(event)
        targets = self.router.waiting_on(event)
        if len(targets) == 1 and await self.router.hand(*targets[0], event, receipt):
            return PublishResult(started + 1, False, event.id)
        return await self._publish_here(event, receipt, started)  # (none took it: as if none waited)

    async def _publish_here(self, event: Event, receipt: Receipt, started: int) -> PublishResult:
        """One process: the receipt with the steps the event is for (or the event retained)."""
        targets = tuple(self.router.waiting_on(event))
        if targets:
            pending = attrs.evolve(receipt, pending=targets, event=event)
            if (await self.commit(Change(receipt=pending))).duplicate:
                return PublishResult(0, False, event.id, duplicate=True)
            delivered = await self._hand(pending, retain=not started)
            return PublishResult(started + delivered, False, event.id)
        keep = not started and self.router.retains
        if keep:
            self.router.retained.check_room(event.tenant_id, event.received_at, json_size(event.payload))
        with trio.CancelScope(shield=True):  # once committed, the retained event is the router's too
            result = await self.commit(Change(receipt=receipt, retain_events=(event,) if keep else ()))
            if result.duplicate:
                return PublishResult(0, False, event.id, duplicate=True)
            if keep:
                self.router.retained.add(event)
        return PublishResult(started, keep, event.id)

    async def _hand(self, receipt: Receipt, *, retain: bool) -> int:
        """Hand a pending receipt's event to its steps, then settle it; how many took it."""
        event = receipt.event
        assert event is not None and receipt.pending is not None
        delivered = 0
        for execution_id, step_id in receipt.pending:
            delivered += await self.router.hand(execution_id, step_id, event)
        keep = retain and not delivered and self.router.retains
        with trio.CancelScope(shield=True):
            await self.commit(Change(settle=((receipt.source_id, receipt.delivery_id),),
                                     retain_events=(event,) if keep else ()))
            if keep:
                self.router.retained.add(event)
        return delivered

    async def resume(self) -> None:
        """After a restart: hand the events of receipts not settled to their steps."""
        for receipt in await self.read(self.store.pending_receipts):
            logger.info("source %s: handing on message %s taken before the restart", receipt.source_id,
                        receipt.delivery_id)
            await self._hand(receipt, retain=True)

    async def sweep(self) -> None:
        """Delete settled receipts past their keep time, every ``SWEEP_EVERY_S``."""
        while True:
            await trio.sleep(SWEEP_EVERY_S)
            try:
                await self.commit(Change(expire_receipts_at=self.clock.now()))
            except Exception as exc:  # the store is down: the next sweep deletes them
                logger.warning("sweeping expired receipts failed: %s", exc)


async def _each(items: Sequence[tuple[Any, ...]], publish: Callable[..., Awaitable[PublishResult]],
                ) -> list[PublishResult | Exception]:
    """``publish(*item)`` for every item, ``AT_ONCE`` at a time, in order (a message's repeat
    starts after it); each one's result or error."""
    results: list[PublishResult | Exception] = [RuntimeError("not published")] * len(items)
    positions = iter(range(len(items)))

    async def worker() -> None:
        for index in positions:
            try:
                results[index] = await publish(*items[index])
            except Exception as exc:  # (this item's: the others go on)
                results[index] = exc

    if len(items) == 1:
        await worker()
        return results
    async with trio.open_nursery() as nursery:
        for _ in range(min(len(items), AT_ONCE)):
            nursery.start_soon(worker)
    return results
