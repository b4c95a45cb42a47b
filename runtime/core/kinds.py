"""The seam between the core and the step kinds: ``StepKind`` (what a kind does) and
``StepOps`` (what a kind may do to the execution while the core applies a message).

A kind is a small object with five hooks, called by the core with the transition in
progress (``ops``) and the step:

``begin``    the step is ready and may start (for a kind that ``uses_slot``, a slot of
             ``maxConcurrentSteps`` is free): start it, park it, or decide it at once.
``resume``   the execution continues from committed state with the step in progress
             (recovery, a restart, a reactivation): carry on (park again, re-run).
``scope_changed``  while the step is parked, another step succeeded in this transition: the
             outputs in its scope changed (an approval shows them).
``message``  a message addressed to the step (an attempt's report, a decision, an event).
``timeout``  the step's own deadline (``deadline_at``) has passed.
``cancel``   the step is being cancelled (the execution ends): release what it holds.

and ``decides(step)``: the steps whose fate this step decides (a conditional's branch
targets), which wait for it and are skipped when it does not take their branch.

``ops`` (the ``Transition``, ``runtime.core.transition``) offers: reading (``now``,
``execution``, ``runbook``, ``step_state``, ``scope``); a step's fate (``mark_started``, ``set_step``,
``succeed``, ``fail``, ``skip``); records (``log``, ``audit``, ``add_records``,
``consume_event``); ``emit`` for an effect the kind builds itself (a child to start, a
notification, an answer); and two facets, ``ops.tasks`` (the runs of task steps) and
``ops.waits`` (parked steps: deadlines and event subscriptions).

Hooks are pure like the core: they read ``ops`` and call it, nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from runtime.core.effects import Effect
from runtime.core.messages import StepMessage
from runtime.model import (
    Evidence,
    Execution,
    LogEntry,
    Runbook,
    Step,
    StepError,
    StepState,
    StepStatus,
)
from runtime.model.records import Receipt


class TaskOps(Protocol):
    """The runs of task steps (``runtime.core.transition.TaskRuns``)."""

    def spawn(self, step: Step) -> None:
        """Run the step's executor (attempt ``attempts`` of its state) once this commits."""

    def current(self, step_id: str) -> str | None:
        """The attempt id of the step's run, if it runs."""

    def over(self, step_id: str) -> None:
        """The step's run has ended (its outcome is being recorded): free its slot."""

    def cancel(self, step_id: str) -> None: ...


class WaitOps(Protocol):
    """Parked steps: deadlines and event subscriptions (``runtime.core.transition.Waits``)."""

    def park(self, step_id: str, deadline: datetime | None) -> None: ...

    def unpark(self, step_id: str) -> None: ...

    def subscribe(self, step_id: str, event_type: str, key: str, filter: Mapping[str, Any] | None) -> None: ...

    def unsubscribe(self, step_id: str) -> None:
        """Stop the step's subscription, if it has one."""


class StepOps(Protocol):
    """The transition being built, as the kinds see it."""

    @property
    def now(self) -> datetime: ...

    @property
    def execution(self) -> Execution: ...

    @property
    def runbook(self) -> Runbook:
        """The runbook version the execution runs."""

    @property
    def tasks(self) -> TaskOps: ...

    @property
    def waits(self) -> WaitOps: ...

    def step_state(self, step_id: str) -> StepState: ...

    def scope(self, step_id: str | None = None) -> dict[str, Any]: ...

    def mark_started(self, step: Step, status: StepStatus, **extra: Any) -> None:
        """The step starts another attempt (``attempts`` + 1) in ``status``."""

    def set_step(self, step_id: str, **changes: Any) -> StepState: ...

    def succeed(self, step_id: str, output: Any) -> None: ...

    def fail(self, step_id: str, error: StepError, status: StepStatus = ...) -> None: ...

    def skip(self, step_id: str, reason: str, **record: Any) -> None: ...

    def log(self, level: str, text: str, step_id: str | None = None, /, **data: Any) -> None: ...

    def audit(self, action: str, actor: str = ..., step_id: str | None = None,
              reason: str | None = None, **data: Any) -> None: ...

    def add_records(self, logs: Sequence[LogEntry] = (), evidence: Sequence[Evidence] = ()) -> None: ...

    def consume_event(self, event_id: str) -> None: ...

    def take_receipt(self, receipt: Receipt) -> None:
        """Commit the receipt of a source's message with this transition (its event was taken)."""

    def emit(self, effect: Effect) -> None:
        """An effect for the shell (a child to start, a notification, an answer, a note), at
        once or once this commits as its ``after_commit`` says; an answer to a message that
        carried no reply goes nowhere."""


class StepKind(Protocol):
    """How the engine runs one kind of step (see the module docstring)."""

    uses_slot: bool  # a running step of this kind counts against maxConcurrentSteps

    def begin(self, ops: StepOps, step: Step) -> None: ...

    def resume(self, ops: StepOps, step: Step, state: StepState) -> None: ...

    def scope_changed(self, ops: StepOps, step: Step) -> None: ...

    def message(self, ops: StepOps, step: Step, message: StepMessage) -> None: ...

    def timeout(self, ops: StepOps, step: Step) -> None: ...

    def cancel(self, ops: StepOps, step: Step) -> None: ...

    def decides(self, step: Step) -> Sequence[str]: ...
