"""The engine's data model: runbooks, executions, step states and the records around them.

Everything here is an immutable attrs value. The ExecutionActor replaces values instead of
mutating them, so a snapshot handed to a caller (or to the store) never changes under it.
The JSON shape (camelCase) is the business of ``runtime.model.wire``, not of these classes.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

import attrs


class ExecutionStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    AWAITING_APPROVAL = "awaiting_approval"
    PAUSING = "pausing"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"

    @property
    def finished(self) -> bool:
        return self in _FINISHED_EXECUTION


_FINISHED_EXECUTION = frozenset(
    {ExecutionStatus.COMPLETED, ExecutionStatus.FAILED, ExecutionStatus.CANCELLED, ExecutionStatus.TIMED_OUT}
)
#: statuses whose executions do not take part in the idempotent-start index
NOT_DEDUPED = frozenset({ExecutionStatus.FAILED, ExecutionStatus.CANCELLED, ExecutionStatus.TIMED_OUT})


class StepStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    RETRYING = "retrying"
    WAITING = "waiting"
    AWAITING_APPROVAL = "awaiting_approval"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in _FINISHED_STEP

    @property
    def in_progress(self) -> bool:
        return self in _IN_PROGRESS_STEP


_FINISHED_STEP = frozenset(
    {StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.REJECTED, StepStatus.SKIPPED, StepStatus.CANCELLED}
)
_IN_PROGRESS_STEP = frozenset(
    {StepStatus.RUNNING, StepStatus.RETRYING, StepStatus.WAITING, StepStatus.AWAITING_APPROVAL}
)

LOG_LEVELS = ("debug", "info", "warning", "error")


@attrs.frozen
class RetryPolicy:
    max_retries: int = 3
    initial_delay_ms: int = 1000
    backoff_multiplier: float = 2.0
    max_delay_ms: int = 60000
    jitter: bool = True


@attrs.frozen
class Step:
    id: str
    type: str
    config: dict[str, Any] = attrs.Factory(dict)
    depends_on: tuple[str, ...] | None = None
    when: dict[str, Any] | None = None
    retry_policy: RetryPolicy | None = None
    timeout_ms: int | None = None
    continue_on_error: bool = False
    approval_config: dict[str, Any] | None = None
    name: str | None = None
    description: str | None = None


@attrs.frozen
class Runbook:
    """A registered runbook version. ``tenant_id`` None: shared by every tenant."""

    id: str
    steps: tuple[Step, ...]
    name: str | None = None
    description: str | None = None
    timeout_ms: int | None = None
    max_concurrent_steps: int | None = None
    input_schema: dict[str, Any] | None = None
    require_legal_basis: bool = False
    output: Any = None
    version: int = 0
    tenant_id: str | None = None
    created_at: datetime | None = None
    document: dict[str, Any] = attrs.Factory(dict)
    triggers: tuple[dict[str, Any], ...] = ()  # as written; runtime.documents.triggers reads them
    content_sha256: str = ""  # SHA-256 of the document's canonical JSON (RFC 8785): what this version says


    def step(self, step_id: str) -> Step:
        for step in self.steps:
            if step.id == step_id:
                return step
        raise KeyError(step_id)


@attrs.frozen
class StepError:
    """``{code, message, retryable}``; on an execution also the failing ``step_id``."""

    code: str
    message: str
    retryable: bool = False
    step_id: str | None = None


@attrs.frozen
class Approval:
    """A decision on an approval step; ``digest``: that of the request it was made on."""

    approver: str
    decision: str
    comment: str | None
    at: datetime
    digest: str | None = None


@attrs.frozen
class ApprovalRequest:
    """What the approvers of a waiting step are shown, and the digest that binds a decision to
    it: the lowercase hex SHA-256 of ``shown`` in canonical JSON (RFC 8785)."""

    digest: str
    shown: dict[str, Any]


@attrs.frozen
class Delegation:
    """An approver (``delegator``) handed their vote on a step to ``to`` (a user or ``role:NAME``)."""

    delegator: str
    to: str
    reason: str
    at: datetime


@attrs.frozen
class StepState:
    status: StepStatus
    type: str
    attempts: int = 0
    started_at: datetime | None = None
    completed_at: datetime | None = None
    output: Any = None
    error: StepError | None = None
    approvals: tuple[Approval, ...] = ()
    progress: dict[str, Any] | None = None
    deadline_at: datetime | None = None
    child_execution_id: str | None = None  # run-runbook: the child execution of this attempt
    notified: str | None = None  # human-approval notify: "sent" or "failed" (None: not yet)
    # human-approval: what is shown and its digest; votes handed on; escalation stages reached
    approval_request: ApprovalRequest | None = None
    delegations: tuple[Delegation, ...] = ()
    escalations: int = 0
    escalations_notified: tuple[int, ...] = ()  # the escalation stages whose notification outcome is recorded
    # the decision record: why the step is as it is (what made it ready, a condition's operands,
    # a skip, retries, a person's hand); small JSON, read by ``runtime.core.explain``
    why: dict[str, Any] | None = None


@attrs.frozen
class Execution:
    id: str
    runbook_id: str
    runbook_version: int
    tenant_id: str
    status: ExecutionStatus
    created_at: datetime
    steps: dict[str, StepState]
    input: Any = None
    context: dict[str, Any] = attrs.Factory(dict)
    output: Any = None
    error: StepError | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    paused_duration_ms: int = 0
    replay_of: str | None = None
    input_hash: str = ""
    idempotency_key: str | None = None
    deduplicated: bool = True
    paused_at: datetime | None = None
    deadline_at: datetime | None = None
    version: int = 0  # grows by one with every committed change of the execution
    epoch: int = 0  # with several processes: the ownership epoch its owner's writes carry
    parent_execution_id: str | None = None  # started by a run-runbook step of that execution
    parent_step_id: str | None = None
    depth: int = 0  # how many parents it has
    root_execution_id: str | None = None  # a child's: the execution at the top of its tree (no parent)
    forked_from: dict[str, str] | None = None  # a fork's origin: {executionId, stepId}


@attrs.frozen
class Lineage:
    """Where a child execution sits: the run-runbook step of ``parent_id`` that starts it, its
    ``depth`` (its parent's plus one) and the ``root_id`` of the tree (the parent's root, or
    the parent itself)."""

    parent_id: str
    step_id: str
    depth: int
    root_id: str


@attrs.frozen
class LogEntry:
    execution_id: str
    at: datetime
    level: str
    message: str
    step_id: str | None = None
    data: Any = None
    seq: int = 0


@attrs.frozen
class AuditEntry:
    execution_id: str
    at: datetime
    actor: str
    action: str
    step_id: str | None = None
    legal_basis: str | None = None
    reason: str | None = None
    data: Any = None
    tenant_id: str | None = None  # the tenant whose ledger holds it (None: the default tenant)
    # given by the store when it commits the entry: its place in the tenant's hash chain
    seq: int | None = None
    prev_hash: str | None = None
    hash: str | None = None
    data_sha256: str | None = None  # what the chain covers of ``data`` (kept when data is erased)
    erased: bool = False


@attrs.frozen
class Evidence:
    id: str
    execution_id: str
    step_id: str | None
    kind: str
    sha256: str
    data: Any
    created_at: datetime


@attrs.frozen
class TriggerState:
    """What is stored of a runbook's trigger in one tenant: switched on or off there, and its
    last run there. ``owner`` is the runbook's owner (None: a shared runbook, whose triggers
    each tenant switches for itself); ``tenant_id`` the tenant (the owner, for its own runbook)."""

    tenant_id: str
    owner: str | None
    runbook_id: str
    trigger_id: str
    enabled: bool = True
    last_run_at: datetime | None = None
    last_execution_id: str | None = None


@attrs.frozen
class Event:
    id: str
    tenant_id: str
    type: str
    correlation_key: str
    payload: Any
    received_at: datetime
    expires_at: datetime | None = None


@attrs.frozen
class StartResult:
    """What a start answers: the execution, and whether this start created it (False: an
    identical start, or one with the same idempotency key, made it before)."""

    execution: Execution
    created: bool
