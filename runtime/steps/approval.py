"""human-approval: config checks and the decision rules (N of M, reject short-circuits,
timeout actions). The wait is a parked step in its ExecutionActor; decisions arrive as
``DecideApproval`` messages.

An entry of ``approvers`` is a user id, or ``role:NAME``: every user whose identity holds the
role ``NAME`` (the gateway passes the roles of the caller's token). ``ANY_ROLE`` among the
caller's roles stands for every role (the gateway's development mode).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from runtime.errors import Conflict, Forbidden, Problem, ValidationError
from runtime.limits import MAX_APPROVALS, count_problem, duration_problem
from runtime.model import Approval
from runtime.wire import format_time

DECISIONS = ("approve", "reject")
ROLE_PREFIX = "role:"
ANY_ROLE = "*"
TIMEOUT_ACTIONS = ("fail", "approve", "reject")
_FIELDS = {"approvers", "minApprovals", "timeoutMs", "timeoutAction", "message"}


def check_config(config: Mapping[str, Any], path: str) -> list[Problem]:
    problems = [Problem(f"{path}.{key}", f"unknown field '{key}'") for key in config if key not in _FIELDS]
    approvers = config.get("approvers")
    templated = isinstance(approvers, str) and "${" in approvers
    ids: list[Any] = approvers if isinstance(approvers, list) else []
    listed = bool(ids) and all(isinstance(a, str) and a and a != ROLE_PREFIX for a in ids)
    if not templated and not listed:
        problems.append(Problem(f"{path}.approvers", "required: a non-empty list of user ids (or role:NAME)"))
    by_role = any(isinstance(a, str) and a.startswith(ROLE_PREFIX) for a in ids)
    minimum = config.get("minApprovals", 1)
    if (problem := count_problem(minimum, 1, MAX_APPROVALS)) is not None:
        problems.append(Problem(f"{path}.minApprovals", problem))
    elif listed and not by_role and minimum > len(set(ids)):
        problems.append(Problem(f"{path}.minApprovals", f"{minimum} approvals needed but only {len(set(ids))} approvers"))
    timeout = config.get("timeoutMs")
    if timeout is not None and (problem := duration_problem(timeout)) is not None:
        problems.append(Problem(f"{path}.timeoutMs", problem))
    if config.get("timeoutAction", "fail") not in TIMEOUT_ACTIONS:
        problems.append(Problem(f"{path}.timeoutAction", f"must be one of {', '.join(TIMEOUT_ACTIONS)}"))
    if "message" in config and not isinstance(config["message"], str):
        problems.append(Problem(f"{path}.message", "must be a string"))
    return problems


def check_decision(config: Mapping[str, Any], approvals: Sequence[Approval], approver: str, decision: str,
                   roles: Collection[str] = ()) -> None:
    """Raise if this decision may not be taken; ``config`` is the rendered config, ``roles``
    those of the approver."""
    if decision not in DECISIONS:
        raise ValidationError([{"path": "decision", "message": "must be 'approve' or 'reject'"}])
    if not may_approve(config, approver, roles):
        raise Forbidden(f"'{approver}' is not an approver of this step")
    if any(a.approver == approver for a in approvals):
        raise Conflict(f"'{approver}' has already decided on this step")


def may_approve(config: Mapping[str, Any], approver: str, roles: Collection[str] = ()) -> bool:
    """Whether ``approver`` (holding ``roles``) is admitted by an entry of ``approvers``."""
    entries = approver_ids(config)
    if approver in entries:
        return True
    wanted = {entry.removeprefix(ROLE_PREFIX) for entry in entries if entry.startswith(ROLE_PREFIX)}
    return bool(wanted) and (ANY_ROLE in roles or not wanted.isdisjoint(roles))


def approver_ids(config: Mapping[str, Any]) -> list[str]:
    """The rendered ``approvers``: a list of user ids (a template may give one id as a string).

    Membership is exact: a string is never searched as text (``"ali" in "alice"``).
    """
    approvers = config.get("approvers")
    if isinstance(approvers, str):
        return [approvers] if approvers else []
    if isinstance(approvers, list):
        return [a for a in approvers if isinstance(a, str) and a]
    return []


def outcome(config: Mapping[str, Any], approvals: Sequence[Approval]) -> str | None:
    """'rejected', 'approved', or None while more decisions are needed."""
    if any(a.decision == "reject" for a in approvals):
        return "rejected"
    approved = {a.approver for a in approvals if a.decision == "approve"}
    return "approved" if len(approved) >= int(config.get("minApprovals", 1)) else None


def output(approvals: Sequence[Approval], *, approved: bool, auto: bool = False) -> dict[str, Any]:
    return {
        "approved": approved,
        "approvals": [
            {"approver": a.approver, "decision": a.decision, "comment": a.comment, "at": format_time(a.at)}
            for a in approvals
        ],
        "autoApproved": auto,
    }
