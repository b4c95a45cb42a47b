"""Retained events in memory: bounded in time, in number and in bytes.

An event that no waiter took is kept for ``EVENT_RETENTION_MS``, for the first step that
later waits on its (tenant, type, correlationKey). ``RetainedEvents`` holds them by key
with a count and a size per tenant: a tenant holds at most ``max_per_tenant`` of them, and
at most ``max_bytes_per_tenant`` bytes of payloads as JSON (past either, ``LimitExceeded``
refuses the event, naming the cap and when the oldest one expires), and ``expire`` drops
every event whose time is up.

``sweep`` is the task that runs ``expire`` and deletes the same events from the store (one
``Change(expire_events_at=now)``), at most every ``sweep_interval_s(retention)``: the cost
is per sweep, proportional to what is retained, and nothing per publish. An event lives at
most its retention plus one interval. With nothing retained it sleeps until an event is
(a process of a shared store, whose events live in the database, sweeps every interval).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any

import trio

from runtime.language.conditions import event_passes
from runtime.model import Event
from runtime.model.errors import retained_bytes_full, retained_events_full
from runtime.model.jsonsafe import json_size
from runtime.model.records import Change

logger = logging.getLogger("runbooks.events")

Key = tuple[str, str, str]  # (tenant, type, correlationKey)
Filter = Mapping[str, Any] | None
SWEEP_MIN_S = 1.0
SWEEP_MAX_S = 60.0


def passes(condition: Filter, event: Event) -> bool:
    """Whether ``event`` passes a wait's ``filter`` (paths ``payload.<...>`` and ``type``)."""
    return event_passes(condition, event.payload, event.type)


def sweep_interval_s(retention_ms: int) -> float:
    """A tenth of the retention, between 1 s and 60 s."""
    return min(max(retention_ms / 10_000, SWEEP_MIN_S), SWEEP_MAX_S)


class RetainedEvents:
    def __init__(self, max_per_tenant: int, max_bytes_per_tenant: int = 64 * 1024 * 1024) -> None:
        self.max_per_tenant = max_per_tenant
        self.max_bytes_per_tenant = max_bytes_per_tenant
        self._by_key: dict[Key, list[Event]] = {}
        self._per_tenant: dict[str, int] = {}
        self._bytes: dict[str, int] = {}  # per tenant: the payloads' sizes as JSON
        self._sizes: dict[str, int] = {}  # per event id
        self.added = trio.Event()  # set (and replaced) whenever an event is retained

    def __len__(self) -> int:
        return sum(self._per_tenant.values())

    def count(self, tenant_id: str) -> int:
        return self._per_tenant.get(tenant_id, 0)

    def check_room(self, tenant_id: str, now: datetime, size: int = 0) -> None:
        """Raise ``LimitExceeded`` if the tenant already holds its cap of retained events, or
        an event of ``size`` bytes would take it past its cap of bytes."""
        if self.count(tenant_id) >= self.max_per_tenant:
            raise retained_events_full(tenant_id, self.max_per_tenant, self._first_expiry(tenant_id, now))
        if self._bytes.get(tenant_id, 0) + size > self.max_bytes_per_tenant:
            raise retained_bytes_full(tenant_id, self.max_bytes_per_tenant, self._first_expiry(tenant_id, now))

    def add(self, event: Event) -> None:
        self._by_key.setdefault((event.tenant_id, event.type, event.correlation_key), []).append(event)
        self._per_tenant[event.tenant_id] = self.count(event.tenant_id) + 1
        size = self._sizes[event.id] = json_size(event.payload)
        self._bytes[event.tenant_id] = self._bytes.get(event.tenant_id, 0) + size
        self.added.set()
        self.added = trio.Event()

    def earliest(self) -> datetime | None:
        """When the first retained event expires (None: none retained, or none expires)."""
        times = [event.expires_at for events in self._by_key.values() for event in events
                 if event.expires_at is not None]
        return min(times) if times else None

    def take(self, key: Key, condition: Filter, now: Callable[[], datetime]) -> Event | None:
        """The oldest unexpired event of ``key`` that passes ``condition``, removed."""
        events = self._by_key.get(key)
        if not events:
            return None
        at = now()
        for index, event in enumerate(events):
            if _alive(event, at) and passes(condition, event):
                self._remove(key, events, index)
                return event
        return None

    def expire(self, now: datetime) -> int:
        """Drop every event whose retention is over; how many."""
        dropped = 0
        for key in list(self._by_key):
            events = self._by_key[key]
            alive = [event for event in events if _alive(event, now)]
            if len(alive) < len(events):
                dropped += len(events) - len(alive)
                self._per_tenant[key[0]] -= len(events) - len(alive)
                for event in events:
                    if not _alive(event, now):
                        self._forget_size(event)
                if alive:
                    self._by_key[key] = alive
                else:
                    del self._by_key[key]
        for tenant in [t for t, n in self._per_tenant.items() if n == 0]:
            del self._per_tenant[tenant]
            self._bytes.pop(tenant, None)
        return dropped

    def _forget_size(self, event: Event) -> None:
        self._bytes[event.tenant_id] = self._bytes.get(event.tenant_id, 0) - self._sizes.pop(event.id, 0)

    def _remove(self, key: Key, events: list[Event], index: int) -> None:
        self._forget_size(events[index])
        del events[index]
        if not events:
            del self._by_key[key]
        self._per_tenant[key[0]] -= 1
        if not self._per_tenant[key[0]]:
            del self._per_tenant[key[0]]
            self._bytes.pop(key[0], None)

    def _first_expiry(self, tenant_id: str, now: datetime) -> float | None:
        """Seconds until the tenant's first retained event expires (only when refusing: a scan)."""
        times = [event.expires_at for (tenant, _, _), events in self._by_key.items() if tenant == tenant_id
                 for event in events if event.expires_at is not None]
        return max((min(times) - now).total_seconds(), 0.0) if times else None


def _alive(event: Event, now: datetime) -> bool:
    return event.expires_at is None or event.expires_at > now


async def sweep(retained: RetainedEvents, now: Callable[[], datetime],
                commit: Callable[[Change], Awaitable[Any]], interval_s: float, *, periodic: bool = False) -> None:
    """Forever: drop expired events from memory, then delete them from the store."""
    while True:
        if periodic:
            await trio.sleep(interval_s)
        else:
            earliest = retained.earliest()
            if earliest is None:
                await retained.added.wait()  # nothing to expire until something is retained
                continue
            await trio.sleep(max((earliest - now()).total_seconds(), interval_s))
        at = now()
        dropped = retained.expire(at)
        if dropped:
            logger.info("%d retained events expired", dropped)
        await commit(Change(expire_events_at=at))

