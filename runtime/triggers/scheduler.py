"""``Scheduler``: the live triggers of the runtime, and what they start.

Only the latest version of each runbook has live triggers: ``load`` reads them at open,
``replace`` swaps a runbook's triggers when a new version is registered here, and a trigger
about to fire checks that its version is still the latest (another process sharing the
database may have registered a newer one).

Schedules: ONE task (``run``) sleeps until the earliest due time of every schedule and
starts what is due. A due time starts exactly one execution however many processes share
the database, without electing anyone: the start's idempotency key is
``trigger:<runbookId>:<triggerId>:<due time RFC 3339>``, and the store's unique index on
(tenant, idempotency key) lets only one start of a key commit. After downtime
(``load``), a schedule with ``catchUp: latest`` starts one execution for the most recent due
time it missed (since its last run, else since its version was registered); ``none`` starts
none. A disabled trigger starts nothing (its due times pass).

Event rules: ``on_event`` runs for every published event before it is delivered to waiting
steps; each rule of that type whose filter passes, of a runbook the event's tenant sees,
starts an execution in that tenant (key ``trigger:<runbookId>:<triggerId>:event:<event id>``).

Tenants: a trigger is switched, and its runs recorded, per tenant. A tenant's own runbook
has its triggers in that tenant alone. A shared runbook (``RUNBOOKS_DIR``) is seen by every
tenant, and each tenant switches its triggers for itself (``on_by_default``): an event rule
is on in every tenant until that tenant switches it off (the tenant's own events fire it);
a schedule runs in the ``default`` tenant until switched off there, and in any other tenant
once that tenant switches it on, each due time starting one execution in each tenant where
it is on.

An execution started by a trigger has ``context.trigger = {kind, id, at}`` and the audit
actor ``trigger:<id>``. Switching a trigger on or off is audited in the audit log under the
tenant's key for it (``audit_key``), read with ``Runtime.trigger_audit``.

``SchedulerHost`` is all the scheduler reaches of the runtime: the clock, the runbooks, the
one start of an execution, the stored trigger states, and the commit of its audit entries.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import attrs
import trio

from runtime.documents.triggers import EVENT, SCHEDULE, Trigger, rfc3339, triggers_of
from runtime.language.templates import TemplateError, render
from runtime.model import AuditEntry, Event, Runbook, TriggerState
from runtime.model.errors import Conflict, NotFound, RunbookError
from runtime.model.records import Change, ChangeResult
from runtime.model.types import StartResult
from runtime.shell.clock import Clock
from runtime.shell.events import passes

logger = logging.getLogger("runbooks.triggers")
Key = tuple[str | None, str, str]  # (owner, runbook id, trigger id): one armed schedule or rule per trigger
StateKey = tuple[str, str | None, str, str]  # (tenant, owner, runbook id, trigger id): its state in a tenant
States = dict[StateKey, TriggerState]
DEFAULT_TENANT = "default"  # where a shared runbook's schedules run unless switched off there


@attrs.define
class _Armed:
    runbook: Runbook
    trigger: Trigger
    next_due: datetime


@attrs.frozen
class TriggerInfo:
    """One trigger as ``GET /api/v1/triggers`` lists it."""

    runbook_id: str
    trigger_id: str
    kind: str
    schedule: str | None
    timezone: str | None
    event_type: str | None
    enabled: bool
    next_run_at: datetime | None
    last_run_at: datetime | None
    last_execution_id: str | None
    shared: bool


def audit_key(tenant_id: str, owner: str | None, runbook_id: str, trigger_id: str) -> str:
    """Where the switches of a trigger in a tenant are audited: ``trigger:<tenant>:<runbook>:<trigger>``
    for the tenant's own runbook, ``trigger::<runbook>:<trigger>@<tenant>`` for a shared one
    (ids hold neither ``:`` nor ``@``, so no two triggers share a key)."""
    if owner is None:
        return f"trigger::{runbook_id}:{trigger_id}@{tenant_id}"
    return f"trigger:{owner}:{runbook_id}:{trigger_id}"


def on_by_default(trigger: Trigger, owner: str | None, tenant_id: str) -> bool:
    """Whether a trigger never switched in this tenant is on there: everything but a shared
    runbook's schedule in a tenant other than ``default`` (which that tenant switches on)."""
    return not (owner is None and trigger.kind == SCHEDULE and tenant_id != DEFAULT_TENANT)


def is_on(states: States, runbook: Runbook, trigger: Trigger, tenant_id: str) -> bool:
    state = states.get((tenant_id, runbook.tenant_id, runbook.id, trigger.id))
    return state.enabled if state is not None else on_by_default(trigger, runbook.tenant_id, tenant_id)


def schedule_tenants(states: States, runbook: Runbook, trigger: Trigger) -> list[str]:
    """The tenants a schedule runs in: its owner's, or for a shared runbook ``default`` and
    every tenant that switched it on."""
    if runbook.tenant_id is not None:
        return [runbook.tenant_id] if is_on(states, runbook, trigger, runbook.tenant_id) else []
    switched = {key[0] for key in states if key[1:] == (None, runbook.id, trigger.id)}
    return [tenant for tenant in sorted(switched | {DEFAULT_TENANT}) if is_on(states, runbook, trigger, tenant)]


@attrs.frozen
class SchedulerHost:
    clock: Clock
    runbook: Callable[..., Awaitable[Runbook]]  # (id, tenant_id=): the latest version the tenant sees
    runbooks: Callable[[str | None], Awaitable[list[Runbook]]]  # those a tenant sees
    latest_runbooks: Callable[[], Awaitable[list[Runbook]]]  # the latest version of every runbook
    start: Callable[..., Awaitable[StartResult]]  # the start of an execution, as the API starts one
    states: Callable[[], Awaitable[list[TriggerState]]]
    record_run: Callable[[str, str | None, str, str, datetime, str], Awaitable[None]]  # (*StateKey, at, execution)
    set_enabled: Callable[[str, str | None, str, str, bool], Awaitable[None]]  # (*StateKey, enabled)
    commit: Callable[[Change], Awaitable[ChangeResult]]  # the audit entry of a switch


class Scheduler:
    def __init__(self, host: SchedulerHost) -> None:
        self._host = host
        self._schedules: dict[Key, _Armed] = {}
        self._rules: dict[Key, tuple[Runbook, Trigger]] = {}
        self._sleep: trio.CancelScope | None = None

    # ------------------------------------------------------------------ which triggers are live
    async def load(self) -> None:
        """Every runbook's latest triggers, and the catch-up of schedules missed while down."""
        runbooks = await self._host.latest_runbooks()
        states = await self._states()
        for runbook in runbooks:
            self._install(runbook, states)

    def replace(self, runbook: Runbook) -> None:
        """A new version of ``runbook`` was registered: its triggers replace the old ones."""
        self._install(runbook, None)

    def _install(self, runbook: Runbook, states: States | None) -> None:
        owner = (runbook.tenant_id, runbook.id)
        for table in (self._schedules, self._rules):
            for key in [k for k in table if k[:2] == owner]:
                del table[key]
        now = self._host.clock.now()
        for trigger in triggers_of(runbook.document):
            key = (*owner, trigger.id)
            if trigger.kind == EVENT:
                self._rules[key] = (runbook, trigger)
                continue
            due = trigger.next_due(now)
            if states is not None and trigger.catch_up == "latest":
                since = _last_run_everywhere(states, runbook, trigger) or runbook.created_at
                missed = trigger.last_due(now)
                if since is not None and missed > since:
                    due = missed  # fires at once: the one catch-up
            self._schedules[key] = _Armed(runbook, trigger, due)
        if self._sleep is not None:
            self._sleep.cancel()  # the earliest due time may have changed

    # ------------------------------------------------------------------ the one timer
    async def run(self) -> None:
        """Start what is due, as it comes due, until cancelled."""
        clock = self._host.clock
        while True:
            earliest = min((a.next_due for a in self._schedules.values()), default=None)
            with trio.CancelScope(deadline=clock.trio_time(earliest) if earliest else math.inf) as sleep:
                self._sleep = sleep
                await trio.sleep_forever()
            self._sleep = None
            for key, armed in list(self._schedules.items()):
                if self._schedules.get(key) is armed and clock.trio_time(armed.next_due) <= trio.current_time():
                    await self._due(key, armed)

    async def _due(self, key: Key, armed: _Armed) -> None:
        now = max(self._host.clock.now(), armed.next_due)
        due = armed.next_due
        latest = armed.trigger.last_due(now)
        armed.next_due = armed.trigger.next_due(now)
        if latest > due:  # woken late (a suspended process): only the most recent one counts
            if armed.trigger.catch_up == "none":
                return
            due = latest
        try:
            await self._fire_schedule(key, armed, due)
        except Exception:  # a trigger's failure must not stop the others
            logger.exception("trigger %s of runbook %s failed at %s", key[2], key[1], rfc3339(due))

    async def _fire_schedule(self, key: Key, armed: _Armed, due: datetime) -> None:
        runbook = await self._latest(armed.runbook)
        if runbook is not armed.runbook:  # a newer version (another process): its triggers count
            self.replace(runbook)
            replaced = self._schedules.get(key)
            if replaced is None:
                return
            armed = replaced
        for tenant in schedule_tenants(await self._states(), runbook, armed.trigger):
            await self._start(runbook, armed.trigger, tenant, armed.trigger.input, due)

    async def _latest(self, runbook: Runbook) -> Runbook:
        try:
            latest = await self._host.runbook(runbook.id, tenant_id=runbook.tenant_id)
        except NotFound:
            return runbook
        same_owner = latest.tenant_id == runbook.tenant_id
        return latest if same_owner and latest.version > runbook.version else runbook

    # ------------------------------------------------------------------ events
    async def on_event(self, event: Event, hop: int = 0) -> int:
        """Start the executions of every rule the event fires (with the event's ``hop``); how many started."""
        started = 0
        states: States | None = None
        for runbook, trigger in list(self._rules.values()):
            if trigger.event_type != event.type or not passes(trigger.filter, event):
                continue
            if runbook.tenant_id not in (None, event.tenant_id) or not await self._visible(runbook, event.tenant_id):
                continue
            states = states if states is not None else await self._states()
            if not is_on(states, runbook, trigger, event.tenant_id):
                continue
            scope = {"event": {"type": event.type, "correlationKey": event.correlation_key, "payload": event.payload}}
            try:
                input = render(trigger.input, scope)
            except TemplateError as exc:
                logger.warning("event rule %s of runbook %s: %s", trigger.id, runbook.id, exc)
                continue
            if await self._start(runbook, trigger, event.tenant_id, input, event.received_at, f"event:{event.id}",
                                 hop=hop):
                started += 1
        return started

    async def _visible(self, runbook: Runbook, tenant_id: str) -> bool:
        """Whether the tenant sees this version (a tenant's own runbook hides a shared one)."""
        try:
            seen = await self._host.runbook(runbook.id, tenant_id=tenant_id)
        except NotFound:
            return False
        return seen.tenant_id == runbook.tenant_id and seen.version == runbook.version

    # ------------------------------------------------------------------ starting
    async def _start(self, runbook: Runbook, trigger: Trigger, tenant: str, input: Any, at: datetime,
                     name: str | None = None, hop: int = 0) -> bool:
        """Start the trigger's execution in ``tenant`` (where the caller found it on)."""
        when = rfc3339(at)
        context = {**trigger.context, "tenantId": tenant, "userId": f"trigger:{trigger.id}",
                   "trigger": {"kind": trigger.kind, "id": trigger.id, "at": when}}
        key = f"trigger:{runbook.id}:{trigger.id}:{name or when}"
        try:
            result = await self._host.start(runbook.id, input, context, version=runbook.version,
                                           idempotency_key=key, force=True, actor=f"trigger:{trigger.id}", hop=hop)
        except RunbookError as exc:
            logger.warning("trigger %s of runbook %s could not start an execution: %s", trigger.id, runbook.id, exc)
            return False
        await self._host.record_run(tenant, runbook.tenant_id, runbook.id, trigger.id, at, result.execution.id)
        if result.created:
            logger.info("trigger %s of runbook %s started execution %s in tenant %s (%s)", trigger.id, runbook.id,
                        result.execution.id, tenant, when)
        return True

    # ------------------------------------------------------------------ state
    async def _states(self) -> States:
        return {(s.tenant_id, s.owner, s.runbook_id, s.trigger_id): s for s in await self._host.states()}

    async def list(self, tenant_id: str) -> list[TriggerInfo]:
        """The triggers of the latest version of every runbook the tenant sees, as in that tenant."""
        states = await self._states()
        infos = []
        for runbook in await self._host.runbooks(tenant_id):
            for trigger in triggers_of(runbook.document):
                infos.append(self._info(runbook, trigger, _state(states, runbook, trigger, tenant_id)))
        return infos

    def _info(self, runbook: Runbook, trigger: Trigger, state: TriggerState) -> TriggerInfo:
        next_run = None
        if trigger.kind == SCHEDULE and state.enabled:
            armed = self._schedules.get((runbook.tenant_id, runbook.id, trigger.id))
            next_run = armed.next_due if armed is not None else trigger.next_due(self._host.clock.now())
        return TriggerInfo(runbook.id, trigger.id, trigger.kind, trigger.schedule,
                           trigger.timezone if trigger.kind == SCHEDULE else None, trigger.event_type,
                           state.enabled, next_run, state.last_run_at, state.last_execution_id,
                           runbook.tenant_id is None)

    async def switch(self, runbook_id: str, trigger_id: str, enabled: bool, *, tenant_id: str, actor: str,
                     reason: str | None) -> TriggerInfo:
        """Enable or disable a trigger of a runbook the tenant sees; audited."""
        runbook = await self._host.runbook(runbook_id, tenant_id=tenant_id)
        found = [t for t in triggers_of(runbook.document) if t.id == trigger_id]
        if not found:
            raise NotFound(f"runbook '{runbook_id}' has no trigger '{trigger_id}'")
        state = _state(await self._states(), runbook, found[0], tenant_id)
        if state.enabled == enabled:
            raise Conflict(f"trigger '{trigger_id}' of runbook '{runbook_id}' is already "
                           f"{'enabled' if enabled else 'disabled'}")
        key = (tenant_id, runbook.tenant_id, runbook.id, trigger_id)
        await self._host.set_enabled(*key, enabled)
        action = "trigger.enabled" if enabled else "trigger.disabled"
        entry = AuditEntry(audit_key(*key), self._host.clock.now(), actor, action, None, None, reason,
                           {"runbookId": runbook_id, "triggerId": trigger_id, "tenantId": tenant_id},
                           tenant_id=tenant_id)
        await self._host.commit(Change(audit=(entry,)))
        logger.info("%s: %s of runbook %s by %s", action, trigger_id, runbook_id, actor)
        return self._info(runbook, found[0], attrs.evolve(state, enabled=enabled))


def _state(states: States, runbook: Runbook, trigger: Trigger, tenant_id: str) -> TriggerState:
    """The trigger's state in the tenant (never switched nor run there: its default)."""
    key = (tenant_id, runbook.tenant_id, runbook.id, trigger.id)
    return states.get(key) or TriggerState(*key, enabled=on_by_default(trigger, runbook.tenant_id, tenant_id))


def _last_run_everywhere(states: States, runbook: Runbook, trigger: Trigger) -> datetime | None:
    """The earliest last run among the tenants a schedule runs in (None: one has never run it)."""
    runs = [_state(states, runbook, trigger, tenant).last_run_at for tenant in schedule_tenants(states, runbook, trigger)]
    known = [run for run in runs if run is not None]
    return min(known) if known and len(known) == len(runs) else None
