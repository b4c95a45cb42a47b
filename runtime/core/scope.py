"""The template and condition scope of an execution (what ``${...}`` paths resolve in)."""

from __future__ import annotations

from typing import Any

from runtime.model import Execution, StepStatus


def build_scope(execution: Execution, step_id: str | None = None) -> dict[str, Any]:
    """``input``, ``context``, the ids, and the output of every step that succeeded."""
    scope: dict[str, Any] = {
        "input": execution.input,
        "context": execution.context,
        "executionId": execution.id,
        "tenantId": execution.tenant_id,
        "execution": {"id": execution.id, "runbookId": execution.runbook_id,
                      "runbookVersion": execution.runbook_version},
    }
    succeeded = StepStatus.SUCCEEDED
    for sid, state in execution.steps.items():
        if state.status is succeeded:
            scope[sid] = state.output
    if step_id is not None:
        scope["stepId"] = step_id
    return scope
