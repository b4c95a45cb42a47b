"""``TaskRuns``: the runs of an execution's task steps, as one transition sees them.

A task step runs in the shell (``SpawnAttempt``), and every report of the run carries the
attempt id it was spawned with. Ids are ``incarnation.n``: unique per start of the actor,
so a report from a run spawned before a crash or a restart never matches one spawned after
it. Each running task step has one current attempt id, and holds one slot of
``maxConcurrentSteps`` until its run is over.
"""

from __future__ import annotations

from runtime.core import effects as fx
from runtime.core.draft import Draft
from runtime.core.state import ExecutionState
from runtime.model import Step


class TaskRuns:
    def __init__(self, state: ExecutionState, draft: Draft, outbox: fx.Outbox) -> None:
        self._state = state
        self._draft = draft
        self._outbox = outbox

    @property
    def running(self) -> int:
        """How many task steps run (and hold a slot)."""
        return len(self._state.attempts)

    def restart(self, incarnation: int) -> None:
        """A new incarnation: every run of the previous one is gone."""
        self._state.incarnation, self._state.issued = incarnation, 0
        self._state.attempts.clear()

    def spawn(self, step: Step) -> None:
        """Run the step's executor (attempt ``attempts`` of its state) once this commits."""
        s = self._state
        s.issued += 1
        attempt_id = s.attempts[step.id] = f"{s.incarnation}.{s.issued}"
        attempt = self._draft.ex.steps[step.id].attempts
        self._outbox.emit(fx.SpawnAttempt(step.id, attempt_id, attempt, self._draft.scope(step.id)))

    def current(self, step_id: str) -> str | None:
        """The attempt id of the step's run, if it runs."""
        return self._state.attempts.get(step_id)

    def over(self, step_id: str) -> None:
        """The step's run has ended (its outcome is being recorded): free its slot."""
        self._state.attempts.pop(step_id, None)

    def cancel(self, step_id: str) -> None:
        """Stop the step's run, if it has one (one spawned in this very transition never starts)."""
        attempt_id = self._state.attempts.pop(step_id, None)
        if attempt_id is None:
            return
        spawned = self._outbox.withdraw(lambda e: isinstance(e, fx.SpawnAttempt) and e.attempt_id == attempt_id)
        if not spawned:
            self._outbox.emit(fx.CancelAttempt(step_id, attempt_id))
