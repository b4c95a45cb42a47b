"""``open_runtime`` and ``Runtime``: the root supervisor and the public embedded API (SPEC 6).

The Runtime opens the store, starts the PersistenceActor and the executions supervisor,
recovers every unfinished execution from the store (recovery is the start path), and then
serves the API: each method validates, then talks to the actor that owns the state.
Leaving ``open_runtime`` cancels every execution actor, flushes the PersistenceActor and
closes the store; with a persistent store, unfinished executions resume at the next open.
"""

from __future__ import annotations

import logging
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import attrs
import httpx
import trio

from actors import (
    ActorGone,
    Address,
    Mailbox,
    RestartPolicy,
    Supervisor,
    ask,
    open_mailbox,
    open_supervisor,
)
from runtime import arguments
from runtime.errors import Conflict, NotFound, Problem, ValidationError
from runtime.events import EventRouter, PublishResult
from runtime.execution import ExecutionActor
from runtime.input_schema import input_problems
from runtime.leases import Leases
from runtime.messages import (
    CancelExecution,
    DecideApproval,
    ExecutionMessage,
    PauseExecution,
    ResumeExecution,
    StopExecution,
)
from runtime.model import (
    AuditEntry,
    Evidence,
    Execution,
    ExecutionStatus,
    LogEntry,
    RetryPolicy,
    Runbook,
    StepError,
    StepState,
    StepStatus,
)
from runtime.persistence import BatchObserver, Commit, Flush, PersistenceActor, PersistenceMessage
from runtime.records import Change, ChangeResult
from runtime.settings import Settings
from runtime.steps.context import Services
from runtime.steps.outbound import HostAllowlist, checked_client
from runtime.steps.registry import StepTypes
from runtime.store import open_store_from_url
from runtime.store.base import Store
from runtime.validate import build_runbook, validate_document
from runtime.wire import load_document, sha256_hex

T = TypeVar("T")
logger = logging.getLogger("runbooks.runtime")
ES = ExecutionStatus
EXECUTION_RESTARTS = RestartPolicy(max_restarts=3, within_s=10.0)


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
                 executions: Supervisor) -> None:
        self.store = store
        self.settings = settings
        self.types = StepTypes()
        self.default_retry_policy: RetryPolicy = settings.default_retry_policy
        self._persistence = persistence
        self.persistence = persistence_actor
        self._executions = executions
        self._wall0 = datetime.now(UTC)
        self._trio0 = trio.current_time()
        self.services = Services(http=http, now=self.now, call_service_base_url=settings.call_service_base_url,
                                 allowed_hosts=settings.call_service_allowed_hosts)
        self.router = EventRouter(now=self.now, retention_ms=settings.event_retention_ms,
                                  commit=self._commit, address=self._address_or_none)
        self._live: dict[str, Address[ExecutionMessage]] = {}
        self._ended: dict[str, trio.Event] = {}
        self._snapshots: dict[str, Execution] = {}
        self._recent: OrderedDict[str, Execution] = OrderedDict()
        self._watchers: dict[str, list[trio.MemorySendChannel[Execution]]] = {}
        self._runbooks: dict[tuple[str | None, str, int], Runbook] = {}
        self.observers: list[Callable[[str, Any], None]] = []
        self.leases = (Leases(store, settings.lease_ttl_ms, self._read)  # type: ignore[arg-type]
                       if getattr(store, "supports_leases", False) else None)

    @property
    def open_executions(self) -> int:
        """Executions with a live actor (running, waiting or paused)."""
        return len(self._live)

    # ------------------------------------------------------------------ clock
    def now(self) -> datetime:
        """Wall-clock time that advances with Trio's clock (so MockClock drives it in tests)."""
        return self._wall0 + timedelta(seconds=trio.current_time() - self._trio0)

    # ------------------------------------------------------------------ store access
    async def _read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if not self.store.threaded:
            return fn(*args, **kwargs)
        return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs))

    async def _commit(self, change: Change) -> ChangeResult:
        return await ask(self._persistence, lambda reply: Commit(change, reply))

    # ------------------------------------------------------------------ runbooks
    def register_executor(self, type_name: str, executor: Any) -> None:
        """Register a custom step type: ``async def executor(ctx)`` or an object with ``execute``."""
        arguments.check_ids(type_name=type_name)
        self.types.register(type_name, executor)

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
        doc = load_document(document)
        runbook = build_runbook(doc, self.types, self.settings.default_max_retries)
        runbook = attrs.evolve(runbook, tenant_id=tenant_id, created_at=self.now())
        result = await self._commit(Change(runbook=runbook))
        assert result.runbook_version is not None
        runbook = attrs.evolve(runbook, version=result.runbook_version)
        self._runbooks[(tenant_id, runbook.id, runbook.version)] = runbook
        self._notify("runbook.registered", runbook)
        return runbook

    async def get_runbook(self, runbook_id: str, version: int | None = None, *,
                          tenant_id: str | None = None) -> Runbook:
        arguments.check_runbook_lookup(runbook_id, version, tenant_id)
        runbook = await self._read(self.store.get_runbook, tenant_id, runbook_id, version)
        if runbook is None:
            which = f"version {version} of runbook" if version else "runbook"
            raise NotFound(f"{which} '{runbook_id}' not found")
        return runbook

    async def list_runbooks(self, *, tenant_id: str | None = None) -> list[Runbook]:
        arguments.check_tenant(tenant_id)
        return await self._read(self.store.list_runbooks, tenant_id)

    async def _pinned_runbook(self, execution: Execution) -> Runbook:
        owner = execution.tenant_id
        for key in ((owner, execution.runbook_id, execution.runbook_version),
                    (None, execution.runbook_id, execution.runbook_version)):
            if key in self._runbooks:
                return self._runbooks[key]
        runbook = await self.get_runbook(execution.runbook_id, execution.runbook_version, tenant_id=owner)
        self._runbooks[(runbook.tenant_id, runbook.id, runbook.version)] = runbook
        return runbook

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
                              reason: str | None = None) -> StartResult:
        arguments.check_start(runbook_id, input, context, version, idempotency_key, force, actor, reason)
        ctx = dict(context or {})
        tenant = str(ctx.get("tenantId") or "default")
        ctx["tenantId"] = tenant
        runbook = await self.get_runbook(runbook_id, version, tenant_id=tenant)
        self._runbooks.setdefault((runbook.tenant_id, runbook.id, runbook.version), runbook)
        _check_start(runbook, input, ctx)
        input_hash = sha256_hex(input)
        if idempotency_key is not None:
            existing = await self._read(self.store.find_by_idempotency_key, tenant, idempotency_key)
            if existing is not None:
                return StartResult(_same_input(existing, input_hash), False)
        execution = self._new_execution(runbook, input, ctx, input_hash, idempotency_key, force, replay_of)
        audit = AuditEntry(execution.id, execution.created_at, actor or str(ctx.get("userId") or "system"),
                           "execution.started", None, ctx.get("legalBasis"), reason or ctx.get("reason"),
                           {"runbookId": runbook.id, "runbookVersion": runbook.version, "replayOf": replay_of})
        log = LogEntry(execution.id, execution.created_at, "info", "execution created", None,
                       {"runbookId": runbook.id, "runbookVersion": runbook.version})
        result = await self._commit(Change(new_execution=execution, dedup=not force, audit=(audit,), logs=(log,)))
        if result.existing_id is not None:
            existing = await self.fetch(result.existing_id)
            return StartResult(_same_input(existing, input_hash) if idempotency_key else existing, False)
        self._publish(execution)
        if self.leases is None or await self.leases.claim_new(execution.id):
            self._spawn(execution.id)
        self._notify("execution.started", execution)
        return StartResult(execution, True)

    def _new_execution(self, runbook: Runbook, input: Any, ctx: dict[str, Any], input_hash: str,
                       idempotency_key: str | None, force: bool, replay_of: str | None) -> Execution:
        return Execution(
            id=uuid.uuid4().hex, runbook_id=runbook.id, runbook_version=runbook.version,
            tenant_id=ctx["tenantId"], status=ES.PENDING, created_at=self.now(),
            steps={s.id: StepState(StepStatus.PENDING, s.type) for s in runbook.steps},
            input=input, context=ctx, input_hash=input_hash, idempotency_key=idempotency_key,
            deduplicated=not force, replay_of=replay_of,
        )

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

    # ------------------------------------------------------------------ execution actors
    def _spawn(self, execution_id: str) -> None:
        self._ended[execution_id] = trio.Event()

        async def give_up(exc: BaseException) -> None:
            await self._crashed(execution_id, exc)

        self._live[execution_id] = self._executions.spawn(
            lambda mailbox: self._run_execution(execution_id, mailbox), name=f"execution {execution_id}",
            mailbox_size=64, policy=EXECUTION_RESTARTS, on_give_up=give_up,
        )

    async def _run_execution(self, execution_id: str, mailbox: Mailbox[ExecutionMessage]) -> None:
        execution = self._snapshots[execution_id]  # the committed state: new, recovered or restarted
        runbook = await self._pinned_runbook(execution)
        await ExecutionActor(self, execution, runbook).run(mailbox)

    async def _crashed(self, execution_id: str, exc: BaseException) -> None:
        execution = self._snapshots.get(execution_id)
        self._live.pop(execution_id, None)
        if execution is not None and not execution.status.finished:
            error = StepError("crashed", f"execution actor crashed repeatedly: {_describe(exc)}")
            failed = attrs.evolve(execution, status=ES.FAILED, error=error, completed_at=self.now())
            await self._commit(Change(execution=failed, audit=(AuditEntry(
                execution_id, self.now(), "system", "execution.failed", data={"error": error.message}),)))
            self._publish(failed)
        self._ended.pop(execution_id, trio.Event()).set()

    def _execution_ended(self, execution: Execution) -> None:
        self._live.pop(execution.id, None)
        self._ended.pop(execution.id, trio.Event()).set()
        if self.leases is not None:
            if execution.status.finished:
                self.leases.finished(execution.id)
            else:  # stopped here: another process owns it now
                self._snapshots.pop(execution.id, None)

    def _lease_lost(self, execution_id: str) -> None:
        address = self._live.get(execution_id)
        if address is not None:
            try:
                address.send_nowait(StopExecution())
            except (trio.WouldBlock, ActorGone):
                pass  # the next heartbeat tries again

    async def _take_over(self, execution_id: str) -> None:
        execution = await self._read(self.store.get_execution, execution_id)
        if execution is not None and not execution.status.finished and execution_id not in self._live:
            self._snapshots[execution_id] = execution
            self._spawn(execution_id)
            self._notify("execution.taken_over", execution_id)

    def owns(self, execution_id: str) -> bool:
        """Whether this runtime runs the execution now (with PostgreSQL: holds its lease)."""
        return execution_id in self._live

    def _address(self, execution_id: str) -> Address[ExecutionMessage]:
        address = self._live.get(execution_id)
        if address is None:
            raise Conflict(f"execution {execution_id} is not running")
        return address

    def _address_or_none(self, execution_id: str) -> Address[ExecutionMessage] | None:
        return self._live.get(execution_id)

    def _publish(self, execution: Execution) -> None:
        """A committed snapshot: visible to get(), watchers and waiters."""
        if execution.status.finished:
            self._snapshots.pop(execution.id, None)
            self._recent[execution.id] = execution
            self._recent.move_to_end(execution.id)
            while len(self._recent) > self.settings.finished_cache_size:
                self._recent.popitem(last=False)
        else:
            self._snapshots[execution.id] = execution
        for watcher in list(self._watchers.get(execution.id, ())):
            try:
                watcher.send_nowait(execution)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                watcher.close()  # a consumer that cannot keep up is dropped, never the engine slowed
                self._watchers[execution.id].remove(watcher)
            if execution.status.finished:
                watcher.close()
        if execution.status.finished:
            self._watchers.pop(execution.id, None)
            self._notify("execution.finished", execution)

    def _notify(self, what: str, data: Any) -> None:
        for observer in self.observers:
            try:
                observer(what, data)
            except Exception:  # an observer's bug must not take an execution down
                logger.exception("observer %r failed on %s", observer, what)

    async def _recover_all(self) -> None:
        if self.leases is not None:
            for execution_id in await self.leases.claim_expired():
                await self._take_over(execution_id)
        else:
            for execution in await self._read(self.store.load_unfinished):
                self._snapshots[execution.id] = execution
                self._spawn(execution.id)
        self.router.load_retained(await self._read(self.store.retained_events, self.now()))

    # ------------------------------------------------------------------ reading
    def get(self, execution_id: str, *, tenant_id: str | None = None) -> Execution:
        """The latest committed state (from memory; falls back to a direct store read)."""
        arguments.check_lookup(execution_id, tenant_id)
        execution = self._snapshots.get(execution_id) or self._recent.get(execution_id)
        if execution is None:
            execution = self.store.get_execution(execution_id)
        return _visible(execution, execution_id, tenant_id)

    async def fetch(self, execution_id: str, *, tenant_id: str | None = None) -> Execution:
        """Like ``get``, reading the store off the event loop when the execution is not in memory."""
        arguments.check_lookup(execution_id, tenant_id)
        execution = self._snapshots.get(execution_id) or self._recent.get(execution_id)
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
        current = self._snapshots.get(execution_id)
        if current is None:  # finished (or, with leases, run by another process)
            current = await self.fetch(execution_id, tenant_id=tenant_id)
            if not current.status.finished:
                raise Conflict(f"execution {execution_id} is run by another process sharing this database; "
                               "send the request to that process")
            yield current
            return
        _visible(current, execution_id, tenant_id)
        send, receive = trio.open_memory_channel[Execution](1024)
        watchers = self._watchers.setdefault(execution_id, [])
        watchers.append(send)  # registered with the snapshot, in one step: no state falls between
        try:
            yield current
            with receive:
                async for execution in receive:
                    yield execution
        finally:
            send.close()
            if send in watchers:
                watchers.remove(send)

    async def ready(self) -> None:
        """Raise unless the store answers and the last commit succeeded."""
        await self._read(self.store.ping)
        if not self.persistence.stats.healthy:
            raise ConnectionError(self.persistence.stats.last_error or "commits are failing")

    # ------------------------------------------------------------------ control
    async def _control(self, execution_id: str, tenant_id: str | None, make: Callable[[Any], Any]) -> Execution:
        execution = await self.fetch(execution_id, tenant_id=tenant_id)
        address = self._live.get(execution_id)
        if address is None:
            if self.leases is not None and not execution.status.finished:
                raise Conflict(f"execution {execution_id} is run by another process sharing this "
                               "database; send the request to that process")
            raise Conflict(f"execution {execution_id} is {execution.status.value}")
        try:
            await ask(address, make)
        except ActorGone:
            raise Conflict(f"execution {execution_id} is {self.get(execution_id).status.value}") from None
        return self.get(execution_id)

    async def pause(self, execution_id: str, reason: str | None = None, *, actor: str = "system",
                    tenant_id: str | None = None) -> Execution:
        arguments.check_control(execution_id, reason, actor, tenant_id)
        return await self._control(execution_id, tenant_id, lambda r: PauseExecution(actor, reason, r))

    async def resume(self, execution_id: str, reason: str | None = None, *, actor: str = "system",
                     tenant_id: str | None = None) -> Execution:
        arguments.check_control(execution_id, reason, actor, tenant_id)
        return await self._control(execution_id, tenant_id, lambda r: ResumeExecution(actor, reason, r))

    async def cancel(self, execution_id: str, reason: str, *, actor: str = "system",
                     tenant_id: str | None = None) -> Execution:
        arguments.check_control(execution_id, reason, actor, tenant_id)
        if not reason:
            raise ValidationError([Problem("reason", "required: why the execution is cancelled")])
        return await self._control(execution_id, tenant_id, lambda r: CancelExecution(actor, reason, r))

    async def submit_approval(self, execution_id: str, step_id: str, *, approver: str, decision: str,
                              comment: str | None = None, tenant_id: str | None = None,
                              roles: Iterable[str] = ()) -> Execution:
        """Record ``approve`` or ``reject`` from ``approver`` on an approval step; ``roles`` (the
        approver's) let an approver entry ``role:NAME`` admit them."""
        arguments.check_approval(execution_id, step_id, approver, decision, comment, tenant_id, roles)
        held = tuple(roles)
        return await self._control(execution_id, tenant_id,
                                   lambda r: DecideApproval(step_id, approver, decision, comment, r, held))

    async def publish_event(self, event_type: str, correlation_key: str, payload: Any = None, *,
                            tenant_id: str = "default") -> PublishResult:
        """Hand an event to every step waiting on it, or retain it for a later waiter."""
        arguments.check_event(event_type, correlation_key, payload, tenant_id)
        return await self.router.publish(tenant_id, event_type, str(correlation_key), payload)

    async def retry_step(self, execution_id: str, step_id: str, *, actor: str = "system",
                         reason: str | None = None, tenant_id: str | None = None) -> Execution:
        """Re-run a failed/rejected step of a failed execution, and what its failure stopped."""
        arguments.check_control(execution_id, reason, actor, tenant_id, step_id=step_id)
        execution = await self.fetch(execution_id, tenant_id=tenant_id)
        if step_id not in execution.steps:
            raise NotFound(f"execution {execution_id} has no step '{step_id}'")
        if execution.status is not ES.FAILED:
            raise Conflict(f"only a failed execution can retry a step (this one is {execution.status.value})")
        if execution.steps[step_id].status not in (StepStatus.FAILED, StepStatus.REJECTED):
            raise Conflict(f"step '{step_id}' is {execution.steps[step_id].status.value}, not failed or rejected")
        ended = self._ended.get(execution_id)
        if ended is not None:
            await ended.wait()
        runbook = await self._pinned_runbook(execution)
        reset = _steps_to_retry(runbook, execution, step_id)
        steps = dict(execution.steps)
        for sid in reset:
            steps[sid] = StepState(StepStatus.PENDING, steps[sid].type, attempts=steps[sid].attempts)
        from datetime import timedelta

        deadline = self.now() + timedelta(milliseconds=runbook.timeout_ms) if runbook.timeout_ms else None
        retried = attrs.evolve(execution, status=ES.RUNNING, error=None, completed_at=None, output=None,
                               steps=steps, deadline_at=deadline)
        positions = {s.id: i for i, s in enumerate(runbook.steps)}
        await self._commit(Change(
            execution=retried,
            steps=tuple((execution_id, sid, positions[sid], steps[sid]) for sid in reset),
            audit=(AuditEntry(execution_id, self.now(), actor, "step.retry", step_id,
                              execution.context.get("legalBasis"), reason, {"reset": sorted(reset)}),),
            logs=(LogEntry(execution_id, self.now(), "info", "step retry requested", step_id,
                           {"reset": sorted(reset)}),),
        ))
        self._recent.pop(execution_id, None)
        self._publish(retried)
        if self.leases is None or await self.leases.claim_new(execution_id):
            self._spawn(execution_id)  # (else the process holding its lease runs it)
            self._notify("execution.retried", retried)
        return retried


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


def _steps_to_retry(runbook: Runbook, execution: Execution, step_id: str) -> set[str]:
    """The step, the steps its failure cancelled, and everything downstream that did not succeed."""
    reset = {step_id} | {sid for sid, s in execution.steps.items() if s.status is StepStatus.CANCELLED}
    dependents: dict[str, list[str]] = {}
    for step in runbook.steps:
        for dep in step.depends_on or ():
            dependents.setdefault(dep, []).append(step.id)
    frontier = list(reset)
    while frontier:
        for child in dependents.get(frontier.pop(), ()):
            if child not in reset and execution.steps[child].status is not StepStatus.SUCCEEDED:
                reset.add(child)
                frontier.append(child)
    return reset


@asynccontextmanager
async def open_runtime(store: str | Store = "memory", *, settings: Settings | None = None,
                       http: httpx.AsyncClient | None = None,
                       batch_observer: BatchObserver | None = None) -> AsyncIterator[Runtime]:
    """Open the engine on a store (``"memory"``, ``"sqlite:///file.db"``, ``"postgresql://..."``)."""
    settings = settings or Settings()
    the_store = open_store_from_url(store) if isinstance(store, str) else store
    if the_store.threaded:
        await trio.to_thread.run_sync(the_store.open)
    else:
        the_store.open()
    body_error: BaseException | None = None
    try:
        async with _client(http, settings.call_service_allowed_hosts) as client, trio.open_nursery() as services:
            persistence = PersistenceActor(the_store, max_batch=settings.persistence_max_batch,
                                           observer=batch_observer)
            address: Address[PersistenceMessage]
            address, mailbox = open_mailbox("persistence", 4096)
            services.start_soon(persistence.run, mailbox, name="persistence")
            async with open_supervisor("executions") as executions:
                runtime = Runtime(the_store, settings, client, address, persistence, executions)
                await runtime._recover_all()
                if runtime.leases is not None:
                    services.start_soon(runtime.leases.heartbeat, lambda: set(runtime._live),
                                        runtime._lease_lost, runtime._take_over, name="lease heartbeat")
                try:
                    yield runtime
                except BaseException as exc:
                    body_error = exc
                    raise
                finally:
                    executions.cancel()
            await ask(address, Flush)  # everything sent before is committed
            if runtime.leases is not None:  # let another process take over at once
                await runtime.leases.release_all(sorted(runtime._snapshots))
            services.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The caller's own exception comes back as itself, not wrapped by our nurseries;
        # any other failure (or several) stays a group.
        if body_error is not None and _only_leaf(group) is body_error:
            raise body_error from None
        raise
    finally:
        if the_store.threaded:
            await trio.to_thread.run_sync(the_store.close)
        else:
            the_store.close()


def _describe(exc: BaseException) -> str:
    """``Type: message`` of each leaf of an exception (group), for error messages."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(inner) for inner in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"


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
