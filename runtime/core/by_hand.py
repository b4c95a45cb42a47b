"""A step ended by a person: ``CompleteStep`` (succeeded, with the output they give) and
``SkipStep`` (skipped), for a step that failed, waits for an event or awaits approval.

The execution goes on as if the step had ended that way: its dependents start, and a skipped
step's dependents follow the rule of a ``when`` skip (a step all of whose dependencies were
skipped is skipped too). A failed execution whose failed step is taken over runs again, like
a step retry: the steps the failure cancelled and what depends on them start over. A waiting
step stops waiting (its deadline and subscription go). The step's decision record keeps who
did it and why (``byHand``); the audit entry is ``step.completed_by_hand`` or
``step.skipped_by_hand`` with the request's legal basis, and a completion leaves an evidence
item with the output, the justification and what was attached.
"""

from __future__ import annotations

from typing import Any, Final

from runtime.core import effects as fx
from runtime.core.messages import CompleteStep, SkipStep
from runtime.core.plan import steps_to_retry
from runtime.core.transition import Transition
from runtime.core.why import text, value
from runtime.model import AuditEntry, Evidence, ExecutionStatus, StepState, StepStatus
from runtime.model.errors import Conflict, NotFound
from runtime.model.wire import sha256_hex

ES = ExecutionStatus
SS = StepStatus
TAKEN_OVER: Final = (SS.FAILED, SS.WAITING, SS.AWAITING_APPROVAL)


def complete(t: Transition, message: CompleteStep) -> None:
    _by_hand(t, message, "completed")


def skip(t: Transition, message: SkipStep) -> None:
    _by_hand(t, message, "skipped")


def _by_hand(t: Transition, message: CompleteStep | SkipStep, action: str) -> None:
    ex, step_id = t.ex, message.step_id
    if step_id not in ex.steps:
        raise NotFound(f"execution {ex.id} has no step '{step_id}'")
    state = ex.steps[step_id]
    if state.status not in TAKEN_OVER:
        raise Conflict(f"step '{step_id}' is {state.status.value}: only a failed, waiting or awaiting-approval "
                       f"step can be {action} by hand")
    reopened = ex.status is ES.FAILED
    if reopened:
        _reopen(t, step_id)
    elif ex.status.finished:
        raise Conflict(f"execution {ex.id} is {ex.status.value}")
    elif state.status.in_progress:
        step = t.plan.by_id[step_id]
        t.plan.kinds[step_id].cancel(t, step)
        t.tasks.over(step_id)
        t.waits.unpark(step_id)
    record: dict[str, Any] = {"action": action, "actor": message.actor, "justification": text(message.justification),
                              "from": state.status.value}
    if message.legal_basis:
        record["legalBasis"] = text(message.legal_basis)
    why = {**(state.why or {}), "byHand": record}
    data: dict[str, Any] = {"from": state.status.value}
    if isinstance(message, CompleteStep):
        if message.evidence is not None:
            record["evidence"] = value(message.evidence)
        t.set_step(step_id, status=SS.SUCCEEDED, output=message.output, error=None, completed_at=t.now, why=why)
        _evidence(t, message, state.status.value)
    else:
        t.set_step(step_id, status=SS.SKIPPED, error=None, completed_at=t.now, why=why)
    t.log("info", f"step {action} by hand by {message.actor}: {message.justification}", step_id)
    t.audits.append(AuditEntry(ex.id, t.now, message.actor, f"step.{action}_by_hand", step_id,
                               message.legal_basis or ex.context.get("legalBasis"), message.justification, data,
                               tenant_id=ex.tenant_id))
    t.hold = reopened  # as a step retry: answered running again, its steps start in the next transition
    t.emit(fx.AnswerState(message.reply))


def _reopen(t: Transition, step_id: str) -> None:
    """A failed execution runs again: the steps the failure cancelled, and what depends on them
    that did not succeed, are pending again (the step itself is ended by hand)."""
    cause = t.ex.error.step_id if t.ex.error is not None else None
    if t.ex.steps[step_id].status is not SS.FAILED or (cause is not None and cause != step_id):
        raise Conflict(f"execution {t.ex.id} failed at step '{cause}': only that step can be taken over")
    for sid in sorted(steps_to_retry(t.plan, t.ex, step_id) - {step_id}):
        old = t.ex.steps[sid]
        t.replace_step(sid, StepState(SS.PENDING, old.type, attempts=old.attempts))
    t.set_execution(status=ES.RUNNING, error=None, completed_at=None, output=None, deadline_at=t.deadline())
    t.state.pending = list(t.plan.steps)
    t.state.blocked_on.clear()


def _evidence(t: Transition, message: CompleteStep, was: str) -> None:
    data = {"action": "completed_by_hand", "actor": message.actor, "justification": message.justification,
            "was": was, "output": message.output, "evidence": message.evidence}
    evidence_id = sha256_hex(["by_hand", t.ex.id, message.step_id, message.actor, t.now.isoformat()])[:32]
    t.add_records(evidence=(Evidence(evidence_id, t.ex.id, message.step_id, "completed_by_hand",
                                     sha256_hex(data), data, t.now),))
