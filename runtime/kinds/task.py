"""The task kind: a step that runs an executor (call-service, the loop, every custom type).

It takes a slot of ``maxConcurrentSteps`` while it runs. ``begin`` starts the step's next
attempt and spawns its run once that is committed; the run reports retries, progress and
exactly one outcome, each tagged with the run's attempt id: a report of a run that is no
longer current (cancelled, or from before a restart) is dropped. After a restart the step
runs again from its next attempt, with the same idempotency key.
"""

from __future__ import annotations

from runtime.core import effects as fx
from runtime.core.kinds import StepOps
from runtime.core.messages import (
    AttemptRetrying,
    AttemptStarted,
    StepFinished,
    StepMessage,
    StepProgressed,
)
from runtime.core.why import retried
from runtime.kinds.base import KindDefaults
from runtime.kinds.spec import KindSpec
from runtime.model import Step, StepState, StepStatus


class TaskKind(KindDefaults):
    uses_slot = True

    def begin(self, ops: StepOps, step: Step) -> None:
        ops.mark_started(step, StepStatus.RUNNING)
        ops.tasks.spawn(step)

    def resume(self, ops: StepOps, step: Step, state: StepState) -> None:
        ops.log("warning", "step restarted after recovery", step.id)
        self.begin(ops, step)

    def message(self, ops: StepOps, step: Step, message: StepMessage) -> None:
        if not isinstance(message, StepFinished | AttemptRetrying | AttemptStarted | StepProgressed):
            super().message(ops, step, message)
            return
        if ops.tasks.current(step.id) != message.attempt_id:
            ops.emit(fx.Note(f"execution {ops.execution.id}: dropped a report of attempt {message.attempt_id} "
                             f"of step '{step.id}' (not its current attempt)"))
            return
        if isinstance(message, StepFinished):
            _finished(ops, step.id, message)
        elif isinstance(message, AttemptRetrying):
            _retrying(ops, step.id, message)
        elif isinstance(message, AttemptStarted):
            ops.set_step(step.id, status=StepStatus.RUNNING, attempts=message.attempt)
        else:
            ops.set_step(step.id, progress=message.progress)

    def cancel(self, ops: StepOps, step: Step) -> None:
        ops.tasks.cancel(step.id)


def _finished(ops: StepOps, step_id: str, message: StepFinished) -> None:
    ops.tasks.over(step_id)
    ops.add_records(message.logs, message.evidence)
    if message.error is None:
        ops.succeed(step_id, message.output)
        return
    if message.output is not None:  # what a failing step still reports (a response's body, say)
        ops.set_step(step_id, output=message.output)
    ops.fail(step_id, message.error)


def _retrying(ops: StepOps, step_id: str, message: AttemptRetrying) -> None:
    ops.add_records(message.logs, message.evidence)
    error = message.error
    ops.set_step(step_id, status=StepStatus.RETRYING, error=error,
                 why={**(ops.step_state(step_id).why or {}),
                      **retried(ops.step_state(step_id).why, message.attempt, error.code, error.message)})
    ops.log("warning", f"step retrying in {message.delay_s:.3f} s: {message.error.message}",
            step_id, attempt=message.attempt, code=message.error.code)
    ops.audit("step.retrying", step_id=step_id, attempt=message.attempt)


TASK = TaskKind()
SPEC = KindSpec(TASK)  # a custom type: its config is the program's own business
