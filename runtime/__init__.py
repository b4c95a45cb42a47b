"""The runbook engine: documents, validation, scheduling, step types, persistence and the
embedded Trio API (``open_runtime``)."""

from runtime.api.assembly import open_runtime
from runtime.api.links import DecisionLink
from runtime.api.runtime import CommandStatus, Page, Runtime, StartResult
from runtime.api.stores import check_store_url
from runtime.io.context import StepContext
from runtime.kinds.approval_inbox import ApprovalPage, PendingApproval
from runtime.model import (
    Approval,
    ApprovalRequest,
    AuditEntry,
    Delegation,
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
from runtime.model.errors import (
    CommandQueued,
    Conflict,
    Fenced,
    Forbidden,
    LimitExceeded,
    LoopDetected,
    NotFound,
    Problem,
    RunbookError,
    SeparationOfDuties,
    StaleDigest,
    StepFailed,
    StoreInUse,
    StoreUnavailable,
    ValidationError,
)
from runtime.security.links import LinkRefused
from runtime.shell.events import PublishResult
from runtime.shell.settings import Settings

__all__ = [
    "Approval",
    "ApprovalPage",
    "ApprovalRequest",
    "AuditEntry",
    "CommandQueued",
    "CommandStatus",
    "Conflict",
    "DecisionLink",
    "Delegation",
    "Event",
    "Evidence",
    "Execution",
    "ExecutionStatus",
    "Fenced",
    "Forbidden",
    "LimitExceeded",
    "LinkRefused",
    "LogEntry",
    "LoopDetected",
    "NotFound",
    "Page",
    "PendingApproval",
    "Problem",
    "PublishResult",
    "RetryPolicy",
    "Runbook",
    "RunbookError",
    "Runtime",
    "SeparationOfDuties",
    "Settings",
    "StaleDigest",
    "StartResult",
    "Step",
    "StepContext",
    "StepError",
    "StepFailed",
    "StepState",
    "StepStatus",
    "StoreInUse",
    "StoreUnavailable",
    "ValidationError",
    "check_store_url",
    "open_runtime",
]
