"""``Transition``: one transition in progress, the ``StepOps`` the kinds are handed.

It puts together what one call of ``apply_all`` builds: the ``Draft`` (the execution being
changed and the records written), the ``Outbox`` (the effects), and the two facets over the
state the actor keeps beside the execution, ``tasks`` (``TaskRuns``) and ``waits``
(``Waits``). Itself it owns a step's fate (started, succeeded, failed, skipped, cancelled)
and the end of the execution, since a step that fails without ``continueOnError`` ends it.
The execution-level messages are ``runtime.core.control``; what starts next,
``runtime.core.schedule``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import attrs

from runtime.core import effects as fx
from runtime.core.draft import SYSTEM, Draft, error_json
from runtime.core.state import ExecutionState
from runtime.core.tasks import TaskRuns
from runtime.core.waits import Waits
from runtime.model import (
    Evidence,
    Execution,
    ExecutionStatus,
    LogEntry,
    Step,
    StepError,
    StepState,
    StepStatus,
)

SS = StepStatus
ACTIVE = (ExecutionStatus.RUNNING, ExecutionStatus.AWAITING_APPROVAL)  # steps may start
FAILED = (SS.FAILED, SS.REJECTED)


class Transition:
    def __init__(self, state: ExecutionState, now: datetime) -> None:
        self.state = state
        self.plan = state.plan
        self.now = now
        self.draft = Draft(state.execution, now)
        self.outbox = fx.Outbox()
        self.tasks = TaskRuns(state, self.draft, self.outbox)
        self.waits = Waits(state, self.draft, self.outbox)
        self.hold = False  # commit and answer this transition before scheduling (a retry)

    @property
    def execution(self) -> Execution:
        return self.draft.ex

    def step_state(self, step_id: str) -> StepState:
        return self.draft.ex.steps[step_id]

    def scope(self, step_id: str | None = None) -> dict[str, Any]:
        return self.draft.scope(step_id)

    # ------------------------------------------------------------------ records and effects
    def log(self, level: str, text: str, step_id: str | None = None, /, **data: Any) -> None:
        self.draft.log(level, text, step_id, **data)

    def audit(self, action: str, actor: str = SYSTEM, step_id: str | None = None,
              reason: str | None = None, **data: Any) -> None:
        self.draft.audit(action, actor, step_id, reason, **data)

    def add_records(self, logs: Sequence[LogEntry] = (), evidence: Sequence[Evidence] = ()) -> None:
        self.draft.add_records(logs, evidence)

    def consume_event(self, event_id: str) -> None:
        self.draft.consume_event(event_id)

    def emit(self, effect: fx.Effect) -> None:
        self.outbox.emit(effect)

    # ------------------------------------------------------------------ a step's fate
    def set_step(self, step_id: str, **changes: Any) -> StepState:
        return self.draft.set_step(step_id, **changes)

    def mark_started(self, step: Step, status: StepStatus, **extra: Any) -> None:
        state = self.draft.ex.steps[step.id]
        attempt = state.attempts + 1
        started = state.started_at if state.status.in_progress and state.started_at else self.now
        self.set_step(step.id, status=status, attempts=attempt, started_at=started, completed_at=None,
                      error=None, **extra)
        self.log("info", "step started", step.id, attempt=attempt, type=step.type)
        self.audit("step.started", step_id=step.id)

    def succeed(self, step_id: str, output: Any) -> None:
        self.set_step(step_id, status=SS.SUCCEEDED, output=output, error=None, completed_at=self.now)
        self.log("info", "step succeeded", step_id)
        self.audit("step.succeeded", step_id=step_id)

    def fail(self, step_id: str, error: StepError, status: StepStatus = SS.FAILED) -> None:
        self.set_step(step_id, status=status, error=error, completed_at=self.now)
        self.log("error", f"step {status.value}: {error.message}", step_id, code=error.code)
        self.audit(f"step.{status.value}", step_id=step_id, error=error_json(error))
        if not self.plan.by_id[step_id].continue_on_error and not self.execution.status.finished:
            self.end(ExecutionStatus.FAILED, attrs.evolve(error, step_id=step_id))

    def skip(self, step_id: str, why: str) -> None:
        self.set_step(step_id, status=SS.SKIPPED, started_at=None, completed_at=self.now)
        self.log("info", f"step skipped: {why}", step_id)
        self.audit("step.skipped", step_id=step_id)

    # ------------------------------------------------------------------ the end
    def end(self, status: ExecutionStatus, error: StepError | None, actor: str = SYSTEM,
            reason: str | None = None) -> None:
        """The execution ends in ``status``: every step in flight is cancelled."""
        why = "execution " + status.value
        for step_id in [*self.state.attempts, *self.state.parked]:
            self._cancel_step(step_id, why)
        self.draft.set(status=status, error=error, completed_at=self.now)
        self.log("error" if error else "info", f"execution {status.value}", data=error_json(error))
        self.audit(f"execution.{status.value}", actor, reason=reason, error=error_json(error))

    def _cancel_step(self, step_id: str, why: str) -> None:
        self.plan.kinds[step_id].cancel(self, self.plan.by_id[step_id])
        self.tasks.over(step_id)  # whatever the kind left behind
        self.waits.unpark(step_id)
        self.set_step(step_id, status=SS.CANCELLED, completed_at=self.now, error=StepError("cancelled", why, False))
        self.log("warning", "step cancelled", step_id, reason=why)
        self.audit("step.cancelled", step_id=step_id)

    def effects(self) -> list[fx.Effect]:
        """The transition is over: its state is the one to use next; these are its effects."""
        change = self.draft.change(self.plan.positions)
        self.state.execution = self.draft.ex
        return self.outbox.drain(fx.Commit(change) if change is not None else None)
