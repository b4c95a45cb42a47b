"""What ``apply`` takes: messages to one execution. Commands are imperative, reports past tense.

A message that expects an answer carries ``reply``: an opaque token the core hands back in
an ``Answer``/``AnswerState``/``Refuse`` effect, exactly once. A step's reports carry the
``attempt_id`` the core gave the attempt when it spawned it; a report of an attempt that is
not the step's current one is dropped.

A ``Command`` is a message that may come from another process (a control operation, a
decision, a step retry, an event, a child's end): it crosses as a row of the commands table,
``command_row`` (its class name, its fields as JSON through the one converter; the reply
token stays behind) and ``command_of`` on the process that owns the execution.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final, TypeAlias

import attrs

from runtime.model import Event, Evidence, LogEntry, StepError
from runtime.model.records import Receipt
from runtime.model.wire import LOCAL, from_tagged, tagged

# -- to the execution as a whole


@attrs.frozen
class Begin:
    """The first message of an incarnation: start, or continue from the committed state.

    ``incarnation`` is unique per start of an actor in this process, so the ids of attempts
    spawned before a crash never match those spawned after it.
    """

    incarnation: int


@attrs.frozen
class Admit:
    """A ``queued`` execution (``step_id`` "") or a step waiting for a slot of its concurrency
    key holds one now: it starts (nothing if it is not waiting: the same admission told twice)."""

    step_id: str = ""
    reply: Any = attrs.field(default=None, metadata=LOCAL)  # stays in this process


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
    reply: Any = attrs.field(default=None, metadata=LOCAL)  # stays in this process


@attrs.frozen
class Resume:
    actor: str
    reason: str | None
    reply: Any = attrs.field(default=None, metadata=LOCAL)  # stays in this process


@attrs.frozen
class Cancel:
    actor: str
    reason: str
    reply: Any = attrs.field(default=None, metadata=LOCAL)  # stays in this process


@attrs.frozen
class RetryStep:
    """Re-run a failed or rejected step of a failed execution, and what its failure stopped."""

    step_id: str
    actor: str
    reason: str | None
    reply: Any = attrs.field(default=None, metadata=LOCAL)  # stays in this process


@attrs.frozen
class CompleteStep:
    """A person ends a failed, waiting or awaiting-approval step as succeeded with ``output``
    (they did its work by hand); ``evidence``: what they attach to show it."""

    step_id: str
    actor: str
    output: Any
    justification: str
    evidence: Any = None
    legal_basis: str | None = None
    reply: Any = attrs.field(default=None, metadata=LOCAL)  # stays in this process


@attrs.frozen
class SkipStep:
    """A person ends a failed, waiting or awaiting-approval step as skipped."""

    step_id: str
    actor: str
    justification: str
    legal_basis: str | None = None
    reply: Any = attrs.field(default=None, metadata=LOCAL)  # stays in this process


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
    """A decision; ``digest``: that of the request the approver was shown (None: not sent),
    ``via``: how it came (``link``: a signed decision link), for the record."""

    step_id: str
    approver: str
    decision: str
    comment: str | None
    reply: Any = attrs.field(default=None, metadata=LOCAL)  # stays in this process
    roles: frozenset[str] = frozenset()
    digest: str | None = None
    via: str | None = None


@attrs.frozen
class DelegateApproval:
    """``delegator`` hands their vote on an approval step to ``to`` (a user or ``role:NAME``)."""

    step_id: str
    delegator: str
    to: str
    reason: str
    reply: Any = attrs.field(default=None, metadata=LOCAL)  # stays in this process
    roles: frozenset[str] = frozenset()


@attrs.frozen
class DeliverEvent:
    """An event for a waiting step; answered with whether the step took it (``reply`` None:
    a retained event handed over while the step subscribed). ``receipt`` (one process): the
    receipt of the source's message the event comes from, committed with the step taking it."""

    step_id: str
    event: Event
    reply: Any = attrs.field(default=None, metadata=LOCAL)  # stays in this process
    receipt: Receipt | None = attrs.field(default=None, metadata=LOCAL)


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
    """The notification of an approval step was delivered (``error`` None) or finally failed;
    ``stage``: 0 when the step started waiting, n for its n-th escalation."""

    step_id: str
    attempt: int
    error: StepError | None = None
    logs: Sequence[LogEntry] = ()
    evidence: Sequence[Evidence] = ()
    stage: int = 0


StepMessage: TypeAlias = (
    AttemptStarted | AttemptRetrying | StepProgressed | StepFinished | DecideApproval | DelegateApproval
    | DeliverEvent | ChildFinished | NotificationSent
)
Message: TypeAlias = (
    Begin | Tick | Continue | Admit | Pause | Resume | Cancel | RetryStep | CompleteStep | SkipStep | StepMessage
)

Command: TypeAlias = (
    Pause | Resume | Cancel | RetryStep | CompleteStep | SkipStep | DecideApproval | DelegateApproval
    | DeliverEvent | ChildFinished | Admit
)
_COMMANDS: Final[dict[str, type[Command]]] = {
    cls.__name__: cls for cls in (Pause, Resume, Cancel, RetryStep, CompleteStep, SkipStep, DecideApproval,
                                  DelegateApproval, DeliverEvent, ChildFinished, Admit)
}


def command_row(command: Command) -> tuple[str, Any]:
    """A command as the commands table holds it: (its class name, its fields as JSON)."""
    return tagged(command)


def command_of(tag: str, body: Any, reply: Any = None) -> Command:
    """The command of a row of the commands table, answered through ``reply``."""
    command = from_tagged(tag, body, _COMMANDS)
    if reply is None or isinstance(command, ChildFinished):  # nothing waits for a child's end
        return command
    return attrs.evolve(command, reply=reply)
