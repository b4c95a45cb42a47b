"""What ``apply`` takes: messages to one execution. Commands are imperative, reports past tense.

A message that expects an answer carries ``reply``: an opaque token the core hands back in
an ``Answer``/``AnswerState``/``Refuse`` effect, exactly once. A step's reports carry the
``attempt_id`` the core gave the attempt when it spawned it; a report of an attempt that is
not the step's current one is dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeAlias

import attrs

from runtime.model import Event, Evidence, LogEntry, StepError

# -- to the execution as a whole


@attrs.frozen
class Begin:
    """The first message of an incarnation: start, or continue from the committed state.

    ``incarnation`` is unique per start of an actor in this process, so the ids of attempts
    spawned before a crash never match those spawned after it.
    """

    incarnation: int


@attrs.frozen
class Tick:
    """A deadline armed with ``ArmTimer(at)`` has come: whatever is due at ``at`` fires."""

    at: datetime


@attrs.frozen
class Continue:
    """Go on after a transition that committed before scheduling (``effects.Continue``)."""


@attrs.frozen
class Pause:
    actor: str
    reason: str | None
    reply: Any = None


@attrs.frozen
class Resume:
    actor: str
    reason: str | None
    reply: Any = None


@attrs.frozen
class Cancel:
    actor: str
    reason: str
    reply: Any = None


@attrs.frozen
class RetryStep:
    """Re-run a failed or rejected step of a failed execution, and what its failure stopped."""

    step_id: str
    actor: str
    reason: str | None
    reply: Any = None


# -- to one step (``step_id``); its kind decides what they do


@attrs.frozen
class AttemptStarted:
    """A task step began another attempt within its run (after a backoff)."""

    step_id: str
    attempt_id: str
    attempt: int


@attrs.frozen
class AttemptRetrying:
    step_id: str
    attempt_id: str
    attempt: int
    error: StepError
    delay_s: float
    logs: Sequence[LogEntry] = ()
    evidence: Sequence[Evidence] = ()


@attrs.frozen
class StepProgressed:
    step_id: str
    attempt_id: str
    progress: dict[str, Any]


@attrs.frozen
class StepFinished:
    """The outcome of a task step's run: ``error`` None is success with ``output``."""

    step_id: str
    attempt_id: str
    output: Any = None
    error: StepError | None = None
    logs: Sequence[LogEntry] = ()
    evidence: Sequence[Evidence] = ()


@attrs.frozen
class DecideApproval:
    step_id: str
    approver: str
    decision: str
    comment: str | None
    reply: Any = None
    roles: frozenset[str] = frozenset()


@attrs.frozen
class DeliverEvent:
    """An event for a waiting step; answered with whether the step took it (``reply`` None:
    a retained event handed over while the step subscribed)."""

    step_id: str
    event: Event
    reply: Any = None


@attrs.frozen
class ChildFinished:
    """The child execution a run-runbook step started has ended (or could not start):
    ``status`` is its final status, ``output`` and ``error`` its own."""

    step_id: str
    child_id: str
    status: str
    output: Any = None
    error: StepError | None = None


@attrs.frozen
class NotificationSent:
    """The notification of an approval step was delivered (``error`` None) or finally failed."""

    step_id: str
    attempt: int
    error: StepError | None = None
    logs: Sequence[LogEntry] = ()
    evidence: Sequence[Evidence] = ()


StepMessage: TypeAlias = (
    AttemptStarted | AttemptRetrying | StepProgressed | StepFinished | DecideApproval | DeliverEvent
    | ChildFinished | NotificationSent
)
Message: TypeAlias = Begin | Tick | Continue | Pause | Resume | Cancel | RetryStep | StepMessage
