"""``Routing``: where a request for an execution is applied, here or on the process that owns it.

With one process (the memory and SQLite stores) every execution is this process's: a
command is a message to its actor (``Directory.ask``), and its latest state is in memory or
in the store. With several processes sharing a PostgreSQL database (``cluster`` set), an
execution belongs to the process holding its lease: a command for one owned elsewhere
becomes a row of the commands table that its owner applies (``Cluster.forward``), a state
is read from the database unless this process runs the execution, and a step retry (or a
step completed or skipped by hand) of a finished execution first claims it (it runs here from
then on). An event is published in
one transaction that hands it to the waiting steps of every process.

Before a decision (or a delegation) is forwarded, whether its approver may decide on the
step at all is checked here, by the owner's own check
(``runtime.kinds.approval_rules.check_approver``, part of ``check_decision``): a decision
the owner would refuse for that is refused at once, without a round trip.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import attrs
import trio

from actors import ActorGone
from runtime.api.access import CommitChange, Read
from runtime.cluster.node import Cluster
from runtime.core.messages import (
    Cancel,
    ChildFinished,
    CompleteStep,
    DecideApproval,
    DelegateApproval,
    Pause,
    Resume,
    RetryStep,
    SkipStep,
)
from runtime.kinds.approval_inbox import rendered_config
from runtime.kinds.approval_rules import check_approver
from runtime.model import Event, Execution
from runtime.model.errors import Conflict, NotFound
from runtime.model.records import Change, Receipt
from runtime.shell.catalog import Catalog
from runtime.shell.directory import Directory
from runtime.shell.events import EventRouter, PublishResult
from runtime.shell.settings import Settings
from runtime.shell.watch import WatchHub
from runtime.store.base import Store

Request = (  # what the API asks of an execution
    Pause | Resume | Cancel | RetryStep | CompleteStep | SkipStep | DecideApproval | DelegateApproval
)
REOPENING = (RetryStep, CompleteStep, SkipStep)  # may run a failed execution again
Rules = Callable[[Event], Awaitable[int]]  # the event rules of triggers: how many executions they started
ATTEMPTS = 3  # an execution that changes owner while a request is made: asked again at its new owner


@attrs.frozen
class Routing:
    store: Store
    read: Read
    commit: CommitChange
    settings: Settings
    directory: Directory
    hub: WatchHub
    catalog: Catalog
    router: EventRouter
    cluster: Cluster | None

    # ------------------------------------------------------------------ where the state is
    def owns(self, execution_id: str) -> bool:
        """Whether this process runs the execution now (with PostgreSQL: and its lease holds:
        a process that stalled past it answers nothing from memory, even before it has
        stopped its executions)."""
        return self.directory.knows(execution_id) and (self.cluster is None or self.cluster.acting())

    def in_memory(self, execution_id: str) -> Execution | None:
        """The latest committed state if this process knows it (with several processes: only
        for executions it runs while its lease holds; the others are read from the database)."""
        if self.cluster is not None and not self.owns(execution_id):
            return None
        return self.directory.snapshot(execution_id) or self.hub.recent(execution_id)

    async def fetch(self, execution_id: str, tenant_id: str | None = None) -> Execution:
        """The latest committed state: from memory when this process has it (no store read),
        else read from the store."""
        execution = self.in_memory(execution_id)
        if execution is None:
            execution = await self.read(self.store.get_execution, execution_id)
        return _visible(execution, execution_id, tenant_id)

    # ------------------------------------------------------------------ commands
    async def apply(self, execution_id: str, tenant_id: str | None, request: Request) -> Execution:
        """Apply ``request`` where the execution runs: here (a message to its actor), or on the
        process that owns it (forwarded through the database); the execution as committed."""
        execution = await self.fetch(execution_id, tenant_id)
        if execution.status.finished and not isinstance(request, REOPENING):
            raise Conflict(f"execution {execution_id} is {execution.status.value}")
        for _ in range(ATTEMPTS):
            if self.cluster is not None and not self.owns(execution_id) and not await self._claimed(execution):
                await self._precheck(execution, request)
                forwarded: Execution = await self.cluster.forward(execution_id, request)
                return forwarded
            try:
                answer: Execution = await self.directory.ask(execution_id,
                                                             lambda reply: attrs.evolve(request, reply=reply))
                return answer
            except ActorGone:
                execution = await self._gone(execution_id)
        raise Conflict(f"execution {execution_id} changed owner while the request was made; try again")

    async def _claimed(self, execution: Execution) -> bool:
        """A step retry (or a step ended by hand) of a finished execution another process ran: it
        runs here from now on."""
        assert self.cluster is not None
        return execution.status.finished and await self.cluster.claim_finished(execution.id)

    async def _gone(self, execution_id: str) -> Execution:
        """The actor stopped while asked: finished here (refused), or moved to another process."""
        if self.cluster is None or self.owns(execution_id):
            latest = await self.fetch(execution_id)
            raise Conflict(f"execution {execution_id} is {latest.status.value}")
        return await self.fetch(execution_id)

    async def _precheck(self, execution: Execution, request: Request) -> None:
        """Refuse here a decision by someone who is not an approver of the step: the owner's
        own check (whether the step awaits a decision now, or this approver has decided, is
        left to the owner: the state read here may be behind)."""
        if not isinstance(request, DecideApproval | DelegateApproval) or request.step_id not in execution.steps:
            return  # (an unknown step: the owner says so)
        runbook = await self.catalog.pinned(execution)
        who = request.approver if isinstance(request, DecideApproval) else request.delegator
        check_approver(rendered_config(execution, runbook, request.step_id), execution,
                       execution.steps[request.step_id], who, request.roles,
                       required_separation=self.settings.require_separation_of_duties)

    def tell(self, execution_id: str, message: ChildFinished) -> None:
        """Hand the execution a message nobody waits on, wherever it runs."""
        if self.cluster is not None and not self.owns(execution_id):
            # another process runs it (or nobody now): a command it applies, durably queued
            self.cluster.soon(self.cluster.send, execution_id, message)
            return
        self.directory.post(execution_id, message)

    # ------------------------------------------------------------------ events
    async def publish(self, tenant_id: str, event_type: str, key: str, payload: object,
                      rules: Rules, event: Event | None = None, receipt: Receipt | None = None) -> PublishResult:
        """Hand an event to every step waiting on it (after the event rules of triggers), or
        retain it for a later waiter. ``receipt`` (several processes): a source's message,
        published in the same transaction as its receipt, or not at all if that is held."""
        if self.cluster is None:
            return await self.router.publish(tenant_id, event_type, key, payload, rules=rules)
        event = event or self.router.new_event(tenant_id, event_type, key, payload)
        started = await rules(event)  # the executions event rules start count too
        cap = self.settings.max_retained_events_per_tenant
        if started or not self.settings.event_retention_ms:
            cap = 0  # taken by a rule, or nothing is retained: a waiter or nothing
        with trio.CancelScope(shield=True):  # once sent, its commands are handed over here, not read back
            result = await self.commit(Change(publish=event, retain_cap=cap, receipt=receipt,  # every process's
                                              retain_bytes_cap=self.settings.max_retained_event_bytes_per_tenant))
            self.cluster.hand(result.commands)
        if result.duplicate:
            return PublishResult(0, False, event.id, duplicate=True)
        return PublishResult(started + result.delivered, result.retained and not started, event.id,
                             refused_by_filter=result.refused_by_filter)


def _visible(execution: Execution | None, execution_id: str, tenant_id: str | None) -> Execution:
    if execution is None or (tenant_id is not None and execution.tenant_id != tenant_id):
        raise NotFound(f"execution {execution_id} not found")
    return execution
