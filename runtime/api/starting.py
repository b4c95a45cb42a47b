"""``Starter``: the start of an execution, the one path every start takes.

The API's starts and replays, a run-runbook step's child and a trigger's run all come here:
the arguments are checked, the runbook's input rules applied (``inputSchema``,
``requireLegalBasis``), an idempotency key already used answers the execution it started
(refused if the input differs), and the new execution is committed (with several
processes: owned by this one from its first commit) before its actor starts here. A start
that duplicates an unfinished one with the same input answers that one, unless ``force``.

A runbook with a concurrency key starts its executions ``queued`` in the store's queue of
that key (``runtime/store/slots.py``); one given a slot in the commit of its start begins at
once, the others when a slot frees (``Admit``).

A start of a tenant with a quota is admitted by the store in the transaction that writes it
too (``QuotaCaps``): fewer than ``maxActive`` of the tenant's executions unfinished, and a
token in its start-rate bucket; else ``QuotaExceeded`` (children are bounded by the fan-out
caps instead).

A child's start is admitted by the store in the transaction that writes it (``FanoutCaps``),
so several processes sharing the store count the same executions and cannot both take the
last place: its root and its parent must still run (once a cancel of either is committed,
nothing new starts under it), the root must have fewer than ``max_descendants`` executions
under it, and the tenant fewer than ``max_active_descendants`` unfinished children.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import attrs
import trio

from runtime.api import arguments
from runtime.api.access import CommitChange, Read
from runtime.core import created
from runtime.core.machine import Fork
from runtime.documents.concurrency import slot_of
from runtime.language.input_schema import input_problems
from runtime.model import Execution, ExecutionStatus, Lineage, Runbook
from runtime.model.errors import (
    Conflict,
    FanoutLimit,
    LoopDetected,
    Problem,
    QuotaExceeded,
    RunbookError,
    ValidationError,
)
from runtime.model.records import (
    QUOTA_ACTIVE,
    QUOTA_RATE,
    ROOT_FULL,
    TENANT_FULL,
    Change,
    FanoutCaps,
    QuotaCaps,
)
from runtime.model.types import StartResult
from runtime.model.wire import sha256_hex
from runtime.shell.catalog import Catalog
from runtime.shell.clock import Clock
from runtime.shell.directory import Directory
from runtime.shell.quotas import Quota, quota_for
from runtime.shell.watch import WatchHub
from runtime.store.base import Store

Fetch = Callable[[str], Awaitable[Execution]]


@attrs.frozen
class Starter:
    store: Store
    read: Read
    commit: CommitChange
    clock: Clock
    catalog: Catalog
    directory: Directory
    hub: WatchHub
    fetch: Fetch  # the latest state of an execution (the one a duplicate start answers)
    max_hops: int = 8  # a start past this many engine-to-engine hops is a loop (LoopDetected)
    owner: str | None = None  # this process's incarnation, when several share the store
    acting: Callable[[], bool] | None = None  # whether it may act as an owner now (its lease holds)
    max_descendants: int = 1000  # executions started under one root (FanoutLimit)
    max_active_descendants: int = 10_000  # unfinished child executions of one tenant (FanoutLimit)
    quotas: Mapping[str, Quota] = attrs.field(factory=dict)  # per tenant: what its starts may be (QuotaExceeded)

    async def start(self, runbook_id: str, input: Any = None, context: Mapping[str, Any] | None = None, *,
                    version: int | None = None, idempotency_key: str | None = None, force: bool = False,
                    replay_of: str | None = None, actor: str | None = None, reason: str | None = None,
                    parent: Lineage | None = None, execution_id: str | None = None,
                    hop: int = 0, fork: Fork | None = None) -> StartResult:
        """Start an execution, or answer the one an identical start already made.
        ``parent``: where a run-runbook step's child sits (``FanoutLimit``, or ``Conflict``
        once its root or parent has ended, when the store does not admit it). ``hop``: how
        many runbooks calling the engine led to this start (``X-Runbooks-Hop``), kept as
        ``context.hop`` and refused past ``max_hops`` (``LoopDetected``). ``fork``: the execution
        forked from, and the steps the new one begins with already ended."""
        arguments.check_start(runbook_id, input, context, version, idempotency_key, force, actor, reason)
        ctx = dict(context or {})
        tenant = ctx["tenantId"] = str(ctx.get("tenantId") or "default")
        hop = hop or context_hop(ctx)
        check_hop(hop, self.max_hops)
        if hop:
            ctx["hop"] = hop
        runbook = await self.catalog.get(runbook_id, version, tenant_id=tenant)
        _check_input(runbook, input, ctx)
        slot = slot_of(runbook, input, ctx)
        input_hash = sha256_hex(input)
        if idempotency_key is not None:
            existing = await self.read(self.store.find_by_idempotency_key, tenant, idempotency_key)
            if existing is not None:
                return StartResult(_same_input(existing, input_hash), False)
        change = created(runbook, execution_id=execution_id or uuid.uuid4().hex, input=input, context=ctx,
                         input_hash=input_hash, idempotency_key=idempotency_key, dedup=not force,
                         replay_of=replay_of, now=self.clock.now(), actor=actor, reason=reason, parent=parent,
                         fork=fork)
        if parent is not None:
            change = attrs.evolve(change, fanout=FanoutCaps(self.max_descendants, self.max_active_descendants))
        quota = quota_for(self.quotas, tenant) if parent is None else None
        if quota is not None:
            change = attrs.evolve(change, quota=QuotaCaps(quota.max_active, quota.starts_per_second, quota.bucket,
                                                          self.clock.now().timestamp()))
        if slot is not None:  # queued until the store gives it a slot of its key (maybe in this very commit)
            assert change.new_execution is not None
            queued = attrs.evolve(change.new_execution, status=ExecutionStatus.QUEUED, concurrency_key=slot.key)
            change = attrs.evolve(change, new_execution=queued, slot=slot)
        return await self._commit(change, input_hash if idempotency_key else None)

    async def _commit(self, change: Change, keyed_hash: str | None) -> StartResult:
        """Commit the new execution and start its actor; or answer the one it duplicates
        (``keyed_hash``: a start with an idempotency key, whose input must be the same)."""
        execution = change.new_execution
        assert execution is not None
        # a process whose lease does not hold now runs nothing: the execution is committed
        # without an owner, for the next takeover round of a process whose lease holds
        held = self.acting is None or self.acting()
        if self.owner is not None and held:  # owned from its first commit: this process runs it
            execution = attrs.evolve(execution, epoch=1)
            change = attrs.evolve(change, owner=self.owner, new_execution=execution)
        with trio.CancelScope(shield=True):  # once sent, the start commits whatever its caller does (a client
            result = await self.commit(change)  # that gave up): cancelled here, no actor would ever run it
        if result.refused is not None:
            raise self._refusal(result.refused, execution, result.retry_after_s)
        if result.existing_id is not None:
            existing = await self.fetch(result.existing_id)
            return StartResult(_same_input(existing, keyed_hash) if keyed_hash else existing, False)
        if (execution.id, "") in result.admitted:  # a slot was free: it starts as any other
            execution = attrs.evolve(execution, status=ExecutionStatus.PENDING)
        self.hub.published(execution)
        if held:
            self.directory.start(execution.id, execution)
        self.hub.notify("execution.started", execution)
        return StartResult(execution, True)


    def _refusal(self, why: str, child: Execution, retry_after_s: float | None) -> RunbookError:
        """Why a start was not admitted: its tenant's quota, or, for a child, the error its
        step fails with."""
        if why in (QUOTA_ACTIVE, QUOTA_RATE):
            return self._over_quota(why, child.tenant_id, retry_after_s)
        not_started = f"child execution {child.id} was not started"
        if why == ROOT_FULL:
            return FanoutLimit(f"execution {child.root_execution_id} already has {self.max_descendants} executions "
                               f"under it (MAX_DESCENDANTS); {not_started}", limit=self.max_descendants,
                               setting="MAX_DESCENDANTS")
        if why == TENANT_FULL:
            setting = "MAX_ACTIVE_DESCENDANTS_PER_TENANT"
            return FanoutLimit(f"tenant '{child.tenant_id}' already has {self.max_active_descendants} unfinished "
                               f"child executions ({setting}); {not_started}", limit=self.max_active_descendants,
                               setting=setting)
        return Conflict(f"{not_started}: its root execution {child.root_execution_id} or its parent "
                        f"{child.parent_execution_id} has ended")

    def _over_quota(self, why: str, tenant: str, retry_after_s: float | None) -> QuotaExceeded:
        quota = quota_for(self.quotas, tenant)
        assert quota is not None
        if why == QUOTA_ACTIVE:
            error = QuotaExceeded(f"tenant '{tenant}' already has {quota.max_active} unfinished executions "
                                  "(its quota's maxActive); nothing was started", tenant_id=tenant,
                                  reason="maxActive", limit=quota.max_active or 0, retry_after_s=1.0)
        else:
            error = QuotaExceeded(f"tenant '{tenant}' starts more than {quota.starts_per_second:g} executions a "
                                  "second (its quota's startsPerSecond); nothing was started", tenant_id=tenant,
                                  reason="startsPerSecond", limit=quota.starts_per_second or 0,
                                  retry_after_s=retry_after_s)
        self.hub.notify("quota.exceeded", (tenant, error.reason))
        return error


def _same_input(existing: Execution, input_hash: str) -> Execution:
    if existing.input_hash != input_hash:
        raise ValidationError([Problem("Idempotency-Key", "this key was already used with a different input")],
                              title="idempotency key reused")
    return existing


def _check_input(runbook: Runbook, input: Any, context: Mapping[str, Any]) -> None:
    problems: list[Problem] = []
    if runbook.require_legal_basis and not context.get("legalBasis"):
        problems.append(Problem("context.legalBasis", "required by this runbook (requireLegalBasis)"))
    if runbook.input_schema is not None:
        problems += input_problems(runbook.input_schema, input)
    if problems:
        raise ValidationError(problems, title="input refused")


def context_hop(context: Mapping[str, Any]) -> int:
    """The hop an execution's context records (0: none, or not a count)."""
    hop = context.get("hop")
    return hop if isinstance(hop, int) and not isinstance(hop, bool) and hop > 0 else 0


def check_hop(hop: int, max_hops: int) -> None:
    if hop > max_hops:
        raise LoopDetected(hop, max_hops)
