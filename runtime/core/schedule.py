"""After the messages of a transition: which steps start, the execution's status, the timer.

``schedule`` starts (or skips, decides, parks) every pending step that can start, again
while steps end within the pass; then the execution's status follows from its steps.
``scope_changed`` tells the parked steps that outputs changed; ``arm_timer`` asks for a
``Tick`` at the next deadline (the execution's own, unless it is
paused, or a parked step's).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from runtime.core import effects as fx
from runtime.core.transition import ACTIVE, FAILED, Transition
from runtime.core.why import condition, note
from runtime.language import templates
from runtime.language.conditions import PatternError, Trace, evaluate
from runtime.model import ExecutionStatus, Step, StepError, StepStatus

ES = ExecutionStatus
SS = StepStatus
_DONE = (SS.SUCCEEDED, SS.SKIPPED)
_FINISHED = tuple(status for status in SS if status.finished)  # (a tuple: ``in`` without hashing)


def schedule(t: Transition) -> None:
    """Start every pending step that can; again while steps end within the pass, since that
    can make others ready. A step whose dependency was last seen not done costs one look
    until that dependency is done."""
    s = t.state
    progressed = True
    while progressed and not t.ex.status.finished:
        progressed = False
        steps = t.ex.steps
        s.pending = [p for p in s.pending if steps[p.id].status is SS.PENDING]
        for step in s.pending:
            if t.ex.steps[step.id].status is not SS.PENDING or _blocked(t, step):
                continue  # (decided meanwhile in this pass: a branch not taken)
            if _try_start(t, step) and t.ex.steps[step.id].status.finished:
                progressed = True
            if t.ex.status.finished:
                return
    _update_status(t)


def _blocked(t: Transition, step: Step) -> bool:
    """Whether a dependency of the step is not done yet. The one found is remembered: while it
    has not finished, the step costs one look per pass (this runs for every pending step)."""
    seen = t.state.blocked_on.get(step.id)
    if seen is not None and t.ex.steps[seen].status not in _FINISHED:
        return True
    for dep in step.depends_on or ():
        if not _done(t, dep):
            t.state.blocked_on[step.id] = dep
            return True
    return False


def _done(t: Transition, step_id: str) -> bool:
    status = t.ex.steps[step_id].status
    return status in _DONE or (status in FAILED and t.plan.by_id[step_id].continue_on_error)


def _try_start(t: Transition, step: Step) -> bool:
    """Start, skip or decide the step if it may; whether it did."""
    steps = t.ex.steps
    deps = step.depends_on or ()
    undecided = [o for o in t.plan.branch_owners.get(step.id, ()) if steps[o].status is not SS.SUCCEEDED]
    if undecided:  # the step that decides it was skipped (or failed): it is not taken
        t.skip(step.id, f"branch of '{undecided[0]}' not taken")
        return True
    if deps and all(steps[d].status is SS.SKIPPED for d in deps):
        t.skip(step.id, "every dependency was skipped")
        return True
    if t.ex.status not in ACTIVE:
        return False
    kind = t.plan.kinds[step.id]
    if step.when is None:
        if kind.uses_slot and len(t.state.attempts) >= t.plan.max_running:
            return False
        kind.begin(t, step)
        return True
    trace: Trace = []
    try:
        holds = evaluate(step.when, t.scope(step.id), trace)
    except PatternError as exc:
        t.fail(step.id, StepError(exc.code, f"'when': {exc}", False))
        return True
    if not holds:
        t.skip(step.id, "'when' condition is false", when=condition(trace, False))
        return True
    if kind.uses_slot and len(t.state.attempts) >= t.plan.max_running:
        return False
    note(t, step.id, when=condition(trace, True))
    kind.begin(t, step)
    return True


def _update_status(t: Transition) -> None:
    """Paused once nothing runs any more; otherwise the status its steps make."""
    status = t.ex.status
    if status is ES.PAUSING and not t.state.attempts:
        t.set_execution(status=ES.PAUSED)
        t.log("info", "execution paused")
        t.audit("execution.paused")
    elif status in ACTIVE:
        _follow_steps(t)


def _follow_steps(t: Transition) -> None:
    """Completed once every step finished; awaiting approval while every step in progress
    is an approval waiting for decisions; running otherwise."""
    finished, in_progress, approvals_only = True, False, True
    for state in t.ex.steps.values():
        step_status = state.status
        if step_status.finished:
            continue
        finished = False
        if step_status.in_progress:
            in_progress = True
            approvals_only = approvals_only and step_status is SS.AWAITING_APPROVAL
    if finished:
        _complete(t)
        return
    status = ES.AWAITING_APPROVAL if in_progress and approvals_only else ES.RUNNING
    if status is not t.ex.status:
        t.set_execution(status=status)
        t.audit(f"execution.{status.value}")


def _complete(t: Transition) -> None:
    try:
        output = _output(t)
    except templates.TemplateError as exc:
        t.end(ES.FAILED, StepError("template", f"execution output: {exc}"))
        return
    t.set_execution(output=output)
    t.end(ES.COMPLETED, None)


def _output(t: Transition) -> Any:
    """The runbook's ``output`` rendered, else the output of the last step that succeeded."""
    if t.plan.runbook.output is not None:
        return templates.render(t.plan.runbook.output, t.scope())
    for step in reversed(t.plan.steps):
        state = t.ex.steps[step.id]
        if state.status is SS.SUCCEEDED:
            return state.output
    return None


def scope_changed(t: Transition) -> None:
    """Outputs in scope changed in this transition: each parked step is told (its kind may
    depend on them while it waits)."""
    for step_id in list(t.state.parked):
        if step_id in t.state.parked:
            t.plan.kinds[step_id].scope_changed(t, t.plan.by_id[step_id])


def arm_timer(t: Transition) -> None:
    s, ex = t.state, t.ex
    wake: datetime | None = None
    if not ex.status.finished:
        if ex.deadline_at is not None and ex.paused_at is None:
            wake = ex.deadline_at
        for due in s.parked.values():
            if due is not None and (wake is None or due < wake):
                wake = due
    if not s.armed or wake != s.wake_at:
        s.wake_at, s.armed = wake, True
        t.emit(fx.ArmTimer(wake))
