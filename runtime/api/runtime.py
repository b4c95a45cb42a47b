"""``open_runtime`` and ``Runtime``: the engine's root and its public embedded API.

``open_runtime`` opens the store, starts the persistence actor, the timers and the
executions supervisor, then recovers: every unfinished execution starts from its committed
state (recovery is the start path), and those that only wait park again at once. The
``Runtime`` methods validate what they are given and talk to the execution that owns the
state, as a message to its actor (``Directory.ask``); nothing here changes an execution
itself. Leaving ``open_runtime`` cancels every actor, flushes the persistence actor and
closes the store; with a persistent store, unfinished executions resume at the next open.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from functools import partial
from typing import Any, TypeVar

import attrs
import httpx
import trio

from actors import ActorGone, Address, Reply, open_mailbox, open_supervisor
from runtime.api import arguments
from runtime.cluster.node import Cluster, default_instance_id
from runtime.core import Tick, created
from runtime.documents.validate import validate_document
from runtime.io.children import Children
from runtime.io.context import Services
from runtime.io.grpc_descriptors import Descriptors
from runtime.io.notify import Notifier
from runtime.kinds.approval import check_approver
from runtime.kinds.approval_inbox import ApprovalPage, pending_for, rendered_config
from runtime.language.input_schema import input_problems
from runtime.model import AuditEntry, Evidence, Execution, ExecutionStatus, LogEntry, Runbook
from runtime.model.errors import (
    Conflict,
    LoopDetected,
    NotFound,
    Problem,
    StoreUnavailable,
    ValidationError,
    too_large,
)
from runtime.model.jsonsafe import json_size
from runtime.model.records import Change, ChangeResult
from runtime.model.wire import load_document, sha256_hex
from runtime.security.outbound import HostAllowlist, checked_client
from runtime.security.secrets import Secrets, install_log_redaction, remove_log_redaction
from runtime.shell import commands, outage, retained, shutdown
from runtime.shell.catalog import Catalog
from runtime.shell.clock import Clock
from runtime.shell.directory import Directory
from runtime.shell.events import EventRouter, PublishResult
from runtime.shell.host import ExecutionHost
from runtime.shell.persistence import BatchObserver, Commit, PersistenceActor, PersistenceMessage
from runtime.shell.settings import Settings
from runtime.shell.step_types import StepTypes
from runtime.shell.timers import Timers
from runtime.shell.watch import Observer, WatchHub
from runtime.store import open_store_from_url
from runtime.store.base import Store
from runtime.store.postgres import PostgresStore
from runtime.triggers.scheduler import Scheduler, TriggerInfo, audit_key

T = TypeVar("T")
logger = logging.getLogger("runbooks.runtime")
ES = ExecutionStatus


@attrs.frozen
class StartResult:
    execution: Execution
    created: bool


@attrs.frozen
class Page:
    items: list[Execution]
    next_cursor: str | None


class Runtime:
    """The engine. Build it with ``open_runtime``; every method is safe to call concurrently."""

    def __init__(self, store: Store, settings: Settings, http: httpx.AsyncClient,
                 persistence: Address[PersistenceMessage], persistence_actor: PersistenceActor,
                 directory: Directory, clock: Clock, timers: Timers) -> None:
        self.store = store
        self.settings = settings
        self.persistence = persistence_actor
        self._persistence = persistence
        self.clock = clock
        self.timers = timers
        self.directory = directory
        self.secrets = Secrets(settings.secrets_file, settings.secrets_env)
        self.services = Services(http=http, now=self.clock.now, call_service_base_url=settings.call_service_base_url,
                                 secrets=self.secrets, allowed_hosts=settings.call_service_allowed_hosts,
                                 grpc_descriptors=Descriptors(settings.grpc_protoset_dir),
                                 max_output_bytes=settings.max_output_bytes)
        self.hub = WatchHub(settings.finished_cache_size)
        self.catalog = Catalog(store, self._read, self._commit, StepTypes(), settings, self.clock)
        self.router = EventRouter(now=self.clock.now, retention_ms=settings.event_retention_ms,
                                  commit=self._commit, ask=directory.ask,
                                  max_retained_per_tenant=settings.max_retained_events_per_tenant,
                                  max_retained_bytes_per_tenant=settings.max_retained_event_bytes_per_tenant)
        self.cluster: Cluster | None = None
        if isinstance(store, PostgresStore):  # several processes may share it
            self.cluster = Cluster(store, self._read, directory, self.catalog, self.hub,
                                   instance_id=settings.instance_id or default_instance_id(),
                                   ttl_ms=settings.lease_ttl_ms, forward_wait_ms=settings.forward_wait_ms)
            self.catalog.cache_latest = self.cluster.caches_latest
        directory.host = ExecutionHost(  # an actor's reads wait for the store, as its commits do
            clock=self.clock, load=outage.waiting(self._load, "loading an execution"), recent=self.hub.recent,
            plan_for=outage.waiting(self.catalog.plan_for, "reading a runbook"), commit=self._commit,
            published=self._published, types=self.catalog.types, services=self.services,
            default_policy=settings.default_retry_policy, router=self.router, timers=timers,
            left=self._left, incarnation=directory.next_incarnation,
            start_child=lambda parent, effect: self.children.start(parent, effect),
            cancel_child=lambda parent, effect: self.children.cancel(parent, effect),
            notify=lambda execution_id, effect: self.notifier.send(execution_id, effect),
            owner=self.cluster.instance_id if self.cluster else None,
            pending_commands=self.cluster.pending if self.cluster else None,
        )
        self.children: Children
        self.notifier: Notifier
        self.scheduler = Scheduler(self)

    # ------------------------------------------------------------------ plumbing
    @property
    def observers(self) -> list[Observer]:
        """Callables ``(what, data)`` told of ``execution.started``, ``step.finished``,
        ``execution.finished``, ``runbook.registered`` and ``execution.taken_over``."""
        return self.hub.observers

    @property
    def types(self) -> StepTypes:
        return self.catalog.types

    @property
    def open_executions(self) -> int:
        """Unfinished executions this runtime runs (live or parked)."""
        return self.directory.count

    @property
    def waiting_for_owner(self) -> int:
        """With several processes: unfinished executions that no process runs and this one
        cannot take, since their runbook needs a step type it has not registered."""
        return self.cluster.waiting_for_owner if self.cluster is not None else 0

    def now(self) -> datetime:
        """Wall-clock time that advances with Trio's clock (so MockClock drives it in tests)."""
        return self.clock.now()

    async def _read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if not self.store.threaded:
            return fn(*args, **kwargs)
        # a read nobody waits for any more (cancelled) is left to finish in its thread: a dead
        # connection must not hold a cancelled request, nor the shutdown
        return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs), abandon_on_cancel=True)

    async def _commit(self, change: Change) -> ChangeResult:
        if not self.store.threaded:  # nothing to wait for: commit in place, in order
            return await self.persistence.commit_inline(change)
        reply: Reply[ChangeResult] = Reply()
        await self._persistence.send(Commit(change, reply))
        return await reply.wait()

    async def _load(self, execution_id: str) -> Execution | None:
        execution = await self._read(self.store.get_execution, execution_id)
        if execution is not None:
            self.hub.remember(execution)
        return execution

    def _start_services(self, nursery: trio.Nursery) -> None:
        """What runs in the runtime's own tasks: children, notifications."""
        self.children = Children(self, nursery)
        self.notifier = Notifier(self, nursery)

    def _published(self, execution: Execution, change: Change | None = None) -> None:
        self.hub.published(execution, change)
        if execution.parent_execution_id is not None and execution.status.finished:
            self._child_finished(execution)

    def _child_finished(self, child: Execution) -> None:
        """An execution started by a run-runbook step has ended: tell its parent (a message
        to the parent's execution; the one place to forward it to another process)."""
        self.children.finished(child)

    def _left(self, execution_id: str, address: Any, final: Execution | None) -> None:
        if final is not None:
            self.hub.remember(final)  # parked or finished: get() still answers from memory
        self.directory.left(execution_id, address, final)

    def _fire(self, execution_id: str, at: datetime) -> None:
        self.directory.post(execution_id, Tick(at))

    # ------------------------------------------------------------------ runbooks
    def register_executor(self, type_name: str, executor: Any) -> None:
        """Register a custom step type: ``async def executor(ctx)`` or an object with ``execute``.
        Executions waiting for this type go on at once (with several processes, those nobody
        could run are taken over now)."""
        arguments.check_ids(type_name=type_name)
        self.catalog.register_executor(type_name, executor)
        if self.cluster is not None:
            self.cluster.soon(self.cluster.take_over)

    def validate_runbook(self, document: Any) -> list[Problem]:
        """Every problem of a document (nothing is registered)."""
        try:
            doc = load_document(document)
        except ValidationError as exc:
            return exc.problems
        return validate_document(doc, self.types)

    async def register_runbook(self, document: Any, *, tenant_id: str | None = None) -> Runbook:
        """Validate and register a new version; ``tenant_id`` None: shared by every tenant."""
        arguments.check_tenant(tenant_id)
        runbook = await self.catalog.register(document, tenant_id)
        self.scheduler.replace(runbook)  # only the latest version has live triggers
        self.hub.notify("runbook.registered", runbook)
        return runbook

    async def get_runbook(self, runbook_id: str, version: int | None = None, *,
                          tenant_id: str | None = None) -> Runbook:
        arguments.check_runbook_lookup(runbook_id, version, tenant_id)
        return await self.catalog.get(runbook_id, version, tenant_id=tenant_id)

    async def list_runbooks(self, *, tenant_id: str | None = None) -> list[Runbook]:
        arguments.check_tenant(tenant_id)
        return await self.catalog.list(tenant_id)

    # ------------------------------------------------------------------ starting
    async def start(self, runbook_id: str, input: Any = None, context: Mapping[str, Any] | None = None, *,
                    version: int | None = None, idempotency_key: str | None = None,
                    force: bool = False) -> Execution:
        """Start an execution (or return the one an identical start already made)."""
        result = await self.start_execution(runbook_id, input, context, version=version,
                                            idempotency_key=idempotency_key, force=force)
        return result.execution

    async def start_execution(self, runbook_id: str, input: Any = None,
                              context: Mapping[str, Any] | None = None, *, version: int | None = None,
                              idempotency_key: str | None = None, force: bool = False,
                              replay_of: str | None = None, actor: str | None = None,
                              reason: str | None = None, parent: tuple[str, str, int] | None = None,
                              execution_id: str | None = None, hop: int = 0) -> StartResult:
        """``hop``: how many runbooks calling the engine led to this start (``X-Runbooks-Hop``);
        kept as ``context.hop``, refused past ``Settings.max_hops`` (``LoopDetected``)."""
        arguments.check_start(runbook_id, input, context, version, idempotency_key, force, actor, reason)
        ctx = dict(context or {})
        tenant = str(ctx.get("tenantId") or "default")
        ctx["tenantId"] = tenant
        hop = hop or context_hop(ctx)
        self._check_hop(hop)
        if hop:
            ctx["hop"] = hop
        runbook = await self.catalog.get(runbook_id, version, tenant_id=tenant)
        _check_start(runbook, input, ctx)
        input_hash = sha256_hex(input)
        if idempotency_key is not None:
            existing = await self._read(self.store.find_by_idempotency_key, tenant, idempotency_key)
            if existing is not None:
                return StartResult(_same_input(existing, input_hash), False)
        change = created(runbook, execution_id=execution_id or uuid.uuid4().hex, input=input, context=ctx,
                         input_hash=input_hash, idempotency_key=idempotency_key, dedup=not force,
                         replay_of=replay_of, now=self.clock.now(), actor=actor, reason=reason, parent=parent)
        if self.cluster is not None:  # owned from its first commit: this process runs it
            assert change.new_execution is not None
            change = attrs.evolve(change, owner=self.cluster.instance_id,
                                  new_execution=attrs.evolve(change.new_execution, epoch=1))
        result = await self._commit(change)
        if result.existing_id is not None:
            existing = await self.fetch(result.existing_id)
            return StartResult(_same_input(existing, input_hash) if idempotency_key else existing, False)
        execution = change.new_execution
        assert execution is not None
        self.hub.published(execution)
        self.directory.start(execution.id, execution)
        self.hub.notify("execution.started", execution)
        return StartResult(execution, True)

    def _check_hop(self, hop: int) -> None:
        if hop > self.settings.max_hops:
            raise LoopDetected(hop, self.settings.max_hops)

    async def replay(self, execution_id: str, *, actor: str | None = None, reason: str | None = None,
                     tenant_id: str | None = None) -> Execution:
        """A new execution of the same runbook version with the same input and context.

        ``actor`` and ``reason`` (the caller) are recorded in the new execution's audit log.
        """
        arguments.check_control(execution_id, reason, actor, tenant_id)
        old = await self.fetch(execution_id, tenant_id=tenant_id)
        result = await self.start_execution(old.runbook_id, old.input, old.context, version=old.runbook_version,
                                            force=True, replay_of=old.id, actor=actor, reason=reason)
        return result.execution

    # ------------------------------------------------------------------ reading
    def owns(self, execution_id: str) -> bool:
        """Whether this runtime runs the execution now (with PostgreSQL: holds its lease)."""
        return self.directory.knows(execution_id)

    def _in_memory(self, execution_id: str) -> Execution | None:
        """The latest committed state if this process knows it (with several processes: only
        for executions it runs; the others are read from the database)."""
        if self.cluster is not None and not self.directory.knows(execution_id):
            return None
        return self.directory.snapshot(execution_id) or self.hub.recent(execution_id)

    def get(self, execution_id: str, *, tenant_id: str | None = None) -> Execution:
        """The latest committed state, from memory: a live execution, or one committed or read
        recently (``Settings.finished_cache_size`` of them). With the memory store any
        execution; otherwise, for one not in memory, use ``await fetch()``."""
        arguments.check_lookup(execution_id, tenant_id)
        execution = self._in_memory(execution_id)
        if execution is None:
            if self.store.threaded:
                raise NotFound(f"execution {execution_id} is not in this runtime's memory; "
                               "await fetch() reads it from the store")
            execution = self.store.get_execution(execution_id)
        return _visible(execution, execution_id, tenant_id)

    async def fetch(self, execution_id: str, *, tenant_id: str | None = None) -> Execution:
        """The latest committed state, reading the store (off the event loop) when it is not in memory."""
        arguments.check_lookup(execution_id, tenant_id)
        execution = self._in_memory(execution_id)
        if execution is None:
            execution = await self._read(self.store.get_execution, execution_id)
        return _visible(execution, execution_id, tenant_id)

    async def list_executions(self, *, tenant_id: str | None = None, runbook_id: str | None = None,
                              status: str | None = None, limit: int = 50, cursor: str | None = None) -> Page:
        arguments.check_listing(tenant_id, runbook_id, status, limit, cursor)
        if status is not None and status not in {s.value for s in ES}:
            raise ValidationError([Problem("status", f"unknown status '{status}'")])
        if not 1 <= limit <= 1000:
            raise ValidationError([Problem("limit", "must be between 1 and 1000")])
        items, next_cursor = await self._read(self.store.list_executions, tenant_id, runbook_id=runbook_id,
                                              status=status, limit=limit, cursor=cursor)
        return Page(items, next_cursor)

    async def pending_approvals(self, user: str, *, tenant_id: str | None = None, roles: Sequence[str] = (),
                                limit: int = 50, cursor: str | None = None) -> ApprovalPage:
        """Approval steps waiting for ``user``'s decision across the tenant's unfinished executions
        (``roles``: the user's, for ``role:NAME`` approver entries, as ``submit_approval`` takes them)."""
        arguments.check_pending_approvals(user, tenant_id, roles, limit, cursor)

        async def read_page(size: int, after: str | None) -> tuple[list[Execution], str | None]:
            return await self._read(self.store.awaiting_approval, tenant_id, limit=size, cursor=after)

        return await pending_for(user, read_page, self.catalog.pinned, roles=tuple(roles), limit=limit, cursor=cursor)

    async def logs(self, execution_id: str, *, step_id: str | None = None, level: str | None = None,
                   after: int | None = None, limit: int = 1000, tenant_id: str | None = None) -> list[LogEntry]:
        arguments.check_logs(execution_id, step_id, level, after, limit, tenant_id)
        await self.fetch(execution_id, tenant_id=tenant_id)
        return await self._read(self.store.logs, execution_id, step_id=step_id, level=level, after=after,
                                limit=limit)

    async def evidence(self, execution_id: str, *, tenant_id: str | None = None) -> list[Evidence]:
        arguments.check_lookup(execution_id, tenant_id)
        await self.fetch(execution_id, tenant_id=tenant_id)
        return await self._read(self.store.evidence, execution_id)

    async def audit(self, execution_id: str, *, tenant_id: str | None = None) -> list[AuditEntry]:
        arguments.check_lookup(execution_id, tenant_id)
        await self.fetch(execution_id, tenant_id=tenant_id)
        return await self._read(self.store.audit, execution_id)

    async def wait(self, execution_id: str, *, tenant_id: str | None = None) -> Execution:
        """The execution once it has finished (completed, failed, cancelled or timed out)."""
        arguments.check_lookup(execution_id, tenant_id)
        async for execution in self.watch(execution_id, tenant_id=tenant_id):
            if execution.status.finished:
                return execution
        return await self.fetch(execution_id, tenant_id=tenant_id)

    async def watch(self, execution_id: str, *, tenant_id: str | None = None) -> AsyncIterator[Execution]:
        """Every committed state of the execution, live, from now until it finishes.

        The first state is the current one; none is lost however slowly the consumer reads
        (up to 1,024 states behind, then its stream ends).
        """
        arguments.check_lookup(execution_id, tenant_id)
        async def current() -> Execution:
            return await self.fetch(execution_id, tenant_id=tenant_id)

        async for execution in self.hub.watch(execution_id, current):
            yield execution

    async def ready(self) -> None:
        """Raise ``ConnectionError`` naming the cause unless the last commit succeeded and the
        store answers (failing commits are known at once, without a round trip)."""
        if not self.persistence.stats.healthy:
            raise ConnectionError(f"commits are failing: {self.persistence.stats.last_error or 'unknown error'}")
        try:
            await self._read(self.store.ping)
        except StoreUnavailable as exc:
            raise ConnectionError(f"the store does not answer: {exc}") from exc

    # ------------------------------------------------------------------ control
    async def _control(self, execution_id: str, tenant_id: str | None, kind: str, body: dict[str, Any]) -> Execution:
        """Apply a command to the execution where it runs: here (a message to its actor), or
        on the process that owns it (forwarded through the database)."""
        execution = await self.fetch(execution_id, tenant_id=tenant_id)
        if execution.status.finished and kind != "retry":
            raise Conflict(f"execution {execution_id} is {execution.status.value}")
        for _ in range(3):
            if self.cluster is not None and not self.owns(execution_id):
                if execution.status.finished and await self.cluster.claim_finished(execution_id):
                    pass  # a retry of a finished execution: it runs here from now on
                else:
                    await self._precheck(execution, kind, body)
                    found: Execution = await self.cluster.forward(execution_id, kind, body)
                    return found
            try:
                answer: Execution = await self.directory.ask(execution_id,
                                                             lambda reply: commands.message(kind, body, reply))
                return answer
            except ActorGone:
                if self.cluster is None or self.owns(execution_id):
                    latest = await self.fetch(execution_id)
                    raise Conflict(f"execution {execution_id} is {latest.status.value}") from None
                execution = await self.fetch(execution_id)  # stopped here meanwhile: go to its new owner
        raise Conflict(f"execution {execution_id} changed owner while the request was made; try again")

    async def _precheck(self, execution: Execution, kind: str, body: dict[str, Any]) -> None:
        """What this process can refuse without the owner: an approver the step does not name."""
        if kind != "approve" or body["stepId"] not in execution.steps:
            return
        runbook = await self.catalog.pinned(execution)
        check_approver(rendered_config(execution, runbook, body["stepId"]), body["approver"], body.get("roles") or ())

    async def pause(self, execution_id: str, reason: str | None = None, *, actor: str = "system",
                    tenant_id: str | None = None) -> Execution:
        arguments.check_control(execution_id, reason, actor, tenant_id)
        return await self._control(execution_id, tenant_id, "pause", {"actor": actor, "reason": reason})

    async def resume(self, execution_id: str, reason: str | None = None, *, actor: str = "system",
                     tenant_id: str | None = None) -> Execution:
        arguments.check_control(execution_id, reason, actor, tenant_id)
        return await self._control(execution_id, tenant_id, "resume", {"actor": actor, "reason": reason})

    async def cancel(self, execution_id: str, reason: str, *, actor: str = "system",
                     tenant_id: str | None = None) -> Execution:
        arguments.check_control(execution_id, reason, actor, tenant_id)
        if not reason:
            raise ValidationError([Problem("reason", "required: why the execution is cancelled")])
        return await self._control(execution_id, tenant_id, "cancel", {"actor": actor, "reason": reason})

    async def submit_approval(self, execution_id: str, step_id: str, *, approver: str, decision: str,
                              comment: str | None = None, tenant_id: str | None = None,
                              roles: Iterable[str] = ()) -> Execution:
        """Record ``approve`` or ``reject`` from ``approver`` on an approval step; ``roles`` (the
        approver's) let an approver entry ``role:NAME`` admit them."""
        arguments.check_approval(execution_id, step_id, approver, decision, comment, tenant_id, roles)
        return await self._control(execution_id, tenant_id, "approve", {
            "stepId": step_id, "approver": approver, "decision": decision, "comment": comment,
            "roles": sorted(roles)})

    async def retry_step(self, execution_id: str, step_id: str, *, actor: str = "system",
                         reason: str | None = None, tenant_id: str | None = None) -> Execution:
        """Re-run a failed/rejected step of a failed execution, and what its failure stopped."""
        arguments.check_control(execution_id, reason, actor, tenant_id, step_id=step_id)
        execution = await self._control(execution_id, tenant_id, "retry",
                                        {"stepId": step_id, "actor": actor, "reason": reason})
        self.hub.notify("execution.retried", execution)
        return execution

    async def publish_event(self, event_type: str, correlation_key: str, payload: Any = None, *,
                            tenant_id: str = "default", hop: int = 0) -> PublishResult:
        """Hand an event to every step waiting on it, or retain it for a later waiter. ``hop``:
        as for ``start_execution``; the executions event rules start carry it."""
        arguments.check_event(event_type, correlation_key, payload, tenant_id)
        self._check_hop(hop)
        if (size := json_size(payload)) > self.settings.max_event_bytes:
            raise too_large("payload", "event payload", size, self.settings.max_event_bytes, "MAX_EVENT_BYTES")
        if self.cluster is None:
            return await self.router.publish(tenant_id, event_type, str(correlation_key), payload,
                                             rules=partial(self.scheduler.on_event, hop=hop))
        event = self.router.new_event(tenant_id, event_type, str(correlation_key), payload)
        started = await self.scheduler.on_event(event, hop=hop)  # the executions event rules start count too
        cap = self.settings.max_retained_events_per_tenant
        if started or not self.settings.event_retention_ms:
            cap = 0  # taken by a rule, or nothing is retained: a waiter or nothing
        with trio.CancelScope(shield=True):  # once sent, its commands are handed over here, not read back
            result = await self._commit(Change(publish=event, retain_cap=cap,  # every process's waiters, at once
                                               retain_bytes_cap=self.settings.max_retained_event_bytes_per_tenant))
            self.cluster.hand(result.commands)
        delivered = started + result.delivered
        return PublishResult(delivered, result.retained and not started, event.id)

    # ------------------------------------------------------------------ triggers
    async def list_triggers(self, *, tenant_id: str = "default") -> list[TriggerInfo]:
        """The triggers of the latest version of every runbook the tenant sees."""
        return await self.scheduler.list(tenant_id)

    async def enable_trigger(self, runbook_id: str, trigger_id: str, *, tenant_id: str = "default",
                             actor: str = "system", reason: str | None = None) -> TriggerInfo:
        return await self.scheduler.switch(runbook_id, trigger_id, True, tenant_id=tenant_id, actor=actor,
                                           reason=reason)

    async def disable_trigger(self, runbook_id: str, trigger_id: str, *, tenant_id: str = "default",
                              actor: str = "system", reason: str | None = None) -> TriggerInfo:
        return await self.scheduler.switch(runbook_id, trigger_id, False, tenant_id=tenant_id, actor=actor,
                                           reason=reason)

    async def trigger_audit(self, runbook_id: str, trigger_id: str, *, tenant_id: str = "default") -> list[AuditEntry]:
        """Who switched the trigger on or off, and when (oldest first)."""
        runbook = await self.catalog.get(runbook_id, tenant_id=tenant_id)
        return await self._read(self.store.audit, audit_key(runbook.tenant_id, runbook_id, trigger_id))

    # ------------------------------------------------------------------ recovery
    async def _recover_all(self, nursery: trio.Nursery) -> None:
        if self.cluster is not None:
            for execution_id in await self.cluster.start(nursery):
                self.directory.start(execution_id, await self._read(self.store.get_execution, execution_id),
                                     taken_over=True)
            await self.cluster.take_over()
        else:
            for execution in await self._read(self.store.load_unfinished):
                self.directory.start(execution.id, execution)
            self.router.load_retained(await self._read(self.store.retained_events, self.clock.now()))


def context_hop(context: Mapping[str, Any]) -> int:
    """The hop an execution's context records (0: none, or not a count)."""
    hop = context.get("hop")
    return hop if isinstance(hop, int) and not isinstance(hop, bool) and hop > 0 else 0


def _visible(execution: Execution | None, execution_id: str, tenant_id: str | None) -> Execution:
    if execution is None or (tenant_id is not None and execution.tenant_id != tenant_id):
        raise NotFound(f"execution {execution_id} not found")
    return execution


def _same_input(existing: Execution, input_hash: str) -> Execution:
    if existing.input_hash != input_hash:
        raise ValidationError([Problem("Idempotency-Key", "this key was already used with a different input")],
                              title="idempotency key reused")
    return existing


def _check_start(runbook: Runbook, input: Any, context: Mapping[str, Any]) -> None:
    problems: list[Problem] = []
    if runbook.require_legal_basis and not context.get("legalBasis"):
        problems.append(Problem("context.legalBasis", "required by this runbook (requireLegalBasis)"))
    if runbook.input_schema is not None:
        problems += input_problems(runbook.input_schema, input)
    if problems:
        raise ValidationError(problems, title="input refused")


@asynccontextmanager
async def open_runtime(store: str | Store = "memory", *, settings: Settings | None = None,
                       http: httpx.AsyncClient | None = None, batch_observer: BatchObserver | None = None,
                       executors: Mapping[str, Any] | None = None) -> AsyncIterator[Runtime]:
    """Open the engine on a store (``"memory"``, ``"sqlite:///file.db"``, ``"postgresql://..."``).

    ``executors`` registers custom step types before recovery starts.
    """
    settings = settings or Settings()
    the_store = open_store_from_url(store) if isinstance(store, str) else store
    if the_store.threaded:
        await trio.to_thread.run_sync(the_store.open)
    else:
        the_store.open()
    body_error: BaseException | None = None
    runtime: Runtime | None = None
    try:
        async with _client(http, settings.call_service_allowed_hosts) as client, trio.open_nursery() as services:
            persistence = PersistenceActor(the_store, max_batch=settings.persistence_max_batch,
                                           observer=batch_observer)
            address: Address[PersistenceMessage]
            address, mailbox = open_mailbox("persistence", 4096)
            services.start_soon(persistence.run, mailbox, name="persistence")
            try:
                async with open_supervisor("executions") as executions:
                    clock = Clock()
                    timers = Timers(clock)
                    runtime = Runtime(the_store, settings, client, address, persistence,
                                      Directory(executions, services), clock, timers)
                    install_log_redaction(runtime.secrets)
                    for name, executor in (executors or {}).items():
                        runtime.register_executor(name, executor)
                    services.start_soon(timers.run, runtime._fire, name="timers")
                    services.start_soon(partial(retained.sweep, runtime.router.retained, clock.now, runtime._commit,
                                                retained.sweep_interval_s(settings.event_retention_ms),
                                                periodic=runtime.cluster is not None), name="retained events sweep")
                    # children, notifications and triggers reach the executions: they end before them
                    async with trio.open_nursery() as background:
                        runtime._start_services(background)
                        await runtime._recover_all(services)
                        await runtime.scheduler.load()
                        background.start_soon(runtime.scheduler.run, name="triggers")
                        if runtime.cluster is not None:
                            services.start_soon(runtime.cluster.heartbeat, name="heartbeat")
                        try:
                            yield runtime
                        except BaseException as exc:
                            body_error = exc
                            raise
                        finally:
                            background.cancel_scope.cancel()
                            executions.cancel()
                # flush, then let another process take over at once; bounded (store down)
                release = runtime.cluster.stop if runtime.cluster is not None else None
                await shutdown.hand_over(address, persistence, release, settings.shutdown_timeout_ms / 1000)
            finally:
                shutdown.stop_persistence(persistence)  # cancelled or failed: refuse what is pending
                services.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The caller's own exception comes back as itself, not wrapped by our nurseries;
        # any other failure (or several) stays a group.
        if body_error is not None and _only_leaf(group) is body_error:
            raise body_error from None
        raise
    finally:
        if runtime is not None:
            runtime.services.close()  # the gRPC channels, once no execution runs
            remove_log_redaction(runtime.secrets)
        await shutdown.close_store(the_store)


def _only_leaf(group: BaseExceptionGroup[Any]) -> BaseException | None:
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop()
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        elif not isinstance(exc, trio.Cancelled):
            leaves.append(exc)
    return leaves[0] if len(leaves) == 1 else None


@asynccontextmanager
async def _client(http: httpx.AsyncClient | None, allowed: HostAllowlist | None) -> AsyncIterator[httpx.AsyncClient]:
    if http is not None:
        yield http
        return
    client = httpx.AsyncClient(timeout=30.0, follow_redirects=False) if allowed is None else \
        checked_client(allowed, timeout=30.0, follow_redirects=False)  # every connection checked
    async with client:
        yield client
