"""What waits for a person's decision: the approval steps of unfinished executions.

This module owns the read behind "my approvals" (the gateway's ``GET /api/v1/approvals``,
the console's inbox and ``runbooks approvals``): the store finds the unfinished executions
of a tenant with a step in ``awaiting_approval``; each such step's config is rendered with
the execution's scope (as the execution actor renders it when the step starts waiting), and
the step is listed for a user who may decide on it now (``approval_rules.check_approver``:
one of its approvers, escalated ones and delegates included, who did not hand their vote
on, is not kept out by separation of duties) and has not decided on what it shows now. It is also the one place outside the execution actor that
renders a step's config (``rendered_config``), for the terminal prompts of ``runbooks run``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from datetime import datetime
from typing import Any

import attrs

from runtime.core.scope import build_scope
from runtime.kinds.approval_rules import check_approver, current_votes, entries, min_approvals
from runtime.language import templates
from runtime.model import Approval, Execution, ExecutionStatus, Runbook, StepState, StepStatus
from runtime.model.errors import Forbidden

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
    digest: str | None = None  # of what the step shows now: send it back with the decision
    execution: Execution | None = attrs.field(default=None, eq=False, repr=False)
    config: dict[str, Any] = attrs.field(factory=dict, eq=False, repr=False)  # rendered

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
    return [_pending(execution, runbook, step_id, state) for step_id, state in execution.steps.items()
            if state.status is StepStatus.AWAITING_APPROVAL]


def _pending(execution: Execution, runbook: Runbook, step_id: str, state: StepState) -> PendingApproval:
    config = rendered_config(execution, runbook, step_id)
    message = config.get("message")
    request = state.approval_request
    return PendingApproval(
        execution.id, execution.runbook_id, execution.runbook_version, execution.status, step_id,
        message if isinstance(message, str) else None, tuple(entries(config, state)), min_approvals(config),
        current_votes(state), state.started_at, state.deadline_at, request.digest if request else None,
        execution, config)


def waits_for(item: PendingApproval, user: str, roles: Collection[str] = (), *,
              required_separation: bool = False) -> bool:
    """Whether the step waits for ``user`` (holding ``roles``): someone who may decide on it
    now and has not decided on what it shows now."""
    if item.execution is None or any(a.approver == user for a in item.approvals):
        return False
    try:
        check_approver(item.config, item.execution, item.execution.steps[item.step_id], user, roles,
                       required_separation=required_separation)
    except Forbidden:
        return False
    return True


async def pending_for(user: str, read_page: ReadPage, runbook_of: PinnedRunbook, *, roles: Collection[str] = (),
                      limit: int = 50, cursor: str | None = None,
                      required_separation: bool = False) -> ApprovalPage:
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
            items += [item for item in awaiting_steps(execution, runbook)
                      if waits_for(item, user, roles, required_separation=required_separation)]
        if cursor is None or len(items) >= limit:
            return ApprovalPage(items, cursor)

