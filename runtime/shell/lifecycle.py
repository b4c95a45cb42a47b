"""Lifecycle events read off a Change: what sinks publish, committed with the change itself.

When ``Settings.lifecycle_outbox`` is on, every Change an execution commits carries the
lifecycle events it makes (``lifecycle_of``), so they are in the store exactly when the
change is: ``execution.started`` (a new execution), ``step.finished`` (a step reached a
final status), ``step.awaiting_approval`` and ``execution.finished``. Each event's key is
the execution's id and the version the change gives it, with its index in the change.
When the setting is off nothing is derived and nothing is written.
"""

from __future__ import annotations

from datetime import datetime

import attrs

from runtime.model import Execution, StepStatus
from runtime.model.records import Change, Lifecycle


def lifecycle_of(change: Change, origin: str, now: datetime) -> Change:
    """``change`` with the lifecycle events it makes."""
    events: list[tuple[str, str, str | None]] = []  # (kind, status, step id)
    header: Execution | None = change.new_execution or change.execution
    if header is None:
        return change
    if change.new_execution is not None:
        events.append(("execution.started", header.status.value, None))
    for execution_id, step_id, _, state in change.steps:
        if execution_id != header.id:
            continue
        if state.status.finished:
            events.append(("step.finished", state.status.value, step_id))
        elif state.status is StepStatus.AWAITING_APPROVAL:
            events.append(("step.awaiting_approval", state.status.value, step_id))
    if header.status.finished and change.new_execution is None:
        events.append(("execution.finished", header.status.value, None))
    if not events:
        return change
    version = change.version[1] if change.version is not None else header.version
    made = tuple(Lifecycle(f"{header.id}:{version}:{n}", header.id, header.tenant_id, version, kind, status, now,
                           step_id, origin) for n, (kind, status, step_id) in enumerate(events))
    return attrs.evolve(change, lifecycle=change.lifecycle + made)
