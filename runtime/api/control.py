"""The embedded API's changes to executions: starts, control, decisions, retries and events.

Each method checks its arguments (``arguments``) and hands the request over: a start to the
``Starter``, everything else as the core message the execution applies (``Pause``,
``DecideApproval``...) to ``Routing``, which applies it where the execution runs. The answer
is the execution as committed once the request was applied.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from functools import partial
from typing import Any

from runtime.api import arguments
from runtime.api.parts import Parts
from runtime.api.receipts import Item
from runtime.api.starting import check_hop
from runtime.core.draft import SYSTEM
from runtime.core.machine import forked
from runtime.core.messages import (
    Cancel,
    CompleteStep,
    DecideApproval,
    DelegateApproval,
    Pause,
    Resume,
    RetryStep,
    SkipStep,
)
from runtime.model import AuditEntry, Execution
from runtime.model.errors import NotFound, Problem, RunbookError, ValidationError, too_large
from runtime.model.jsonsafe import first_problem, json_size
from runtime.model.records import Change, Delivery
from runtime.model.types import StartResult
from runtime.shell.events import PublishResult

MISSING_INPUT: Any = object()  # ``fork`` without an input: the old execution's


class ExecutionControl(Parts):
    async def start(self, runbook_id: str, input: Any = None, context: Mapping[str, Any] | None = None, *,
                    version: int | None = None, idempotency_key: str | None = None,
                    force: bool = False) -> Execution:
        """Start an execution (or return the one an identical start already made)."""
        result = await self.starter.start(runbook_id, input, context, version=version,
                                          idempotency_key=idempotency_key, force=force)
        return result.execution

    async def start_execution(self, runbook_id: str, input: Any = None,
                              context: Mapping[str, Any] | None = None, *, version: int | None = None,
                              idempotency_key: str | None = None, force: bool = False,
                              replay_of: str | None = None, actor: str | None = None,
                              reason: str | None = None, hop: int = 0) -> StartResult:
        """``start``, also saying whether this call created the execution. ``hop``: how many
        runbooks calling the engine led to this start (``X-Runbooks-Hop``); kept as
        ``context.hop``, refused past ``Settings.max_hops`` (``LoopDetected``)."""
        return await self.starter.start(runbook_id, input, context, version=version,
                                        idempotency_key=idempotency_key, force=force, replay_of=replay_of,
                                        actor=actor, reason=reason, hop=hop)

    async def replay(self, execution_id: str, *, actor: str | None = None, reason: str | None = None,
                     tenant_id: str | None = None) -> Execution:
        """A new execution of the same runbook version with the same input and context, except
        ``context.userId``: the replayer (``actor``; ``system`` when none is named), not the user
        who started the original (``replayOf`` names it). ``actor`` and ``reason`` are recorded
        in the new execution's audit log.
        """
        arguments.check_control(execution_id, reason, actor, tenant_id)
        old = await self.routing.fetch(execution_id, tenant_id)
        context = {**old.context, "userId": actor or SYSTEM}
        result = await self.starter.start(old.runbook_id, old.input, context, version=old.runbook_version,
                                          force=True, replay_of=old.id, actor=actor, reason=reason)
        return result.execution

    async def fork(self, execution_id: str, from_step: str, *, input: Any = MISSING_INPUT,
                   version: int | None = None, actor: str | None = None, reason: str | None = None,
                   tenant_id: str | None = None) -> Execution:
        """A new execution of the same runbook version (or ``version``) that begins with the
        outcomes and outputs of the steps before ``from_step`` (those that succeeded or were
        skipped) and runs the rest; ``input``: the old one unless given. The new execution's
        ``forked_from`` names the old one and the step; the old one's audit log gets an
        ``execution.forked`` entry naming the new one."""
        arguments.check_control(execution_id, reason, actor, tenant_id, step_id=from_step)
        old = await self.routing.fetch(execution_id, tenant_id)
        runbook = await self.catalog.get(old.runbook_id, version or old.runbook_version, tenant_id=old.tenant_id)
        if from_step not in {step.id for step in runbook.steps}:
            raise NotFound(f"runbook {runbook.id} v{runbook.version} has no step '{from_step}'")
        context = {**old.context, "userId": actor or SYSTEM}
        context.pop("trigger", None)
        new_input = old.input if input is MISSING_INPUT else input
        result = await self.starter.start(old.runbook_id, new_input, context, version=runbook.version, force=True,
                                          actor=actor, reason=reason, fork=forked(old, runbook, from_step))
        new = result.execution
        await self.commit(Change(audit=(AuditEntry(
            old.id, self.clock.now(), actor or SYSTEM, "execution.forked", from_step, old.context.get("legalBasis"),
            reason, {"forkId": new.id, "fromStep": from_step, "runbookVersion": runbook.version},
            tenant_id=old.tenant_id),)))
        return new

    async def pause(self, execution_id: str, reason: str | None = None, *, actor: str = "system",
                    tenant_id: str | None = None) -> Execution:
        arguments.check_control(execution_id, reason, actor, tenant_id)
        return await self.routing.apply(execution_id, tenant_id, Pause(actor, reason))

    async def resume(self, execution_id: str, reason: str | None = None, *, actor: str = "system",
                     tenant_id: str | None = None) -> Execution:
        arguments.check_control(execution_id, reason, actor, tenant_id)
        return await self.routing.apply(execution_id, tenant_id, Resume(actor, reason))

    async def cancel(self, execution_id: str, reason: str, *, actor: str = "system",
                     tenant_id: str | None = None) -> Execution:
        arguments.check_control(execution_id, reason, actor, tenant_id)
        if not reason:
            raise ValidationError([Problem("reason", "required: why the execution is cancelled")])
        return await self.routing.apply(execution_id, tenant_id, Cancel(actor, reason))

    async def submit_approval(self, execution_id: str, step_id: str, *, approver: str, decision: str,
                              comment: str | None = None, tenant_id: str | None = None,
                              roles: Iterable[str] = (), digest: str | None = None) -> Execution:
        """Record ``approve`` or ``reject`` from ``approver`` on an approval step; ``roles`` (the
        approver's) let an approver entry ``role:NAME`` admit them. ``digest``: that of the
        ``approval_request`` the approver was shown; one that is not the step's current digest
        is refused (``StaleDigest``, a ``Conflict``). Without it the decision is taken on what
        the step shows now (and recorded with that digest)."""
        arguments.check_approval(execution_id, step_id, approver, decision, comment, tenant_id, roles, digest)
        request = DecideApproval(step_id, approver, decision, comment, roles=frozenset(roles), digest=digest)
        return await self.routing.apply(execution_id, tenant_id, request)

    async def delegate_approval(self, execution_id: str, step_id: str, *, delegator: str, to: str, reason: str,
                                tenant_id: str | None = None, roles: Iterable[str] = ()) -> Execution:
        """Hand ``delegator``'s vote on an approval step (``allowDelegation: true``) to ``to``, a
        user or ``role:NAME``: the delegate may decide (their vote counts once), the delegator
        no longer. ``roles``: the delegator's, as for ``submit_approval``."""
        arguments.check_delegation(execution_id, step_id, delegator, to, reason, tenant_id, roles)
        request = DelegateApproval(step_id, delegator, to, reason, roles=frozenset(roles))
        return await self.routing.apply(execution_id, tenant_id, request)

    async def retry_step(self, execution_id: str, step_id: str, *, actor: str = "system",
                         reason: str | None = None, tenant_id: str | None = None) -> Execution:
        """Re-run a failed/rejected step of a failed execution, and what its failure stopped."""
        arguments.check_control(execution_id, reason, actor, tenant_id, step_id=step_id)
        execution = await self.routing.apply(execution_id, tenant_id, RetryStep(step_id, actor, reason))
        self.hub.notify("execution.retried", execution)
        return execution

    async def complete_step(self, execution_id: str, step_id: str, *, output: Any, justification: str,
                            evidence: Any = None, legal_basis: str | None = None, actor: str = "system",
                            tenant_id: str | None = None) -> Execution:
        """End a failed, waiting or awaiting-approval step as succeeded with ``output``: someone did
        its work by hand. The execution goes on as if the step had succeeded (a failed execution
        runs again). ``justification`` is required, ``legal_basis`` too when the runbook says
        ``requireLegalBasis``; audited ``step.completed_by_hand``, with an evidence item."""
        await self._check_by_hand(execution_id, step_id, justification, legal_basis, actor, tenant_id)
        problems = self._payload_problems(output, evidence)
        if problems:
            raise ValidationError(problems)
        request = CompleteStep(step_id, actor, output, justification, evidence, legal_basis)
        return await self.routing.apply(execution_id, tenant_id, request)

    async def skip_step(self, execution_id: str, step_id: str, *, justification: str,
                        legal_basis: str | None = None, actor: str = "system",
                        tenant_id: str | None = None) -> Execution:
        """End a failed, waiting or awaiting-approval step as skipped; its dependents follow the
        rule of a ``when`` skip. Audited ``step.skipped_by_hand``; see ``complete_step``."""
        await self._check_by_hand(execution_id, step_id, justification, legal_basis, actor, tenant_id)
        return await self.routing.apply(execution_id, tenant_id, SkipStep(step_id, actor, justification, legal_basis))

    async def _check_by_hand(self, execution_id: str, step_id: str, justification: Any, legal_basis: Any,
                             actor: str, tenant_id: str | None) -> None:
        arguments.check_control(execution_id, justification, actor, tenant_id, step_id=step_id)
        arguments.check_control(execution_id, legal_basis, actor, tenant_id)
        problems = []
        if not isinstance(justification, str) or not justification.strip():
            problems.append(Problem("justification", "required: why the step is taken over by hand"))
        execution = await self.routing.fetch(execution_id, tenant_id)
        runbook = await self.catalog.pinned(execution)
        if runbook.require_legal_basis and not legal_basis:
            problems.append(Problem("context.legalBasis", "required by this runbook (requireLegalBasis)"))
        if problems:
            raise ValidationError(problems)

    def _payload_problems(self, output: Any, evidence: Any) -> list[Problem]:
        limit = self.settings.max_output_bytes
        problems = []
        for name, data in (("output", output), ("evidence", evidence)):
            problem = first_problem(data, name)
            if problem is not None:
                problems.append(Problem(problem[0], problem[1]))
            elif (size := json_size(data)) > limit:
                problems.append(Problem(name, f"{size} bytes of JSON, more than {limit} (MAX_OUTPUT_BYTES)"))
        return problems

    async def publish_event(self, event_type: str, correlation_key: str, payload: Any = None, *,
                            tenant_id: str = "default", hop: int = 0,
                            delivery: Delivery | None = None) -> PublishResult:
        """Hand an event to every step waiting on it, or retain it for a later waiter. ``hop``:
        as for ``start_execution``; the executions event rules start carry it. ``delivery``:
        the source and id of the message the event comes from; a message published before
        (within ``delivery.keep_ms``) publishes nothing and answers ``duplicate=True``."""
        self._check_event(event_type, correlation_key, payload, tenant_id, hop, delivery)
        rules = partial(self.scheduler.on_event, hop=hop)
        if delivery is not None:
            return await self.once.publish(event_type, str(correlation_key), payload, tenant_id, delivery, rules)
        return await self.routing.publish(tenant_id, event_type, str(correlation_key), payload, rules=rules)

    async def publish_deliveries(self, items: Sequence[Item]) -> list[PublishResult | Exception]:
        """``publish_event`` of many source messages at once (a bus's fetched batch: one read
        finds the repeats), each ``(event type, correlation key, payload, tenant, delivery)``;
        each item's result, or the error it met (``ValidationError``...), in order."""
        checked: list[Item] = []
        problems: dict[int, Exception] = {}
        for index, (event_type, key, payload, tenant_id, delivery) in enumerate(items):
            try:
                self._check_event(event_type, key, payload, tenant_id, 0, delivery)
            except RunbookError as exc:
                problems[index] = exc
                continue
            checked.append((event_type, str(key), payload, tenant_id, delivery))
        published = iter(await self.once.publish_many(checked, partial(self.scheduler.on_event, hop=0))
                         if checked else [])
        return [problems[index] if index in problems else next(published) for index in range(len(items))]

    def _check_event(self, event_type: str, correlation_key: Any, payload: Any, tenant_id: str, hop: int,
                     delivery: Delivery | None) -> None:
        arguments.check_event(event_type, correlation_key, payload, tenant_id)
        check_hop(hop, self.settings.max_hops)
        if (size := json_size(payload)) > self.settings.max_event_bytes:
            raise too_large("payload", "event payload", size, self.settings.max_event_bytes, "MAX_EVENT_BYTES")
        if delivery is not None:
            arguments.check_ids(source_id=delivery.source_id, delivery_id=delivery.delivery_id)
