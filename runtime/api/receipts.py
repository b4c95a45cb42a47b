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
(``Routing.publish``). With one process (memory, SQLite), waiting steps are known in
memory and each commits its own delivery; here the receipt is committed first with the
steps the event is for (``pending``), the event is handed to them, and a second commit
settles the receipt (and retains the event if none took it). A restart in between hands the
event to the same steps again (``resume``): a step that took it no longer waits, so none
takes it twice.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import timedelta

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
        event = self.router.new_event(tenant_id, event_type, key, payload, event_id_of(delivery))
        ident = (delivery.source_id, delivery.delivery_id)
        receipt = Receipt(delivery.source_id, delivery.delivery_id, tenant_id, event.id, event.received_at,
                          event.received_at + timedelta(milliseconds=delivery.keep_ms))
        if self.routing.cluster is not None:
            return await self.routing.publish(tenant_id, event_type, key, payload, rules=rules, event=event,
                                              receipt=receipt)
        while (first := self._in_flight.get(ident)) is not None:  # the same message twice at once here:
            await first.wait()  # the second waits for the first's commit, which then decides
        done = self._in_flight[ident] = trio.Event()
        try:
            return await self._publish_here(event, receipt, rules)
        finally:
            del self._in_flight[ident]
            done.set()

    async def _publish_here(self, event: Event, receipt: Receipt, rules: Rules) -> PublishResult:
        """One process: the receipt with the steps the event is for (or the event retained)."""
        started = await rules(event)
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
