"""What the persistence actor writes: a ``Change`` is the unit of acknowledgement.

An ExecutionActor (or the Runtime, for starts and registrations) sends one Change and waits
for its ``ChangeResult``; the PersistenceActor commits many Changes in one transaction
(group commit) and only then answers each sender.
"""

from __future__ import annotations

from datetime import datetime

import attrs

from runtime.model import AuditEntry, Event, Evidence, Execution, LogEntry, Runbook, StepState


@attrs.frozen
class Change:
    """State changes that commit together, in this order.

    ``new_execution`` is inserted first; if the idempotent-start index (or the
    idempotency-key index) already holds an execution, nothing else of this Change is
    written and the result names the existing execution.
    """

    new_execution: Execution | None = None
    dedup: bool = True
    runbook: Runbook | None = None
    execution: Execution | None = None  # header upsert (its steps are written via `steps`)
    steps: tuple[tuple[str, str, int, StepState], ...] = ()  # (execution_id, step_id, position, state)
    logs: tuple[LogEntry, ...] = ()
    audit: tuple[AuditEntry, ...] = ()
    evidence: tuple[Evidence, ...] = ()
    retain_events: tuple[Event, ...] = ()
    consume_events: tuple[str, ...] = ()
    expire_events_at: datetime | None = None  # delete every retained event expired at this time
    version: tuple[str, int] | None = None  # (execution id, its version after this change)
    lease: tuple[str, float] | None = None  # with new_execution: (owner, ttl in s) of its lease

    @property
    def empty(self) -> bool:
        return not (
            self.new_execution or self.runbook or self.execution or self.steps or self.logs
            or self.audit or self.evidence or self.retain_events or self.consume_events or self.version
            or self.expire_events_at
        )


@attrs.frozen
class ChangeResult:
    """``existing_id`` set: the start was a duplicate. ``runbook_version``: the version assigned."""

    existing_id: str | None = None
    runbook_version: int | None = None


def merged(first: Change, second: Change) -> Change:
    """One change with the records of ``first`` then ``second`` (later states win).

    Both are changes of one execution's transitions, never a start or a registration."""
    steps = {(eid, sid): (eid, sid, pos, state) for eid, sid, pos, state in first.steps}
    steps.update({(eid, sid): (eid, sid, pos, state) for eid, sid, pos, state in second.steps})
    return Change(
        execution=second.execution or first.execution,
        steps=tuple(steps.values()),
        logs=first.logs + second.logs,
        audit=first.audit + second.audit,
        evidence=first.evidence + second.evidence,
        retain_events=first.retain_events + second.retain_events,
        consume_events=first.consume_events + second.consume_events,
        version=second.version or first.version,
    )
