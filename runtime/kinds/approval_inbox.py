"""What waits for a person's decision: the approval steps of unfinished executions.

This module owns the read behind "my approvals" (the gateway's ``GET /api/v1/approvals``,
the console's inbox and ``runbooks approvals``): the store finds the unfinished executions
of a tenant with a step in ``awaiting_approval``; each such step's config is rendered with
the execution's scope (as the execution actor renders it when the step starts waiting), and
the step is listed for a user who is one of its rendered ``approvers`` and has not decided
in the current round yet. It is also the one place outside the execution actor that
renders a step's config (``rendered_config``), for the terminal prompts of ``runbooks run``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from datetime import datetime
from typing import Any

import attrs

from runtime.core.scope import build_scope
from runtime.kinds.approval import admits, approver_ids
from runtime.language import templates
from runtime.model import Approval, Execution, ExecutionStatus, Runbook, StepStatus

#: one page of the store's executions with a step awaiting approval: (executions, next cursor)
ReadPage = Callable[[int, str | None], Awaitable[tuple[list[Execution], str | None]]]
PinnedRunbook = Callable[[Execution], Awaitable[Runbook]]


@attrs.frozen
class PendingApproval:
    """One approval step waiting for the decision of the user it was listed for."""

    execution_id: str
    runbook_id: str
    runbook_version: int
    execution_status: ExecutionStatus
    step_id: str
    message: str | None
    approvers: tuple[str, ...]
    min_approvals: int
    approvals: tuple[Approval, ...]
    started_at: datetime | None
    deadline_at: datetime | None

    @property
    def approvals_needed(self) -> int:
        """How many more distinct approvals the step needs to succeed."""
        approved = {a.approver for a in self.approvals if a.decision == "approve"}
        return max(self.min_approvals - len(approved), 0)


@attrs.frozen
class ApprovalPage:
    items: list[PendingApproval]
    next_cursor: str | None


def rendered_config(execution: Execution, runbook: Runbook, step_id: str) -> dict[str, Any]:
    """The step's config rendered with the execution's current scope; the raw config
    when a template does not resolve (the step would have failed on it instead of waiting)."""
    config = runbook.step(step_id).config
    try:
        rendered: dict[str, Any] = templates.render(config, build_scope(execution, step_id))
    except templates.TemplateError:
        return dict(config)
    return rendered


def awaiting_steps(execution: Execution, runbook: Runbook) -> list[PendingApproval]:
    """Every step of the execution that awaits approval, whoever its approvers are."""
    found = []
    for step_id, state in execution.steps.items():
        if state.status is not StepStatus.AWAITING_APPROVAL:
            continue
        config = rendered_config(execution, runbook, step_id)
        message = config.get("message")
        found.append(PendingApproval(
            execution.id, execution.runbook_id, execution.runbook_version, execution.status, step_id,
            message if isinstance(message, str) else None, tuple(approver_ids(config)),
            _min_approvals(config), state.approvals, state.started_at, state.deadline_at))
    return found


def waits_for(item: PendingApproval, user: str, roles: Collection[str] = ()) -> bool:
    """Whether the step waits for ``user`` (holding ``roles``): an approver, by id or by a
    ``role:NAME`` entry, who has not decided in this round."""
    return admits(item.approvers, user, roles) and all(a.approver != user for a in item.approvals)


async def pending_for(user: str, read_page: ReadPage, runbook_of: PinnedRunbook, *, roles: Collection[str] = (),
                      limit: int = 50, cursor: str | None = None) -> ApprovalPage:
    """The steps waiting for ``user``, newest execution first.

    The store is read ``limit`` executions at a time until at least ``limit`` steps were
    found or nothing is left; a page always ends after a whole store page, so it may hold a
    few more than ``limit`` items (an execution with several approvals waiting), never fewer
    while more exist.
    """
    items: list[PendingApproval] = []
    while True:
        executions, cursor = await read_page(limit, cursor)
        for execution in executions:
            runbook = await runbook_of(execution)
            items += [item for item in awaiting_steps(execution, runbook) if waits_for(item, user, roles)]
        if cursor is None or len(items) >= limit:
            return ApprovalPage(items, cursor)


def _min_approvals(config: dict[str, Any]) -> int:
    value = config.get("minApprovals", 1)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 1
