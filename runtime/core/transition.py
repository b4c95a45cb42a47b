"""``Transition``: one transition in progress, the ``StepOps`` the kinds are handed.

A transition is the ``Draft`` of the execution's next version (``runtime.core.draft``: the
changes and the records to commit) with the effects around it, kept in the order the shell
performs them (at once, then the ``Commit``, then what waits for it). It owns a step's fate
(started, succeeded, failed, skipped, cancelled) and the end of the execution, since a step
that fails without ``continueOnError`` ends it. Two views over the state the actor keeps
beside the execution are handed to the kinds with it: ``tasks`` (``TaskRuns``, the runs of
task steps) and ``waits`` (``Waits``, the parked steps). A view is made for each use, so that
nothing the transition holds points back at it.

The execution-level messages are ``runtime.core.control``; what starts next,
``runtime.core.schedule``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timedelta
from typing import Any

import attrs

from runtime.core import effects as fx
from runtime.core.draft import SYSTEM, Draft, error_json
from runtime.core.state import ExecutionState
from runtime.core.why import unusual
from runtime.model import (
    Execution,
    ExecutionStatus,
    Runbook,
    Step,
    StepError,
    StepState,
    StepStatus,
)

SS = StepStatus
ACTIVE = (ExecutionStatus.RUNNING, ExecutionStatus.AWAITING_APPROVAL)  # steps may start
FAILED = (SS.FAILED, SS.REJECTED)
_ANSWERS = (fx.Answer, fx.AnswerState, fx.Refuse)


class Transition(Draft):
    __slots__ = ("_after", "_at_once", "hold", "plan", "state")

    def __init__(self, state: ExecutionState, now: datetime) -> None:
        Draft.__init__(self, state.execution, now)
        self.state = state
        self.plan = state.plan
        self._at_once: list[fx.Effect] = []
        self._after: list[fx.Effect] = []  # once the commit is durable
        self.hold = False  # commit and answer this transition before scheduling (a retry)

    @property
    def execution(self) -> Execution:
        return self.ex

    @property
    def runbook(self) -> Runbook:
        return self.plan.runbook

    @property
    def tasks(self) -> TaskRuns:
        return TaskRuns(self)

    @property
    def waits(self) -> Waits:
        return Waits(self)

    def step_state(self, step_id: str) -> StepState:
        return self.ex.steps[step_id]

    def deadline(self) -> datetime | None:
        """The execution's deadline counted from now (None: the runbook has no timeout)."""
        timeout = self.plan.runbook.timeout_ms
        return self.now + timedelta(milliseconds=timeout) if timeout else None

    # ------------------------------------------------------------------ effects
    def emit(self, effect: fx.Effect) -> None:
        """Add ``effect``: at once or once this commits, as its ``after_commit`` says; an
        answer to a message that carried no reply goes nowhere."""
        if isinstance(effect, _ANSWERS) and effect.reply is None:
            return
        (self._after if effect.after_commit else self._at_once).append(effect)

    def withdraw(self, match: Callable[[fx.Effect], bool]) -> bool:
        """Drop the first effect still waiting for the commit that ``match``es; whether one did."""
        for index, effect in enumerate(self._after):
            if match(effect):
                del self._after[index]
                return True
        return False

    # ------------------------------------------------------------------ a step's fate
    def mark_started(self, step: Step, status: StepStatus, **extra: Any) -> None:
        state = self.ex.steps[step.id]
        attempt = state.attempts + 1
        started = state.started_at if state.status.in_progress and state.started_at else self.now
        if step.depends_on and (odd := unusual(step.depends_on, self.ex.steps)):
            extra["why"] = {**(state.why or {}), "after": odd}
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
        if not self.plan.by_id[step_id].continue_on_error and not self.ex.status.finished:
            self.end(ExecutionStatus.FAILED, attrs.evolve(error, step_id=step_id))

    def skip(self, step_id: str, reason: str, **record: Any) -> None:
        """The step is skipped for ``reason``; ``record``: more of the decision (``runtime.core.why``)."""
        old = self.ex.steps[step_id].why
        self.set_step(step_id, status=SS.SKIPPED, started_at=None, completed_at=self.now,
                      why={**(old or {}), "skipped": reason, **record})
        self.log("info", f"step skipped: {reason}", step_id)
        self.audit("step.skipped", step_id=step_id)

    # ------------------------------------------------------------------ the end
    def end(self, status: ExecutionStatus, error: StepError | None, actor: str = SYSTEM,
            reason: str | None = None) -> None:
        """The execution ends in ``status``: every step in flight is cancelled."""
        why = "execution " + status.value
        for step_id in [*self.state.attempts, *self.state.parked]:
            self._cancel_step(step_id, why)
        self.set_execution(status=status, error=error, completed_at=self.now)
        if error is not None:
            self.log("error", f"execution {status.value}", data=error_json(error))
        elif status is ExecutionStatus.COMPLETED:
            self.log("info", f"execution {status.value}", output=self.ex.output)  # what it produced
        else:
            self.log("info", f"execution {status.value}")
        self.audit(f"execution.{status.value}", actor, reason=reason, error=error_json(error))

    def _cancel_step(self, step_id: str, why: str) -> None:
        self.plan.kinds[step_id].cancel(self, self.plan.by_id[step_id])
        self.tasks.over(step_id)  # whatever the kind left behind
        self.waits.unpark(step_id)
        self.set_step(step_id, status=SS.CANCELLED, completed_at=self.now, error=StepError("cancelled", why, False))
        self.log("warning", "step cancelled", step_id, reason=why)
        self.audit("step.cancelled", step_id=step_id)

    def effects(self) -> list[fx.Effect]:
        """The transition is over: its state is the one to use next; these are its effects in
        the order the shell performs them (at once, then the ``Commit``, then the rest)."""
        change = self.change(self.plan.positions)
        self.state.execution = self.ex
        effects = self._at_once
        if change is not None:
            effects.append(fx.Commit(change))
        effects += self._after
        return effects


class TaskRuns:
    """The runs of task steps (``ops.tasks``). A task step runs in the shell (``SpawnAttempt``),
    and every report of the run carries the attempt id it was spawned with: ``incarnation.n``,
    unique per start of the actor, so a report from a run spawned before a crash or a restart
    never matches one spawned after it. A running task step has one current attempt id, and
    holds a slot of ``maxConcurrentSteps`` until its run is over."""

    __slots__ = ("_t",)

    def __init__(self, transition: Transition) -> None:
        self._t = transition

    def restart(self, incarnation: int) -> None:
        """A new incarnation: every run of the previous one is gone."""
        s = self._t.state
        s.incarnation, s.issued = incarnation, 0
        s.attempts.clear()

    def spawn(self, step: Step) -> None:
        """Run the step's executor (attempt ``attempts`` of its state) once this commits."""
        t = self._t
        s = t.state
        s.issued += 1
        attempt_id = s.attempts[step.id] = f"{s.incarnation}.{s.issued}"
        t.emit(fx.SpawnAttempt(step.id, attempt_id, t.ex.steps[step.id].attempts, t.scope(step.id)))

    def current(self, step_id: str) -> str | None:
        """The attempt id of the step's run, if it runs."""
        return self._t.state.attempts.get(step_id)

    def over(self, step_id: str) -> None:
        """The step's run has ended (its outcome is being recorded): free its slot."""
        self._t.state.attempts.pop(step_id, None)

    def cancel(self, step_id: str) -> None:
        """Stop the step's run, if it has one (one spawned in this very transition never starts)."""
        attempt_id = self._t.state.attempts.pop(step_id, None)
        if attempt_id is None:
            return
        if not self._t.withdraw(lambda e: isinstance(e, fx.SpawnAttempt) and e.attempt_id == attempt_id):
            self._t.emit(fx.CancelAttempt(step_id, attempt_id))


class Waits:
    """Parked steps (``ops.waits``): an approval waiting for decisions, a step waiting for an
    event, a run-runbook step waiting for its child. A parked step holds no task and no slot;
    it may have a deadline (its kind's ``timeout`` fires when it passes, by ``due``), and a
    step waiting for an event holds a subscription until it stops waiting."""

    __slots__ = ("_t",)

    def __init__(self, transition: Transition) -> None:
        self._t = transition

    def clear(self) -> None:
        """A new incarnation: nothing is parked or subscribed until the kinds resume."""
        self._t.state.parked.clear()
        self._t.state.subscriptions.clear()

    def park(self, step_id: str, deadline: datetime | None) -> None:
        self._t.state.parked[step_id] = deadline

    def unpark(self, step_id: str) -> None:
        self._t.state.parked.pop(step_id, None)

    def subscribe(self, step_id: str, event_type: str, key: str, filter: Mapping[str, Any] | None) -> None:
        self._t.state.subscriptions[step_id] = (event_type, key)
        self._t.emit(fx.Subscribe(step_id, self._t.ex.tenant_id, event_type, key, filter))

    def unsubscribe(self, step_id: str) -> None:
        """Stop the step's subscription, if it has one."""
        found = self._t.state.subscriptions.pop(step_id, None)
        if found is not None:
            self._t.emit(fx.Unsubscribe(step_id, self._t.ex.tenant_id, *found))

    def due(self, at: datetime) -> Iterator[str]:
        """The steps whose deadline is ``at`` or earlier, each while it is still parked."""
        parked = self._t.state.parked
        for step_id, deadline in list(parked.items()):
            if deadline is not None and at >= deadline and step_id in parked:
                yield step_id
