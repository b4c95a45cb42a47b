"""human-approval: config checks, the decision rules (N of M, one rejection ends it, timeout
actions) and the kind: the step parks until enough decisions arrive (``DecideApproval``
messages) or its deadline passes; it holds no task and no slot of ``maxConcurrentSteps``.
With ``notify: {url, headers?}`` the approvers are told when the step starts waiting (a
``Notify`` effect the shell performs; its outcome comes back as ``NotificationSent`` and is
recorded on the step, so a restart sends it again only if no outcome was recorded).

An entry of ``approvers`` is a user id, or ``role:NAME``: every user whose identity holds the
role ``NAME`` (the gateway passes the roles of the caller's token). ``ANY_ROLE`` among the
caller's roles stands for every role (the gateway's development mode).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import timedelta
from typing import Any

from runtime.core import effects as fx
from runtime.core.kinds import StepOps
from runtime.core.messages import DecideApproval, NotificationSent, StepMessage
from runtime.kinds.base import KindDefaults
from runtime.kinds.spec import KindSpec, ignoring_types
from runtime.language.templates import TemplateError, render
from runtime.model import Approval, Evidence, Step, StepError, StepState, StepStatus
from runtime.model.errors import Conflict, Forbidden, Problem
from runtime.model.limits import MAX_APPROVALS, count_problem, duration_problem
from runtime.model.wire import format_time, sha256_hex

DECISIONS = ("approve", "reject")
ROLE_PREFIX = "role:"
ANY_ROLE = "*"
TIMEOUT_ACTIONS = ("fail", "approve", "reject")
_FIELDS = {"approvers", "minApprovals", "timeoutMs", "timeoutAction", "message", "notify"}
_NOTIFY_FIELDS = {"url", "headers"}


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
    if "notify" in config:
        problems += _check_notify(config["notify"], f"{path}.notify")
    return problems


def _check_notify(notify: Any, path: str) -> list[Problem]:
    if not isinstance(notify, Mapping):
        return [Problem(path, "must be a mapping {url, headers}")]
    problems = [Problem(f"{path}.{key}", f"unknown field '{key}'") for key in notify if key not in _NOTIFY_FIELDS]
    if not isinstance(notify.get("url"), str) or not notify["url"].strip():
        problems.append(Problem(f"{path}.url", "required: the URL to POST the notification to"))
    headers = notify.get("headers", {})
    if not isinstance(headers, Mapping) or not all(isinstance(v, str) for v in headers.values()):
        problems.append(Problem(f"{path}.headers", "must map header names to strings"))
    return problems


def notification(ops: StepOps, step: Step, config: Mapping[str, Any]) -> dict[str, Any]:
    """The body of the step's notification (its ``text`` and ``link`` are added by the sender)."""
    state = ops.step_state(step.id)
    message = config.get("message")
    return {
        "executionId": ops.execution.id, "stepId": step.id, "runbookId": ops.execution.runbook_id,
        "message": message if isinstance(message, str) else None, "approvers": approver_ids(config),
        "minApprovals": config.get("minApprovals", 1),
        "deadlineAt": format_time(state.deadline_at) if state.deadline_at else None,
    }


def check_decision(config: Mapping[str, Any], step_id: str, state: StepState, decision: DecideApproval) -> None:
    """The rule on a decision, applied by the execution: raise unless the step awaits approval
    and ``decision.approver`` (holding ``decision.roles``) is one of its approvers
    (``check_approver``; ``config``: the rendered config) who has not decided in this round.
    Whether ``decision.decision`` is one of ``DECISIONS`` is the caller's argument check."""
    if state.status is not StepStatus.AWAITING_APPROVAL:
        raise Conflict(f"step '{step_id}' is not awaiting approval (it is {state.status.value})")
    check_approver(config, decision.approver, decision.roles)
    if any(a.approver == decision.approver for a in state.approvals):
        raise Conflict(f"'{decision.approver}' has already decided on this step")


def check_approver(config: Mapping[str, Any], approver: str, roles: Collection[str] = ()) -> None:
    """Raise ``Forbidden`` unless ``approver`` (holding ``roles``) is admitted by the step's
    (rendered) approvers: the one authorization of a decision. A process that does not own
    the execution applies it too, to refuse without asking the owner."""
    if not may_approve(config, approver, roles):
        raise Forbidden(f"'{approver}' is not an approver of this step")


def may_approve(config: Mapping[str, Any], approver: str, roles: Collection[str] = ()) -> bool:
    """Whether ``approver`` (holding ``roles``) is admitted by an entry of ``approvers``."""
    return admits(approver_ids(config), approver, roles)


def admits(entries: Collection[str], approver: str, roles: Collection[str] = ()) -> bool:
    """Whether one of the rendered ``approvers`` entries (user ids, ``role:NAME``) admits
    ``approver`` holding ``roles`` (``*``: every role, as in development mode)."""
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


class ApprovalKind(KindDefaults):
    def begin(self, ops: StepOps, step: Step) -> None:
        config = self.rendered(ops, step)
        if config is None:
            return
        timeout = step.config.get("timeoutMs", step.timeout_ms)
        deadline = ops.now + timedelta(milliseconds=timeout) if timeout else None
        ops.mark_started(step, StepStatus.AWAITING_APPROVAL, deadline_at=deadline, approvals=())
        ops.waits.park(step.id, deadline)
        ops.log("info", "approval requested", step.id, approvers=config.get("approvers"),
                message=config.get("message"))
        if "notify" in step.config:
            _notify(ops, step, config)

    def resume(self, ops: StepOps, step: Step, state: StepState) -> None:
        ops.waits.park(step.id, state.deadline_at)
        if "notify" in step.config and state.notified is None:  # its outcome was never recorded
            _notify(ops, step, _config(ops, step))

    def message(self, ops: StepOps, step: Step, message: StepMessage) -> None:
        if isinstance(message, NotificationSent):
            self._notified(ops, step, message)
        elif isinstance(message, DecideApproval):
            self._decide(ops, step, message)
        else:
            super().message(ops, step, message)

    def _decide(self, ops: StepOps, step: Step, message: DecideApproval) -> None:
        state = ops.step_state(step.id)
        config = _config(ops, step)
        check_decision(config, step.id, state, message)
        decision = Approval(message.approver, message.decision, message.comment, ops.now)
        approvals = (*state.approvals, decision)
        ops.set_step(step.id, approvals=approvals)
        _record_decision(ops, step.id, state.attempts, decision)
        result = outcome(config, approvals)
        if result is not None:
            ops.waits.unpark(step.id)
            if result == "approved":
                ops.succeed(step.id, output(approvals, approved=True))
            else:
                _reject(ops, step.id, approvals, f"rejected by {decision.approver}")
        ops.emit(fx.AnswerState(message.reply))

    def _notified(self, ops: StepOps, step: Step, message: NotificationSent) -> None:
        ops.add_records(message.logs, message.evidence)
        state = ops.step_state(step.id)
        if state.status is StepStatus.AWAITING_APPROVAL and state.attempts == message.attempt:
            ops.set_step(step.id, notified="sent" if message.error is None else "failed")
        if message.error is None:
            ops.log("info", "approvers notified", step.id)
            ops.audit("approval.notified", step_id=step.id)
        else:
            ops.log("warning", f"notification failed: {message.error.message}", step.id, code=message.error.code)
            ops.audit("approval.notification_failed", step_id=step.id, error=message.error.message,
                      code=message.error.code)

    def timeout(self, ops: StepOps, step: Step) -> None:
        ops.waits.unpark(step.id)
        config = _config(ops, step)
        action = config.get("timeoutAction", "fail")
        approvals = ops.step_state(step.id).approvals
        ops.audit("approval.timed_out", step_id=step.id, timeoutAction=action)
        if action == "approve":
            ops.succeed(step.id, output(approvals, approved=True, auto=True))
        elif action == "reject":
            _reject(ops, step.id, approvals, "approval timed out (timeoutAction reject)")
        else:
            ops.fail(step.id, StepError("timeout", f"no decision within {config.get('timeoutMs')} ms", False))

    def cancel(self, ops: StepOps, step: Step) -> None:
        ops.waits.unpark(step.id)


def _config(ops: StepOps, step: Step) -> Mapping[str, Any]:
    """The config rendered now (it rendered when the step began; the scope only grows)."""
    try:
        rendered: Mapping[str, Any] = render(step.config, ops.scope(step.id))
    except TemplateError:
        return step.config
    return rendered


def _record_decision(ops: StepOps, step_id: str, attempt: int, decision: Approval) -> None:
    """The decision's evidence (hashed), log line and audit entry."""
    execution_id = ops.execution.id
    data = {"approver": decision.approver, "decision": decision.decision, "comment": decision.comment}
    evidence_id = sha256_hex(["approval", execution_id, step_id, attempt, decision.approver,
                              decision.at.isoformat()])[:32]
    ops.add_records(evidence=(Evidence(evidence_id, execution_id, step_id, "approval_decision",
                                       sha256_hex(data), data, decision.at),))
    ops.log("info", f"approval decision: {decision.decision}", step_id, approver=decision.approver)
    ops.audit("approval.decided", decision.approver, step_id, reason=decision.comment, decision=decision.decision)


def _notify(ops: StepOps, step: Step, config: Mapping[str, Any]) -> None:
    """Send the notification once this commits: ``notify`` as written (the shell renders it
    with the secrets), the body rendered here."""
    ops.emit(fx.Notify(step.id, ops.step_state(step.id).attempts, dict(step.config["notify"]),
                       ops.scope(step.id), notification(ops, step, config), step.retry_policy))


def _reject(ops: StepOps, step_id: str, approvals: Sequence[Approval], why: str) -> None:
    ops.set_step(step_id, output=output(approvals, approved=False))
    ops.fail(step_id, StepError("rejected", why, False), StepStatus.REJECTED)


APPROVAL = ApprovalKind()
SPEC = KindSpec(APPROVAL, ignoring_types(check_config), config_aliases=("approvalConfig",))
