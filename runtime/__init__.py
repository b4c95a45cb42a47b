"""The runbook engine: documents, validation, scheduling, step types, persistence and the
embedded Trio API (``open_runtime``)."""

from runtime.approvals import ApprovalPage, PendingApproval
from runtime.errors import (
    Conflict,
    Forbidden,
    LimitExceeded,
    NotFound,
    Problem,
    RunbookError,
    StepFailed,
    StoreUnavailable,
    ValidationError,
)
from runtime.events import PublishResult
from runtime.model import (
    Approval,
    AuditEntry,
    Event,
    Evidence,
    Execution,
    ExecutionStatus,
    LogEntry,
    RetryPolicy,
    Runbook,
    Step,
    StepError,
    StepState,
    StepStatus,
)
from runtime.settings import Settings
from runtime.steps.context import StepContext
from runtime.system import Page, Runtime, StartResult, open_runtime

__all__ = [
    "Approval",
    "ApprovalPage",
    "AuditEntry",
    "Conflict",
    "Event",
    "Evidence",
    "Execution",
    "ExecutionStatus",
    "Forbidden",
    "LimitExceeded",
    "LogEntry",
    "NotFound",
    "Page",
    "PendingApproval",
    "Problem",
    "PublishResult",
    "RetryPolicy",
    "Runbook",
    "RunbookError",
    "Runtime",
    "Settings",
    "StartResult",
    "Step",
    "StepContext",
    "StepError",
    "StepFailed",
    "StepState",
    "StepStatus",
    "StoreUnavailable",
    "ValidationError",
    "open_runtime",
]
