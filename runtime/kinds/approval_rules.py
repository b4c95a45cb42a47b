"""human-approval: who may decide on a step, who may hand their vote on, and what the votes make.

The approvers of a waiting step are the entries of its rendered ``approvers``, those of the
escalation stages reached, and whoever a vote was delegated to; an entry is a user id, or
``role:NAME`` (every user whose identity holds role ``NAME``; ``ANY_ROLE`` among a user's roles
stands for every role, as in the gateway's development mode). A user who delegated their vote
on the step may no longer decide on it. With separation of duties (the step's
``separationOfDuties``, or the runtime's ``REQUIRE_SEPARATION_OF_DUTIES``), the user who started
the execution (``trigger:<id>`` for an execution a trigger started) may not decide, and a second
decision by the same user is refused as a breach of it rather than as a conflict.

Votes count on the request they were made on: decisions are recorded with the digest of what
the step showed, and only those made on the current digest count (``current_votes``). Each
approver counts once, however many entries or delegations admit them.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from runtime.core.messages import DecideApproval, DelegateApproval
from runtime.kinds.approval_config import ROLE_PREFIX
from runtime.model import Approval, Delegation, Execution, StepState, StepStatus
from runtime.model.errors import Conflict, Forbidden, SeparationOfDuties, StaleDigest

DECISIONS = ("approve", "reject")
ANY_ROLE = "*"


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


def stages(config: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The escalation stages of a (rendered) config."""
    found = config.get("escalation")
    return [s for s in found if isinstance(s, Mapping)] if isinstance(found, list) else []


def entries(config: Mapping[str, Any], state: StepState) -> list[str]:
    """Every approver entry of the waiting step: its own, the escalations reached, the delegates."""
    found = approver_ids(config)
    for stage in stages(config)[:state.escalations]:
        found += approver_ids(stage)
    found += [d.to for d in state.delegations]
    return list(dict.fromkeys(found))


def admits(entries: Collection[str], approver: str, roles: Collection[str] = ()) -> bool:
    """Whether one of the ``entries`` (user ids, ``role:NAME``) admits ``approver`` holding ``roles``."""
    if approver in entries:
        return True
    wanted = {entry.removeprefix(ROLE_PREFIX) for entry in entries if entry.startswith(ROLE_PREFIX)}
    return bool(wanted) and (ANY_ROLE in roles or not wanted.isdisjoint(roles))


def starter_of(execution: Execution) -> str | None:
    """Who started the execution: its ``context.userId``, or ``trigger:<id>``."""
    trigger = execution.context.get("trigger")
    if isinstance(trigger, Mapping) and trigger.get("id"):
        return f"trigger:{trigger['id']}"
    user = execution.context.get("userId")
    return str(user) if user else None


def separated(config: Mapping[str, Any], required: bool) -> bool:
    """Whether separation of duties holds on the step (``required``: the runtime's setting,
    which a step cannot turn off)."""
    return required or config.get("separationOfDuties") is True


def current_votes(state: StepState) -> tuple[Approval, ...]:
    """The decisions that count: those made on what the step shows now."""
    request = state.approval_request
    if request is None:
        return state.approvals
    return tuple(a for a in state.approvals if a.digest in (request.digest, None))


def delegation_of(state: StepState, approver: str) -> Delegation | None:
    return next((d for d in state.delegations if d.delegator == approver), None)


def check_approver(config: Mapping[str, Any], execution: Execution, state: StepState, approver: str,
                   roles: Collection[str] = (), *, required_separation: bool = False) -> None:
    """Raise ``Forbidden`` unless ``approver`` (holding ``roles``) may decide on the step now:
    the one authorization of a decision (and of a delegation). A process that does not own
    the execution applies it too, to refuse without asking the owner."""
    handed = delegation_of(state, approver)
    if handed is not None:
        raise Forbidden(f"'{approver}' delegated their vote on this step to {handed.to} and may no longer decide")
    if not admits(entries(config, state), approver, roles):
        raise Forbidden(f"'{approver}' is not an approver of this step")
    if not separated(config, required_separation):
        return
    if approver == starter_of(execution):
        raise SeparationOfDuties(f"separation of duties: '{approver}' started this execution and may not "
                                 "decide on its approvals")
    if any(a.approver == approver for a in current_votes(state)):
        raise SeparationOfDuties(f"separation of duties: '{approver}' has already decided on this step")


def check_decision(config: Mapping[str, Any], execution: Execution, step_id: str, state: StepState,
                   decision: DecideApproval, *, required_separation: bool = False) -> None:
    """The rule on a decision, applied by the execution: raise unless the step awaits approval,
    ``decision.approver`` may decide (``check_approver``) and has not decided on what the step
    shows now, and the decision's ``digest``, when it has one, is the current one."""
    _check_waiting(step_id, state)
    check_approver(config, execution, state, decision.approver, decision.roles,
                   required_separation=required_separation)
    if any(a.approver == decision.approver for a in current_votes(state)):
        raise Conflict(f"'{decision.approver}' has already decided on this step")
    request = state.approval_request
    if decision.digest is not None and request is not None and decision.digest != request.digest:
        raise StaleDigest(step_id, decision.digest, request.digest)


def check_delegation(config: Mapping[str, Any], execution: Execution, step_id: str, state: StepState,
                     request: DelegateApproval, *, required_separation: bool = False) -> None:
    """Raise unless the step allows delegation and awaits approval, the delegator may decide
    and has not, and the delegate is someone who may receive the vote."""
    if config.get("allowDelegation") is not True:
        raise Forbidden(f"step '{step_id}' does not allow delegation (allowDelegation is not true)")
    _check_waiting(step_id, state)
    check_approver(config, execution, state, request.delegator, request.roles,
                   required_separation=required_separation)
    if any(a.approver == request.delegator for a in current_votes(state)):
        raise Conflict(f"'{request.delegator}' has already decided on this step; a decision cannot be delegated")
    if delegation_of(state, request.to) is not None:
        raise Conflict(f"'{request.to}' delegated their own vote on this step")
    if separated(config, required_separation) and request.to == starter_of(execution):
        raise SeparationOfDuties(f"separation of duties: '{request.to}' started this execution and may not "
                                 "be handed a vote on its approvals")


def _check_waiting(step_id: str, state: StepState) -> None:
    if state.status is not StepStatus.AWAITING_APPROVAL:
        raise Conflict(f"step '{step_id}' is not awaiting approval (it is {state.status.value})")


def outcome(config: Mapping[str, Any], votes: Sequence[Approval]) -> str | None:
    """'rejected', 'approved', or None while more decisions are needed."""
    if any(a.decision == "reject" for a in votes):
        return "rejected"
    approved = {a.approver for a in votes if a.decision == "approve"}
    return "approved" if len(approved) >= min_approvals(config) else None


def min_approvals(config: Mapping[str, Any]) -> int:
    value = config.get("minApprovals", 1)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 1
