"""The JSON shapes the API answers with, all built on ``runtime.model.wire.to_json``.

The engine's values carry a few internal fields (``deduplicated``, ``pausedAt``,
``idempotencyKey``, the ``executionId`` of every record) that are not part of the contract;
this module picks the public fields, in the order of the contract.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from quart import Response

from runtime import (
    AuditEntry,
    Evidence,
    Execution,
    LogEntry,
    PendingApproval,
    PublishResult,
    Runbook,
)
from runtime.core.explain import Explanation
from runtime.model.wire import format_time, to_json

EXECUTION_FIELDS = (
    "id", "runbookId", "runbookVersion", "tenantId", "status", "input", "output", "context", "error",
    "createdAt", "startedAt", "completedAt", "pausedDurationMs", "replayOf", "inputHash", "deadlineAt",
    "parentExecutionId", "parentStepId", "rootExecutionId", "forkedFrom",
)
STEP_FIELDS = ("status", "type", "attempts", "startedAt", "completedAt", "output", "error", "approvals",
               "progress", "deadlineAt", "childExecutionId")
EVIDENCE_FIELDS = ("id", "stepId", "kind", "sha256", "data", "createdAt")
AUDIT_FIELDS = ("at", "actor", "action", "stepId", "legalBasis", "reason", "data", "seq", "prevHash", "hash",
                "dataSha256", "erased")
LOG_FIELDS = ("seq", "at", "level", "message", "stepId", "data")
APPROVAL_STEP_FIELDS = ("approvalRequest", "delegations", "escalations")
RUNBOOK_SUMMARY_FIELDS = ("id", "version", "name", "description", "tenantId", "createdAt", "contentSha256")


def _pick(data: dict[str, Any], fields: Sequence[str]) -> dict[str, Any]:
    return {name: data.get(name) for name in fields}


def execution_json(execution: Execution) -> dict[str, Any]:
    data = to_json(execution)
    body = _pick(data, EXECUTION_FIELDS)
    body["steps"] = {step_id: _step_json(state) for step_id, state in data["steps"].items()}
    return body


def _step_json(state: dict[str, Any]) -> dict[str, Any]:
    body = _pick(state, STEP_FIELDS)
    if state.get("type") == "human-approval":
        body |= _pick(state, APPROVAL_STEP_FIELDS)
    return body


def runbook_summary_json(runbook: Runbook) -> dict[str, Any]:
    body = _pick(to_json(runbook), RUNBOOK_SUMMARY_FIELDS)
    body["shared"] = runbook.tenant_id is None
    body["stepCount"] = len(runbook.steps)
    return body


def runbook_json(runbook: Runbook) -> dict[str, Any]:
    body = runbook_summary_json(runbook)
    body["document"] = runbook.document
    return body


def log_json(entry: LogEntry) -> dict[str, Any]:
    return _pick(to_json(entry), LOG_FIELDS)


def evidence_json(item: Evidence) -> dict[str, Any]:
    return _pick(to_json(item), EVIDENCE_FIELDS)


def audit_json(entry: AuditEntry) -> dict[str, Any]:
    return _pick(to_json(entry), AUDIT_FIELDS)


def pending_approval_json(item: PendingApproval) -> dict[str, Any]:
    return {
        "executionId": item.execution_id,
        "runbookId": item.runbook_id,
        "runbookVersion": item.runbook_version,
        "executionStatus": item.execution_status.value,
        "stepId": item.step_id,
        "message": item.message,
        "approvers": list(item.approvers),
        "minApprovals": item.min_approvals,
        "approvals": [to_json(approval) for approval in item.approvals],
        "approvalsNeeded": item.approvals_needed,
        "startedAt": _time(item.started_at),
        "deadlineAt": _time(item.deadline_at),
        "digest": item.digest,
    }


def _time(value: Any) -> str | None:
    return format_time(value) if value is not None else None


def publish_json(result: PublishResult) -> dict[str, Any]:
    return {"delivered": result.delivered, "retained": result.retained, "refusedByFilter": result.refused_by_filter}


def explanation_json(item: Explanation) -> dict[str, Any]:
    return {"stepId": item.step_id, "status": item.status, "reasons": list(item.reasons), "data": item.data}


def page_json(items: Iterable[dict[str, Any]], next_cursor: str | None) -> dict[str, Any]:
    return {"items": list(items), "nextCursor": next_cursor}


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response that keeps key order (steps are in document order)."""
    text = json.dumps(body, ensure_ascii=False, separators=(",", ":"), default=str)
    response = Response(text, status=status, content_type="application/json")
    response.headers.update(headers or {})
    return response
