"""What each message does to the execution as a whole, and where a step's messages go.

``Begin`` starts the execution (or continues it from committed state, each step in progress
resumed by its kind), ``Tick`` fires the deadlines due, ``Pause``/``Resume``/``Cancel`` are
the operator's control and ``RetryStep`` re-runs a failed step. Every other message is
addressed to one step and handed to its kind. Control that does not fit the state raises
``Conflict`` (or ``NotFound``); ``handle`` turns that into a ``Refuse`` of the message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from runtime.core import by_hand
from runtime.core import effects as fx
from runtime.core.messages import (
    Begin,
    Cancel,
    CompleteStep,
    Continue,
    DeliverEvent,
    Message,
    Pause,
    Resume,
    RetryStep,
    SkipStep,
    Tick,
)
from runtime.core.plan import steps_to_retry
from runtime.core.transition import ACTIVE, FAILED, Transition
from runtime.model import AuditEntry, Execution, ExecutionStatus, StepError, StepState, StepStatus
from runtime.model.errors import Conflict, NotFound, RunbookError

ES = ExecutionStatus
SS = StepStatus


def handle(t: Transition, message: Message) -> None:
    """Apply one message; a ``RunbookError`` refuses a message that carries a reply."""
    reply = getattr(message, "reply", None)
    try:
        _HANDLERS.get(type(message), _to_step)(t, message)
    except RunbookError as exc:
        if reply is None:
            raise
        t.emit(fx.Refuse(reply, exc))


def _to_step(t: Transition, message: Any) -> None:
    step = t.plan.by_id.get(message.step_id)
    if step is None:
        if isinstance(message, DeliverEvent):
            t.emit(fx.Answer(message.reply, False))
            return
        raise NotFound(f"execution {t.ex.id} has no step '{message.step_id}'")
    t.plan.kinds[step.id].message(t, step, message)


def _begin(t: Transition, message: Begin) -> None:
    t.tasks.restart(message.incarnation)
    t.waits.clear()
    t.state.armed = False
    if t.ex.status is ES.PENDING:
        t.set_execution(status=ES.RUNNING, started_at=t.now, deadline_at=t.deadline())
        t.log("info", "execution started")
        t.audit("execution.running")
    if t.ex.status.finished:
        return
    for step in t.plan.steps:
        state = t.ex.steps[step.id]
        if state.status.in_progress:
            t.plan.kinds[step.id].resume(t, step, state)


def _tick(t: Transition, message: Tick) -> None:
    if t.ex.status.finished:
        return
    at = max(t.now, message.at)  # everything due at the armed time fires
    deadline = t.ex.deadline_at
    if deadline is not None and t.ex.paused_at is None and at >= deadline:
        timeout = t.plan.runbook.timeout_ms
        t.end(ES.TIMED_OUT, StepError("timeout", f"execution timed out after {timeout} ms", False))
        return
    for step_id in t.waits.due(at):
        if t.ex.status.finished:
            return
        t.plan.kinds[step_id].timeout(t, t.plan.by_id[step_id])


def _pause(t: Transition, message: Pause) -> None:
    if t.ex.status not in ACTIVE:
        raise Conflict(f"cannot pause an execution that is {t.ex.status.value}")
    t.set_execution(status=ES.PAUSING if t.state.attempts else ES.PAUSED, paused_at=t.now)
    t.log("info", f"execution {t.ex.status.value}", reason=message.reason)
    t.audit("execution.pause", message.actor, reason=message.reason)
    t.emit(fx.AnswerState(message.reply))


def _resume(t: Transition, message: Resume) -> None:
    ex = t.ex
    if ex.status not in (ES.PAUSED, ES.PAUSING):
        raise Conflict(f"cannot resume an execution that is {ex.status.value}")
    paused = t.now - (ex.paused_at or t.now)
    t.set_execution(status=ES.RUNNING, paused_at=None,
                deadline_at=ex.deadline_at + paused if ex.deadline_at else None,
                paused_duration_ms=ex.paused_duration_ms + int(paused.total_seconds() * 1000))
    t.log("info", "execution resumed", reason=message.reason)
    t.audit("execution.resume", message.actor, reason=message.reason)
    t.emit(fx.AnswerState(message.reply))


def _cancel(t: Transition, message: Cancel) -> None:
    if t.ex.status.finished:
        raise Conflict(f"cannot cancel an execution that is {t.ex.status.value}")
    t.end(ES.CANCELLED, StepError("cancelled", message.reason, False), message.actor, message.reason)
    t.emit(fx.AnswerState(message.reply))


def _retry(t: Transition, message: RetryStep) -> None:
    ex, step_id = t.ex, message.step_id
    _check_retry(ex, step_id)
    reset = sorted(steps_to_retry(t.plan, ex, step_id))
    for sid in reset:
        old = t.ex.steps[sid]
        t.replace_step(sid, StepState(SS.PENDING, old.type, attempts=old.attempts))
    t.set_execution(status=ES.RUNNING, error=None, completed_at=None, output=None, deadline_at=t.deadline())
    t.audits.append(AuditEntry(ex.id, t.now, message.actor, "step.retry", step_id,
                                     ex.context.get("legalBasis"), message.reason, {"reset": reset},
                                     tenant_id=ex.tenant_id))
    t.log("info", "step retry requested", step_id, reset=reset)
    t.state.pending = list(t.plan.steps)
    t.state.blocked_on.clear()
    t.hold = True
    t.emit(fx.AnswerState(message.reply))


def _check_retry(ex: Execution, step_id: str) -> None:
    if step_id not in ex.steps:
        raise NotFound(f"execution {ex.id} has no step '{step_id}'")
    if ex.status is not ES.FAILED:
        raise Conflict(f"only a failed execution can retry a step (this one is {ex.status.value})")
    status = ex.steps[step_id].status
    if status not in FAILED:
        raise Conflict(f"step '{step_id}' is {status.value}, not failed or rejected")


_HANDLERS: dict[type, Callable[[Transition, Any], None]] = {
    Begin: _begin,
    Continue: lambda t, message: None,
    Tick: _tick,
    Pause: _pause,
    Resume: _resume,
    Cancel: _cancel,
    RetryStep: _retry,
    CompleteStep: lambda t, message: by_hand.complete(t, message),
    SkipStep: lambda t, message: by_hand.skip(t, message),
}
