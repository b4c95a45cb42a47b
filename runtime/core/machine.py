"""``apply``: the rules of one execution, as a pure function of (state, message, now).

A call builds one transition (``runtime.core.transition``): the messages are applied in
order (``runtime.core.control``), then every step that became ready is started (or skipped,
parked, decided), the execution's status follows from its steps, and the timer is armed for
the next deadline (``runtime.core.schedule``). The transition ends as a list of effects
(``runtime.core.effects``) with at most one ``Commit`` holding every record it made
(``runtime.core.draft``): step states, the header when it changed, logs, audit entries,
evidence, consumed events. Every state change bumps ``Execution.version`` once per
transition. ``created`` and ``crashed`` are the records of an execution's first and last
resort.

The rules, in words:
- A step starts when each dependency is finished (succeeded, skipped, or failed/rejected
  with ``continueOnError``) and, for task kinds, a ``maxConcurrentSteps`` slot is free. A
  step whose dependencies were all skipped, a branch target its conditional did not take,
  and a step whose ``when`` is false are skipped.
- A step that fails without ``continueOnError`` fails the execution: steps in flight are
  cancelled, steps never started stay pending.
- Pause stops new starts (``pausing`` until the tasks in flight end); parked waits go on.
  Paused time does not count against the execution's timeout.
- Cancel and the execution's timeout cancel everything in flight at once.
- Control that does not fit the state is refused (``Conflict``) and changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

import attrs

from runtime.core import control, schedule
from runtime.core import effects as fx
from runtime.core.draft import SYSTEM
from runtime.core.messages import Message
from runtime.core.state import ExecutionState
from runtime.core.transition import Transition
from runtime.model import (
    AuditEntry,
    Execution,
    ExecutionStatus,
    Lineage,
    LogEntry,
    Runbook,
    StepError,
    StepState,
    StepStatus,
)
from runtime.model.records import Change

ES = ExecutionStatus


def apply(state: ExecutionState, message: Message, now: datetime) -> tuple[ExecutionState, list[fx.Effect]]:
    """Apply one message; see ``apply_all``."""
    return apply_all(state, (message,), now)


def apply_all(state: ExecutionState, messages: Iterable[Message],
              now: datetime) -> tuple[ExecutionState, list[fx.Effect]]:
    """Apply ``messages`` in order as one transition; the next state and its effects.

    The state is taken over: the one returned is the one to use next (it may be the same
    object). A ``RunbookError`` raised for a message that carries a reply refuses that
    message only (``Refuse``); anything else raised is a bug and leaves the state unusable
    (the shell restarts the execution from committed state).
    """
    turn = Transition(state, now)
    for message in messages:
        control.handle(turn, message)
    if turn.hold:
        turn.emit(fx.Continue())
    else:
        schedule.schedule(turn)
    if turn.outputs_changed:
        schedule.scope_changed(turn)
    schedule.arm_timer(turn)
    return state, turn.effects()


def created(runbook: Runbook, *, execution_id: str, input: Any, context: dict[str, Any], input_hash: str,
            idempotency_key: str | None, dedup: bool, replay_of: str | None, now: datetime,
            actor: str | None, reason: str | None, parent: Lineage | None = None,
            fork: Fork | None = None) -> Change:
    """The records of a new execution (``pending``; its ``Begin`` starts it once committed).
    ``parent``: where a child started by a run-runbook step sits; ``fork``: the execution and
    step it is forked from, and the steps it begins with already ended."""
    steps = {s.id: StepState(StepStatus.PENDING, s.type) for s in runbook.steps}
    if fork is not None:
        steps |= {step_id: state for step_id, state in fork.ended.items() if step_id in steps}
    execution = Execution(
        id=execution_id, runbook_id=runbook.id, runbook_version=runbook.version,
        tenant_id=context["tenantId"], status=ES.PENDING, created_at=now, steps=steps,
        input=input, context=context, input_hash=input_hash, idempotency_key=idempotency_key,
        deduplicated=dedup, replay_of=replay_of, version=1,
        forked_from={"executionId": fork.execution_id, "stepId": fork.step_id} if fork is not None else None,
    )
    if parent is not None:
        execution = attrs.evolve(execution, parent_execution_id=parent.parent_id, parent_step_id=parent.step_id,
                                 depth=parent.depth, root_execution_id=parent.root_id)
    ids: dict[str, Any] = {"runbookId": runbook.id, "runbookVersion": runbook.version}
    if parent is not None:
        ids |= {"parentExecutionId": parent.parent_id, "parentStepId": parent.step_id}
    audit = AuditEntry(execution_id, now, actor or str(context.get("userId") or SYSTEM), "execution.started",
                       None, context.get("legalBasis"), reason or context.get("reason"),
                       {**ids, "replayOf": replay_of, **({"forkedFrom": execution.forked_from} if fork else {})},
                       tenant_id=execution.tenant_id)
    log = LogEntry(execution_id, now, "info", "execution created", None, ids)
    return Change(new_execution=execution, dedup=dedup, audit=(audit,), logs=(log,))


@attrs.frozen
class Fork:
    """Where a fork comes from, and the steps it starts with already ended (``forked``)."""

    execution_id: str
    step_id: str
    ended: dict[str, StepState]


def forked(origin: Execution, runbook: Runbook, from_step: str) -> Fork:
    """The fork of ``origin`` from ``from_step`` on ``runbook``: every step before it (in
    document order) that succeeded or was skipped keeps that outcome and output; the rest run."""
    ended: dict[str, StepState] = {}
    for step in runbook.steps:
        if step.id == from_step:
            break
        old = origin.steps.get(step.id)
        if old is None or old.status not in (StepStatus.SUCCEEDED, StepStatus.SKIPPED):
            continue
        ended[step.id] = StepState(old.status, step.type, output=old.output, completed_at=old.completed_at,
                                   why={"forked": {"executionId": origin.id, "status": old.status.value}})
    return Fork(origin.id, from_step, ended)


def crashed(execution: Execution, message: str, now: datetime) -> Change:
    """The records that fail an execution whose actor kept crashing (its steps stay as they are)."""
    error = StepError("crashed", f"execution actor crashed repeatedly: {message}")
    failed = attrs.evolve(execution, status=ES.FAILED, error=error, completed_at=now,
                          version=execution.version + 1)
    audit = AuditEntry(execution.id, now, SYSTEM, "execution.failed", data={"error": error.message},
                       tenant_id=execution.tenant_id)
    return Change(execution=failed, audit=(audit,))
