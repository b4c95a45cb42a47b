"""The EventRouter: who waits for which (tenant, type, correlationKey), and retained events.

Waiting steps subscribe here when they park (a ``Subscribe`` effect of their execution) and
stay subscribed while their execution is parked with no actor. ``publish`` hands an event
to every waiter whose filter it passes, as a ``DeliverEvent`` message to the waiter's
execution (reactivating it if it is parked), which commits the step's outcome before it
answers; nothing polls. An event that no waiter takes is committed to the store as
retained (``EVENT_RETENTION_MS``) and handed to the first step that later waits on it;
``runtime.shell.retained`` bounds those in time and per tenant.

Subscribing is a synchronous call from an execution actor (Trio runs one task at a time,
so it is atomic without locks, and it cannot deadlock against a delivery in flight).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import attrs

from actors import ActorGone, Reply
from runtime.core.messages import DeliverEvent
from runtime.model import Event
from runtime.model.errors import RunbookError
from runtime.model.jsonsafe import json_size
from runtime.model.records import Change, Receipt
from runtime.shell.retained import Filter, RetainedEvents, passes

_Key = tuple[str, str, str]
Ask = Callable[[str, Callable[[Reply[bool]], DeliverEvent]], Awaitable[bool]]


@attrs.frozen
class PublishResult:
    delivered: int
    retained: bool
    event_id: str
    duplicate: bool = False  # a source's message taken before: nothing was published again
    refused_by_filter: int = 0  # steps that wait on this type and key but whose filter refused the event


__all__ = ["EventRouter", "PublishResult", "passes"]


class EventRouter:
    def __init__(self, *, now: Callable[[], datetime], retention_ms: int,
                 commit: Callable[[Change], Awaitable[Any]], ask: Ask, max_retained_per_tenant: int,
                 max_retained_bytes_per_tenant: int = 64 * 1024 * 1024) -> None:
        self._now = now
        self._retention = timedelta(milliseconds=retention_ms)
        self._commit = commit
        self._ask = ask
        self._waiters: dict[_Key, dict[tuple[str, str], Filter]] = {}  # -> (execution, step) -> filter
        self.retained = RetainedEvents(max_retained_per_tenant, max_retained_bytes_per_tenant)

    def load_retained(self, events: list[Event]) -> None:
        for event in events:
            self.retained.add(event)

    @property
    def waiting(self) -> int:
        return sum(len(w) for w in self._waiters.values())

    def subscribe(self, tenant_id: str, event_type: str, key: str, execution_id: str, step_id: str,
                  condition: Filter) -> Event | None:
        """Register a waiter; returns a retained event it takes at once (the caller commits its consumption)."""
        taken = self.retained.take((tenant_id, event_type, key), condition, self._now)
        if taken is None:
            self._waiters.setdefault((tenant_id, event_type, key), {})[(execution_id, step_id)] = condition
        return taken

    def unsubscribe(self, tenant_id: str, event_type: str, key: str, execution_id: str, step_id: str) -> None:
        waiters = self._waiters.get((tenant_id, event_type, key))
        if waiters is not None:
            waiters.pop((execution_id, step_id), None)
            if not waiters:
                del self._waiters[(tenant_id, event_type, key)]

    def new_event(self, tenant_id: str, event_type: str, key: str, payload: Any, event_id: str | None = None) -> Event:
        now = self._now()
        return Event(event_id or uuid.uuid4().hex, tenant_id, event_type, key, payload, now, now + self._retention)

    @property
    def retains(self) -> bool:
        """Whether events nobody waits for are kept (``EVENT_RETENTION_MS`` above 0)."""
        return bool(self._retention)

    def waiting_on(self, event: Event) -> list[tuple[str, str]]:
        """(execution id, step id) of every step waiting now for this event (its filter passes)."""
        waiters = self._waiters.get((event.tenant_id, event.type, event.correlation_key), {})
        return [target for target, condition in waiters.items() if passes(condition, event)]

    async def hand(self, execution_id: str, step_id: str, event: Event, receipt: Receipt | None = None) -> bool:
        """Deliver to one step; whether it took the event (committed before this returns, with
        ``receipt`` if given)."""
        return await self._deliver(execution_id, step_id, event, receipt)

    def check_room(self, tenant_id: str) -> None:
        """Raise ``LimitExceeded`` if the tenant holds as many retained events as it may."""
        self.retained.check_room(tenant_id, self._now())

    async def publish(self, tenant_id: str, event_type: str, key: str, payload: Any,
                      rules: Callable[[Event], Awaitable[int]] | None = None) -> PublishResult:
        """``rules``: the event rules of runbooks; the executions they start count as deliveries."""
        event = self.new_event(tenant_id, event_type, key, payload)
        now = event.received_at
        waiters = list(self._waiters.get((tenant_id, event_type, key), {}).items())
        delivered = await rules(event) if rules is not None else 0
        refused = 0
        for (execution_id, step_id), condition in waiters:
            if not passes(condition, event):
                refused += 1
            elif await self._deliver(execution_id, step_id, event):
                delivered += 1
        if delivered or not self._retention:  # EVENT_RETENTION_MS=0: nothing is retained
            return PublishResult(delivered, False, event.id, refused_by_filter=refused)
        self.retained.check_room(tenant_id, now, json_size(payload))  # LimitExceeded past the tenant's caps
        self.retained.add(event)
        await self._commit(Change(retain_events=(event,)))
        return PublishResult(0, True, event.id, refused_by_filter=refused)

    async def _deliver(self, execution_id: str, step_id: str, event: Event, receipt: Receipt | None = None) -> bool:
        try:
            return await self._ask(execution_id, lambda reply: DeliverEvent(step_id, event, reply, receipt))
        except (ActorGone, RunbookError):
            return False
