"""Messages between the engine's actors: commands are imperative, events past tense.

Messages that expect an answer carry ``reply`` (an ``actors.Reply``); the kernel guarantees
the asker is answered, even if the receiving actor dies.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import attrs

from actors import Reply
from runtime.model import Event, Evidence, Execution, LogEntry, StepError

# -- from a StepActor to its ExecutionActor (events)


@attrs.frozen
class StepRetrying:
    step_id: str
    attempt: int
    error: StepError
    delay_s: float
    logs: tuple[LogEntry, ...] = ()
    evidence: tuple[Evidence, ...] = ()


@attrs.frozen
class StepAttemptStarted:
    step_id: str
    attempt: int


@attrs.frozen
class StepProgressed:
    step_id: str
    progress: dict[str, Any]


@attrs.frozen
class StepFinished:
    step_id: str
    output: Any = None
    error: StepError | None = None
    logs: tuple[LogEntry, ...] = ()
    evidence: tuple[Evidence, ...] = ()


# -- from the Runtime (and the EventRouter) to an ExecutionActor (commands)


@attrs.frozen
class PauseExecution:
    actor: str
    reason: str | None
    reply: Reply[Execution]


@attrs.frozen
class ResumeExecution:
    actor: str
    reason: str | None
    reply: Reply[Execution]


@attrs.frozen
class CancelExecution:
    actor: str
    reason: str
    reply: Reply[Execution]


@attrs.frozen
class DecideApproval:
    step_id: str
    approver: str
    decision: str
    comment: str | None
    reply: Reply[Execution]
    roles: tuple[str, ...] = ()  # the approver's roles, for ``role:NAME`` approver entries


@attrs.frozen
class DeliverEvent:
    step_id: str
    event: Event
    reply: Reply[bool]


@attrs.frozen
class StopExecution:
    """Stop running here without changing the state (another process owns it now)."""


ExecutionMessage: TypeAlias = (
    StepRetrying | StepAttemptStarted | StepProgressed | StepFinished | PauseExecution
    | ResumeExecution | CancelExecution | DecideApproval | DeliverEvent | StopExecution
)
