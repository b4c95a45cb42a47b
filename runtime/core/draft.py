"""``Draft``: the execution as one transition changes it, and the records the transition writes.

The first change copies the execution (and its steps) once, so every transition that
changes something makes exactly one new version; later changes edit the copy in place.
Logs, audit entries, evidence and consumed events pile up beside it, and ``change`` turns
all of it into the one ``Change`` the transition commits (a transition that only wrote
records still makes a new version). The template scope is cached until a step's output
changes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import attrs

from runtime.core.scope import build_scope
from runtime.model import (
    AuditEntry,
    Evidence,
    Execution,
    LogEntry,
    StepError,
    StepState,
    StepStatus,
)
from runtime.model.records import Change, Receipt, SlotClaim

SYSTEM = "system"


def error_json(error: StepError | None) -> dict[str, Any] | None:
    """An error as the data of a log or audit record."""
    if error is None:
        return None
    return {"code": error.code, "message": error.message, "retryable": error.retryable}


class Draft:
    __slots__ = ("_header", "_own", "_scope", "audits", "changed", "consumed", "evidence", "ex", "logs", "now",
                 "outputs_changed", "slot", "taken")

    def __init__(self, execution: Execution, now: datetime) -> None:
        self.ex = execution
        self.now = now
        self._own = False  # self.ex (and its steps dict) is this draft's private copy
        self._header = False  # a field other than ``steps`` changed
        self._scope: dict[str, Any] | None = None  # the scope without stepId, while valid
        self.outputs_changed = False  # a step succeeded (or stopped being succeeded) in this transition
        self.changed: dict[str, None] = {}  # the steps changed, in order
        self.logs: list[LogEntry] = []
        self.audits: list[AuditEntry] = []
        self.evidence: list[Evidence] = []
        self.consumed: list[str] = []
        self.taken: list[Receipt] = []  # receipts of the source messages whose events steps took
        self.slot: SlotClaim | None = None  # the execution queues for its key again (a step retry)

    def scope(self, step_id: str | None = None) -> dict[str, Any]:
        if self._scope is None:
            self._scope = build_scope(self.ex)
        return {**self._scope, "stepId": step_id} if step_id is not None else dict(self._scope)

    # ------------------------------------------------------------------ changes
    def _mine(self) -> None:
        if not self._own:  # the first change: copy once, one version per transition
            self.ex = attrs.evolve(self.ex, steps=dict(self.ex.steps), version=self.ex.version + 1)
            self._own = True

    def set_step(self, step_id: str, **changes: Any) -> StepState:
        self._mine()
        old = self.ex.steps[step_id]
        state = self.ex.steps[step_id] = attrs.evolve(old, **changes)
        if old.status is StepStatus.SUCCEEDED or state.status is StepStatus.SUCCEEDED:
            self._scope = None  # outputs in scope changed
            self.outputs_changed = True
        self.changed[step_id] = None
        return state

    def replace_step(self, step_id: str, state: StepState) -> None:
        self._mine()
        self.ex.steps[step_id] = state
        self._scope = None
        self.outputs_changed = True
        self.changed[step_id] = None

    def set_execution(self, **changes: Any) -> None:
        """Change fields of the execution itself (its header)."""
        self._mine()
        self.ex = attrs.evolve(self.ex, **changes)  # shares this draft's steps dict
        self._header = True

    # ------------------------------------------------------------------ records
    def log(self, level: str, text: str, step_id: str | None = None, /, **data: Any) -> None:
        self.logs.append(LogEntry(self.ex.id, self.now, level, text, step_id, data or None))

    def audit(self, action: str, actor: str = SYSTEM, step_id: str | None = None,
              reason: str | None = None, **data: Any) -> None:
        context = self.ex.context
        self.audits.append(AuditEntry(
            self.ex.id, self.now, actor, action, step_id, context.get("legalBasis"),
            reason if reason is not None else context.get("reason"), data or None, tenant_id=self.ex.tenant_id,
        ))

    def add_records(self, logs: Sequence[LogEntry] = (), evidence: Sequence[Evidence] = ()) -> None:
        self.logs += logs
        self.evidence += evidence

    def consume_event(self, event_id: str) -> None:
        self.consumed.append(event_id)

    def take_receipt(self, receipt: Receipt) -> None:
        self.taken.append(receipt)

    # ------------------------------------------------------------------ the end
    def change(self, positions: Mapping[str, int]) -> Change | None:
        """Everything to commit (None: nothing changed, nothing was recorded)."""
        if self.logs or self.audits or self.evidence or self.consumed or self.taken:
            self._mine()  # records without a state change still make a new version
        if not self._own:
            return None
        ex = self.ex
        slotted = any(ex.steps[sid].slot is not None for sid in self.changed)  # the store needs its tenant
        return Change(
            execution=ex if self._header or slotted else None,
            steps=tuple((ex.id, sid, positions[sid], ex.steps[sid]) for sid in self.changed),
            logs=tuple(self.logs), audit=tuple(self.audits), evidence=tuple(self.evidence),
            consume_events=tuple(self.consumed), version=(ex.id, ex.version), slot=self.slot,
            taken=tuple(self.taken),
        )
