"""What the approvers of a waiting human-approval step are shown, and its digest.

``shown`` is ``{message, input, outputs, runbook}``: the step's ``message`` rendered, the
execution's input, the outputs of the steps named by ``show`` (null for one that has not
succeeded), or, without ``show``, of every step that has succeeded so far, and ``{id, version,
contentSha256}`` of the runbook version. The digest is the lowercase hex SHA-256 of ``shown``
in canonical JSON (RFC 8785), so anyone can recompute it from what they were shown.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from runtime.model import ApprovalRequest, Execution, Runbook, StepStatus
from runtime.model.canonical import canonical_sha256


def shown(config: Mapping[str, Any], execution: Execution, runbook: Runbook, step_id: str) -> dict[str, Any]:
    message = config.get("message")
    return {
        "message": message if isinstance(message, str) else None,
        "input": execution.input,
        "outputs": _outputs(config.get("show"), execution, step_id),
        "runbook": {"id": runbook.id, "version": runbook.version,
                    # (a version registered before versions had a content hash: computed now)
                    "contentSha256": runbook.content_sha256 or canonical_sha256(runbook.document)},
    }


def request_of(config: Mapping[str, Any], execution: Execution, runbook: Runbook, step_id: str) -> ApprovalRequest:
    """The request of the step as the execution stands; ``ValueError`` if what it shows has
    no canonical JSON form (a number beyond what a double holds)."""
    what = shown(config, execution, runbook, step_id)
    return ApprovalRequest(canonical_sha256(what), what)


def _outputs(show: Any, execution: Execution, step_id: str) -> dict[str, Any]:
    steps = execution.steps
    if isinstance(show, list):
        return {sid: _output(execution, sid) for sid in show if isinstance(sid, str) and sid in steps}
    return {sid: state.output for sid, state in steps.items()
            if sid != step_id and state.status is StepStatus.SUCCEEDED}


def _output(execution: Execution, step_id: str) -> Any:
    state = execution.steps[step_id]
    return state.output if state.status is StepStatus.SUCCEEDED else None
