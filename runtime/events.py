"""The EventRouter: who waits for which (tenant, type, correlationKey), and retained events.

Waiting steps register here when they park; ``publish`` hands an event to every waiter as a
``DeliverEvent`` message to the waiter's ExecutionActor, which commits the step's outcome
before it answers; nothing polls. An event that no waiter takes is committed to the store
as retained (``EVENT_RETENTION_MS``) and handed to the first step that later waits on it.

Registration is a synchronous call from the ExecutionActor (Trio runs one task at a time, so
it is atomic without locks, and it cannot deadlock against a delivery in flight).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import attrs

from actors import ActorGone, Address, ask
from runtime.messages import DeliverEvent, ExecutionMessage
from runtime.model import Event
from runtime.records import Change

_Key = tuple[str, str, str]
Matcher = Callable[[Event], bool]


@attrs.frozen
class PublishResult:
    delivered: int
    retained: bool
    event_id: str


@attrs.frozen
class _Waiter:
    execution_id: str
    step_id: str
    matches: Matcher


class EventRouter:
    def __init__(
        self,
        *,
        now: Callable[[], datetime],
        retention_ms: int,
        commit: Callable[[Change], Awaitable[Any]],
        address: Callable[[str], Address[ExecutionMessage] | None],
    ) -> None:
        self._now = now
        self._retention = timedelta(milliseconds=retention_ms)
        self._commit = commit
        self._address = address
        self._waiters: dict[_Key, dict[tuple[str, str], _Waiter]] = {}
        self._retained: dict[_Key, list[Event]] = {}

    def load_retained(self, events: list[Event]) -> None:
        for event in events:
            self._retained.setdefault((event.tenant_id, event.type, event.correlation_key), []).append(event)

    @property
    def waiting(self) -> int:
        return sum(len(w) for w in self._waiters.values())

    def subscribe(self, tenant_id: str, event_type: str, key: str, execution_id: str, step_id: str,
                  matches: Matcher) -> Event | None:
        """Register a waiter; returns a retained event it takes at once (the caller commits its consumption)."""
        taken = self._take_retained((tenant_id, event_type, key), matches)
        if taken is None:
            waiters = self._waiters.setdefault((tenant_id, event_type, key), {})
            waiters[(execution_id, step_id)] = _Waiter(execution_id, step_id, matches)
        return taken

    def unsubscribe(self, tenant_id: str, event_type: str, key: str, execution_id: str, step_id: str) -> None:
        waiters = self._waiters.get((tenant_id, event_type, key))
        if waiters is not None:
            waiters.pop((execution_id, step_id), None)
            if not waiters:
                del self._waiters[(tenant_id, event_type, key)]

    def _take_retained(self, key: _Key, matches: Matcher) -> Event | None:
        events = self._retained.get(key)
        if not events:
            return None
        now = self._now()
        events[:] = [e for e in events if e.expires_at is None or e.expires_at > now]
        for index, event in enumerate(events):
            if matches(event):
                del events[index]
                return event
        return None

    async def publish(self, tenant_id: str, event_type: str, key: str, payload: Any) -> PublishResult:
        now = self._now()
        event = Event(uuid.uuid4().hex, tenant_id, event_type, key, payload, now, now + self._retention)
        waiters = list(self._waiters.get((tenant_id, event_type, key), {}).values())
        delivered = 0
        for waiter in waiters:
            if waiter.matches(event) and await self._deliver(waiter, event):
                delivered += 1
        if delivered:
            return PublishResult(delivered, False, event.id)
        self._retained.setdefault((tenant_id, event_type, key), []).append(event)
        await self._commit(Change(retain_events=(event,)))
        return PublishResult(0, True, event.id)

    async def _deliver(self, waiter: _Waiter, event: Event) -> bool:
        address = self._address(waiter.execution_id)
        if address is None:
            return False
        try:
            return await ask(address, lambda reply: DeliverEvent(waiter.step_id, event, reply))
        except ActorGone:
            return False
