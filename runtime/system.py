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
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, TypeVar

import attrs
import httpx
import jsonschema
import trio

from actors import ActorGone, Address, Reply, open_mailbox, open_supervisor
from runtime import outage, retained, shutdown
from runtime.approvals import ApprovalPage, pending_for
from runtime.catalog import Catalog
from runtime.clock import Clock
from runtime.core import Cancel, DecideApproval, Pause, Resume, RetryStep, Tick, created
from runtime.directory import Directory
from runtime.errors import Conflict, NotFound, Problem, StoreUnavailable, ValidationError
from runtime.events import EventRouter, PublishResult
from runtime.execution import ActorMessage, Stop
from runtime.host import ExecutionHost
from runtime.leases import Leases
from runtime.model import AuditEntry, Evidence, Execution, ExecutionStatus, LogEntry, Runbook
from runtime.persistence import BatchObserver, Commit, PersistenceActor, PersistenceMessage
from runtime.records import Change, ChangeResult
from runtime.settings import Settings
from runtime.steps.context import Services
from runtime.steps.registry import StepTypes
from runtime.store import open_store_from_url
from runtime.store.base import Store
from runtime.timers import Timers
from runtime.validate import validate_document
from runtime.watch import Observer, WatchHub
from runtime.wire import load_document, sha256_hex

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
        self.services = Services(http=http, now=self.clock.now, call_service_base_url=settings.call_service_base_url)
        self.hub = WatchHub(settings.finished_cache_size)
        self.catalog = Catalog(store, self._read, self._commit, StepTypes(), settings, self.clock)
        self.router = EventRouter(now=self.clock.now, retention_ms=settings.event_retention_ms,
                                  commit=self._commit, ask=directory.ask,
                                  max_retained_per_tenant=settings.max_retained_events_per_tenant)
        self.leases = (Leases(store, settings.lease_ttl_ms, self._read)  # type: ignore[arg-type]
                       if getattr(store, "supports_leases", False) else None)
        directory.host = ExecutionHost(  # an actor's reads wait for the store, as its commits do
            clock=self.clock, load=outage.waiting(self._load, "loading an execution"),
            plan_for=outage.waiting(self.catalog.plan_for, "reading a runbook"), commit=self._commit,
            published=self.hub.published, types=self.catalog.types, services=self.services,
            default_policy=settings.default_retry_policy, router=self.router, timers=timers,
            left=self._left, incarnation=directory.next_incarnation,
        )
        if self.leases is not None:
            directory.on_finished = self.leases.finished

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

    def _left(self, execution_id: str, address: Any, final: Execution | None) -> None:
        if final is not None:
            self.hub.remember(final)  # parked or finished: get() still answers from memory
        self.directory.left(execution_id, address, final)

    def _fire(self, execution_id: str, at: datetime) -> None:
        self.directory.post(execution_id, Tick(at))

    # ------------------------------------------------------------------ runbooks
    def register_executor(self, type_name: str, executor: Any) -> None:
        """Register a custom step type: ``async def executor(ctx)`` or an object with ``execute``.
        Executions waiting for this type go on at once."""
        self.catalog.register_executor(type_name, executor)

    def validate_runbook(self, document: Any) -> list[Problem]:
        """Every problem of a document (nothing is registered)."""
        try:
            doc = load_document(document)
        except ValidationError as exc:
            return exc.problems
        return validate_document(doc, self.types)

    async def register_runbook(self, document: Any, *, tenant_id: str | None = None) -> Runbook:
        """Validate and register a new version; ``tenant_id`` None: shared by every tenant."""
        runbook = await self.catalog.register(document, tenant_id)
        self.hub.notify("runbook.registered", runbook)
        return runbook

    async def get_runbook(self, runbook_id: str, version: int | None = None, *,
                          tenant_id: str | None = None) -> Runbook:
        return await self.catalog.get(runbook_id, version, tenant_id=tenant_id)

    async def list_runbooks(self, *, tenant_id: str | None = None) -> list[Runbook]:
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
                              reason: str | None = None) -> StartResult:
        ctx = dict(context or {})
        tenant = str(ctx.get("tenantId") or "default")
        ctx["tenantId"] = tenant
        runbook = await self.catalog.get(runbook_id, version, tenant_id=tenant)
        _check_start(runbook, input, ctx)
        input_hash = sha256_hex(input)
        if idempotency_key is not None:
            existing = await self._read(self.store.find_by_idempotency_key, tenant, idempotency_key)
            if existing is not None:
                return StartResult(_same_input(existing, input_hash), False)
        change = created(runbook, execution_id=uuid.uuid4().hex, input=input, context=ctx, input_hash=input_hash,
                         idempotency_key=idempotency_key, dedup=not force, replay_of=replay_of,
                         now=self.clock.now(), actor=actor, reason=reason)
        if self.leases is not None:  # the lease is taken in the start's own transaction
            change = attrs.evolve(change, lease=(self.leases.owner, self.leases.ttl_s))
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

    async def replay(self, execution_id: str, *, actor: str | None = None, reason: str | None = None,
                     tenant_id: str | None = None) -> Execution:
        """A new execution of the same runbook version with the same input and context.

        ``actor`` and ``reason`` (the caller) are recorded in the new execution's audit log.
        """
        old = await self.fetch(execution_id, tenant_id=tenant_id)
        result = await self.start_execution(old.runbook_id, old.input, old.context, version=old.runbook_version,
                                            force=True, replay_of=old.id, actor=actor, reason=reason)
        return result.execution

    # ------------------------------------------------------------------ reading
    def owns(self, execution_id: str) -> bool:
        """Whether this runtime runs the execution now (with PostgreSQL: holds its lease)."""
        return self.directory.knows(execution_id)

    def _in_memory(self, execution_id: str) -> Execution | None:
        return self.directory.snapshot(execution_id) or self.hub.recent(execution_id)

    def get(self, execution_id: str, *, tenant_id: str | None = None) -> Execution:
        """The latest committed state, from memory: a live execution, or one committed or read
        recently (``Settings.finished_cache_size`` of them). With the memory store any
        execution; otherwise, for one not in memory, use ``await fetch()``."""
        execution = self._in_memory(execution_id)
        if execution is None:
            if self.store.threaded:
                raise NotFound(f"execution {execution_id} is not in this runtime's memory; "
                               "await fetch() reads it from the store")
            execution = self.store.get_execution(execution_id)
        return _visible(execution, execution_id, tenant_id)

    async def fetch(self, execution_id: str, *, tenant_id: str | None = None) -> Execution:
        """The latest committed state, reading the store (off the event loop) when it is not in memory."""
        execution = self._in_memory(execution_id)
        if execution is None:
            execution = await self._read(self.store.get_execution, execution_id)
        return _visible(execution, execution_id, tenant_id)

    async def list_executions(self, *, tenant_id: str | None = None, runbook_id: str | None = None,
                              status: str | None = None, limit: int = 50, cursor: str | None = None) -> Page:
        if status is not None and status not in {s.value for s in ES}:
            raise ValidationError([Problem("status", f"unknown status '{status}'")])
        if not 1 <= limit <= 1000:
            raise ValidationError([Problem("limit", "must be between 1 and 1000")])
        items, next_cursor = await self._read(self.store.list_executions, tenant_id, runbook_id=runbook_id,
                                              status=status, limit=limit, cursor=cursor)
        return Page(items, next_cursor)

    async def pending_approvals(self, user: str, *, tenant_id: str | None = None, limit: int = 50,
                                cursor: str | None = None) -> ApprovalPage:
        """Approval steps waiting for ``user``'s decision across the tenant's unfinished executions."""
        if not 1 <= limit <= 1000:
            raise ValidationError([Problem("limit", "must be between 1 and 1000")])

        async def read_page(size: int, after: str | None) -> tuple[list[Execution], str | None]:
            return await self._read(self.store.awaiting_approval, tenant_id, limit=size, cursor=after)

        return await pending_for(user, read_page, self.catalog.pinned, limit=limit, cursor=cursor)

    async def logs(self, execution_id: str, *, step_id: str | None = None, level: str | None = None,
                   after: int | None = None, limit: int = 1000, tenant_id: str | None = None) -> list[LogEntry]:
        await self.fetch(execution_id, tenant_id=tenant_id)
        return await self._read(self.store.logs, execution_id, step_id=step_id, level=level, after=after,
                                limit=limit)

    async def evidence(self, execution_id: str, *, tenant_id: str | None = None) -> list[Evidence]:
        await self.fetch(execution_id, tenant_id=tenant_id)
        return await self._read(self.store.evidence, execution_id)

    async def audit(self, execution_id: str, *, tenant_id: str | None = None) -> list[AuditEntry]:
        await self.fetch(execution_id, tenant_id=tenant_id)
        return await self._read(self.store.audit, execution_id)

    async def wait(self, execution_id: str, *, tenant_id: str | None = None) -> Execution:
        """The execution once it has finished (completed, failed, cancelled or timed out)."""
        async for execution in self.watch(execution_id, tenant_id=tenant_id):
            if execution.status.finished:
                return execution
        return await self.fetch(execution_id, tenant_id=tenant_id)

    async def watch(self, execution_id: str, *, tenant_id: str | None = None) -> AsyncIterator[Execution]:
        """Every committed state of the execution, live, from now until it finishes.

        The first state is the current one; none is lost however slowly the consumer reads
        (up to 1,024 states behind, then its stream ends).
        """
        async def current() -> Execution:
            execution = await self.fetch(execution_id, tenant_id=tenant_id)
            if not execution.status.finished and self.leases is not None and not self.owns(execution_id):
                raise Conflict(f"execution {execution_id} is run by another process sharing this database; "
                               "send the request to that process")
            return execution

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
    async def _control(self, execution_id: str, tenant_id: str | None,
                       make: Callable[[Reply[Execution]], ActorMessage], *, finished_ok: bool = False) -> Execution:
        execution = await self.fetch(execution_id, tenant_id=tenant_id)
        if not self.owns(execution_id):
            if self.leases is not None and not execution.status.finished:
                raise Conflict(f"execution {execution_id} is run by another process sharing this "
                               "database; send the request to that process")
            if execution.status.finished and not finished_ok:
                raise Conflict(f"execution {execution_id} is {execution.status.value}")
        try:
            return await self.directory.ask(execution_id, make)
        except ActorGone:
            latest = await self.fetch(execution_id)
            raise Conflict(f"execution {execution_id} is {latest.status.value}") from None

    async def pause(self, execution_id: str, reason: str | None = None, *, actor: str = "system",
                    tenant_id: str | None = None) -> Execution:
        return await self._control(execution_id, tenant_id, lambda r: Pause(actor, reason, r))

    async def resume(self, execution_id: str, reason: str | None = None, *, actor: str = "system",
                     tenant_id: str | None = None) -> Execution:
        return await self._control(execution_id, tenant_id, lambda r: Resume(actor, reason, r))

    async def cancel(self, execution_id: str, reason: str, *, actor: str = "system",
                     tenant_id: str | None = None) -> Execution:
        if not reason:
            raise ValidationError([Problem("reason", "required: why the execution is cancelled")])
        return await self._control(execution_id, tenant_id, lambda r: Cancel(actor, reason, r))

    async def submit_approval(self, execution_id: str, step_id: str, *, approver: str, decision: str,
                              comment: str | None = None, tenant_id: str | None = None) -> Execution:
        """Record ``approve`` or ``reject`` from ``approver`` on an approval step."""
        return await self._control(execution_id, tenant_id,
                                   lambda r: DecideApproval(step_id, approver, decision, comment, r))

    async def retry_step(self, execution_id: str, step_id: str, *, actor: str = "system",
                         reason: str | None = None, tenant_id: str | None = None) -> Execution:
        """Re-run a failed/rejected step of a failed execution, and what its failure stopped."""
        execution = await self._control(execution_id, tenant_id, lambda r: RetryStep(step_id, actor, reason, r),
                                        finished_ok=True)
        if self.leases is not None:
            await self.leases.claim_new(execution_id)
        self.hub.notify("execution.retried", execution)
        return execution

    async def publish_event(self, event_type: str, correlation_key: str, payload: Any = None, *,
                            tenant_id: str = "default") -> PublishResult:
        """Hand an event to every step waiting on it, or retain it for a later waiter."""
        return await self.router.publish(tenant_id, event_type, str(correlation_key), payload)

    # ------------------------------------------------------------------ recovery and leases
    async def _recover_all(self) -> None:
        if self.leases is not None:
            for execution_id in await self.leases.claim_expired():
                await self._take_over(execution_id)
        else:
            for execution in await self._read(self.store.load_unfinished):
                self.directory.start(execution.id, execution)
        self.router.load_retained(await self._read(self.store.retained_events, self.clock.now()))

    async def _take_over(self, execution_id: str) -> None:
        execution = await self._read(self.store.get_execution, execution_id)
        if execution is not None and not execution.status.finished and not self.owns(execution_id):
            self.directory.start(execution_id, execution)
            self.hub.notify("execution.taken_over", execution_id)

    def _release_leases(self) -> shutdown.Release | None:
        leases = self.leases
        if leases is None:
            return None
        return lambda: leases.release_all(sorted(self.directory.ids()))

    def _lease_lost(self, execution_id: str) -> None:
        address = self.directory.address(execution_id)
        self.directory.forget(execution_id)
        if address is not None:
            try:
                address.send_nowait(Stop())
            except (trio.WouldBlock, ActorGone):
                pass  # the next heartbeat tries again


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
        validator = jsonschema.validators.validator_for(runbook.input_schema)(runbook.input_schema)
        for error in sorted(validator.iter_errors(input), key=lambda e: list(e.absolute_path)):
            path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
            problems.append(Problem(f"input{path}", error.message))
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
        async with _client(http) as client, trio.open_nursery() as services:
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
                    for name, executor in (executors or {}).items():
                        runtime.register_executor(name, executor)
                    services.start_soon(timers.run, runtime._fire, name="timers")
                    services.start_soon(retained.sweep, runtime.router.retained, clock.now, runtime._commit,
                                        retained.sweep_interval_s(settings.event_retention_ms),
                                        name="retained events sweep")
                    await runtime._recover_all()
                    if runtime.leases is not None:
                        services.start_soon(runtime.leases.heartbeat, runtime.directory.ids,
                                            runtime._lease_lost, runtime._take_over, name="lease heartbeat")
                    try:
                        yield runtime
                    except BaseException as exc:
                        body_error = exc
                        raise
                    finally:
                        executions.cancel()
                # flush, then let another process take over at once; bounded (store down)
                await shutdown.hand_over(address, persistence, runtime._release_leases(),
                                         settings.shutdown_timeout_ms / 1000)
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
async def _client(http: httpx.AsyncClient | None) -> AsyncIterator[httpx.AsyncClient]:
    if http is not None:
        yield http
        return
    async with httpx.AsyncClient(timeout=30.0, follow_redirects=False) as client:
        yield client
