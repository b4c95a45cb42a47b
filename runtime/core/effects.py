"""What ``apply`` returns besides the next state: effects, plain values for the shell to perform.

The shell performs them in list order, with one rule: effects whose ``after_commit`` is
true wait until the ``Commit`` of the same transition is durable (an answer, a step that
starts because an outcome was recorded). The others (subscriptions, cancelling an attempt,
the timer) happen at once. There is at most one ``Commit`` per transition.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, ClassVar, TypeAlias

import attrs

from runtime.model.records import Change


@attrs.frozen
class Commit:
    """Records to commit before anything acknowledges them."""

    change: Change
    after_commit: ClassVar[bool] = False


@attrs.frozen
class SpawnAttempt:
    """Run a task step: attempts from ``attempt`` on, reports tagged with ``attempt_id``.
    ``scope`` is the template scope its config is rendered with."""

    step_id: str
    attempt_id: str
    attempt: int
    scope: Mapping[str, Any]
    after_commit: ClassVar[bool] = True


@attrs.frozen
class CancelAttempt:
    step_id: str
    attempt_id: str
    after_commit: ClassVar[bool] = False


@attrs.frozen
class Subscribe:
    """Wait for events of ``(tenant, event_type, key)`` that pass ``filter``; a retained one
    may come back at once as a ``DeliverEvent`` without reply, to apply in the same turn."""

    step_id: str
    tenant_id: str
    event_type: str
    key: str
    filter: Mapping[str, Any] | None
    after_commit: ClassVar[bool] = False


@attrs.frozen
class Unsubscribe:
    step_id: str
    tenant_id: str
    event_type: str
    key: str
    after_commit: ClassVar[bool] = False


@attrs.frozen
class ArmTimer:
    """Send ``Tick(at)`` at ``at`` (None: no deadline). Replaces the previous timer."""

    at: datetime | None
    after_commit: ClassVar[bool] = False


@attrs.frozen
class AnswerState:
    """Answer ``reply`` with the execution as committed by this transition."""

    reply: Any
    after_commit: ClassVar[bool] = True


@attrs.frozen
class Answer:
    reply: Any
    value: Any
    after_commit: ClassVar[bool] = True


@attrs.frozen
class Refuse:
    """Fail ``reply`` with ``error`` (a ``RunbookError``); nothing was changed for it."""

    reply: Any
    error: Exception
    after_commit: ClassVar[bool] = True


@attrs.frozen
class Continue:
    """Apply ``messages.Continue`` once this transition is committed and answered: its
    state (a step retry's reset, say) is committed and answered on its own, and what it
    makes ready starts in the next transition."""

    after_commit: ClassVar[bool] = True


@attrs.frozen
class StartChild:
    """Start the child execution of a run-runbook step (``child_id`` is derived from the
    parent, the step and its attempt, so starting it again finds the same one)."""

    step_id: str
    attempt: int
    child_id: str
    runbook_id: str
    version: int | None
    input: Any
    context: Mapping[str, Any]
    depth: int
    after_commit: ClassVar[bool] = True


@attrs.frozen
class CancelChild:
    child_id: str
    reason: str
    after_commit: ClassVar[bool] = True


@attrs.frozen
class Notify:
    """Send an approval step's notification: ``config`` is its ``notify`` as written (the shell
    renders it with ``scope`` and the secrets), ``payload`` the body, rendered without them;
    ``stage``: 0 when the step starts waiting, n for its n-th escalation."""

    step_id: str
    attempt: int
    config: Mapping[str, Any]
    scope: Mapping[str, Any]
    payload: Mapping[str, Any]
    policy: Any  # the step's RetryPolicy: sent and retried like a call-service request
    stage: int = 0
    after_commit: ClassVar[bool] = True


@attrs.frozen
class Note:
    """A line for the process log (a dropped report, say): nothing to commit."""

    text: str
    after_commit: ClassVar[bool] = False


Effect: TypeAlias = (
    Commit | SpawnAttempt | CancelAttempt | Subscribe | Unsubscribe | ArmTimer | AnswerState | Answer | Refuse
    | Continue | Note | StartChild | CancelChild | Notify
)
