"""The engine's data, shared by every layer: runbooks, executions, their steps, and the records
an execution leaves (logs, audit entries, evidence, events).

The classes live in ``types``; the rest of the package holds what every layer needs beside
them and nothing else: ``errors``, ``records`` (the unit of persistence), ``wire`` (the one
JSON converter), ``jsonsafe`` and ``limits``. Nothing here does I/O.
"""

from runtime.model.types import (
    LOG_LEVELS,
    NOT_DEDUPED,
    Approval,
    ApprovalRequest,
    AuditEntry,
    Delegation,
    Event,
    Evidence,
    Execution,
    ExecutionStatus,
    Lineage,
    LogEntry,
    RetryPolicy,
    Runbook,
    Step,
    StepError,
    StepSlot,
    StepState,
    StepStatus,
    TriggerState,
)

__all__ = [
    "LOG_LEVELS",
    "NOT_DEDUPED",
    "Approval",
    "ApprovalRequest",
    "AuditEntry",
    "Delegation",
    "Event",
    "Evidence",
    "Execution",
    "ExecutionStatus",
    "Lineage",
    "LogEntry",
    "RetryPolicy",
    "Runbook",
    "Step",
    "StepError",
    "StepSlot",
    "StepState",
    "StepStatus",
    "TriggerState",
]
