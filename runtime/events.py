"""The EventRouter: who waits for which (tenant, type, correlationKey), and retained events.

Waiting steps subscribe here when they park (a ``Subscribe`` effect of their execution) and
stay subscribed while their execution is parked with no actor. ``publish`` hands an event
to every waiter whose filter it passes, as a ``DeliverEvent`` message to the waiter's
execution (reactivating it if it is parked), which commits the step's outcome before it
answers; nothing polls. An event that no waiter takes is committed to the store as
retained (``EVENT_RETENTION_MS``) and handed to the first step that later waits on it.

Subscribing is a synchronous call from an execution actor (Trio runs one task at a time,
so it is atomic without locks, and it cannot deadlock against a delivery in flight).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

import attrs

from actors import ActorGone, Reply
from runtime.conditions import event_passes
from runtime.core.messages import DeliverEvent
from runtime.errors import RunbookError
from runtime.model import Event
from runtime.records import Change

_Key = tuple[str, str, str]
Filter = Mapping[str, Any] | None
Ask = Callable[[str, Callable[[Reply[bool]], DeliverEvent]], Awaitable[bool]]


@attrs.frozen
class PublishResult:
    delivered: int
    retained: bool
    event_id: str


def passes(condition: Filter, event: Event) -> bool:
    """Whether ``event`` passes a wait's ``filter`` (paths ``payload.<...>`` and ``type``)."""
    return event_passes(condition, event.payload, event.type)


class EventRouter:
    def __init__(self, *, now: Callable[[], datetime], retention_ms: int,
                 commit: Callable[[Change], Awaitable[Any]], ask: Ask) -> None:
        self._now = now
        self._retention = timedelta(milliseconds=retention_ms)
        self._commit = commit
        self._ask = ask
        self._waiters: dict[_Key, dict[tuple[str, str], Filter]] = {}  # -> (execution, step) -> filter
        self._retained: dict[_Key, list[Event]] = {}

    def load_retained(self, events: list[Event]) -> None:
        for event in events:
            self._retained.setdefault((event.tenant_id, event.type, event.correlation_key), []).append(event)

    @property
    def waiting(self) -> int:
        return sum(len(w) for w in self._waiters.values())

    def subscribe(self, tenant_id: str, event_type: str, key: str, execution_id: str, step_id: str,
                  condition: Filter) -> Event | None:
        """Register a waiter; returns a retained event it takes at once (the caller commits its consumption)."""
        taken = self._take_retained((tenant_id, event_type, key), condition)
        if taken is None:
            self._waiters.setdefault((tenant_id, event_type, key), {})[(execution_id, step_id)] = condition
        return taken

    def unsubscribe(self, tenant_id: str, event_type: str, key: str, execution_id: str, step_id: str) -> None:
        waiters = self._waiters.get((tenant_id, event_type, key))
        if waiters is not None:
            waiters.pop((execution_id, step_id), None)
            if not waiters:
                del self._waiters[(tenant_id, event_type, key)]

    def _take_retained(self, key: _Key, condition: Filter) -> Event | None:
        events = self._retained.get(key)
        if not events:
            return None
        now = self._now()
        events[:] = [e for e in events if e.expires_at is None or e.expires_at > now]
        for index, event in enumerate(events):
            if passes(condition, event):
                del events[index]
                return event
        return None

    def new_event(self, tenant_id: str, event_type: str, key: str, payload: Any) -> Event:
        now = self._now()
        return Event(uuid.uuid4().hex, tenant_id, event_type, key, payload, now, now + self._retention)

    async def publish(self, tenant_id: str, event_type: str, key: str, payload: Any,
                      rules: Callable[[Event], Awaitable[int]] | None = None) -> PublishResult:
        """``rules``: the event rules of runbooks; the executions they start count as deliveries."""
        event = self.new_event(tenant_id, event_type, key, payload)
        waiters = list(self._waiters.get((tenant_id, event_type, key), {}).items())
        delivered = await rules(event) if rules is not None else 0
        for (execution_id, step_id), condition in waiters:
            if passes(condition, event) and await self._deliver(execution_id, step_id, event):
                delivered += 1
        if delivered:
            return PublishResult(delivered, False, event.id)
        self._retained.setdefault((tenant_id, event_type, key), []).append(event)
        await self._commit(Change(retain_events=(event,)))
        return PublishResult(0, True, event.id)

    async def _deliver(self, execution_id: str, step_id: str, event: Event) -> bool:
        try:
            return await self._ask(execution_id, lambda reply: DeliverEvent(step_id, event, reply))
        except (ActorGone, RunbookError):
            return False
