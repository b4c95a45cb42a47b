"""human-approval: the kind. The step parks until enough decisions arrive (``DecideApproval``
messages) or its deadline passes; it holds no task and no slot of ``maxConcurrentSteps``.

When it starts waiting it computes what its approvers are shown and the digest of that
(``approval_request``), kept on the step as ``approval_request`` and recorded as evidence
(``approval_request``: the digest and what it covers) with an ``approval.requested`` audit
entry. When what it covers changes while it waits (a step beside it succeeds, so an output
or the rendered message changes) the request is computed again and recorded the same way:
decisions made on the earlier digest stay on record but no longer count, and a decision
that names the earlier digest is refused (``StaleDigest``). Who may decide, delegate, and
what the votes make are ``approval_rules``; the config's checks are ``approval_config``.

Escalation is state of the step: ``escalations`` counts the stages reached. The step is
parked until the earlier of its deadline and its next stage's time, so the runtime's one
timer heap drives both (and a restart, or another process taking the execution over, parks
it again from its committed state). A stage adds its approvers (``approval.escalated``) and
notifies them.

With ``notify: {url, headers?}`` the approvers are told when the step starts waiting, and
each escalation stage tells its approvers (through the stage's own ``notify``, else the
step's): a ``Notify`` effect the shell performs; its outcome comes back as
``NotificationSent`` and is recorded on the step, so a restart sends it again only if no
outcome was recorded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from runtime.core import effects as fx
from runtime.core.kinds import StepOps
from runtime.core.messages import DecideApproval, DelegateApproval, NotificationSent, StepMessage
from runtime.kinds import approval_rules as rules
from runtime.kinds.approval_config import check_config, check_shown
from runtime.kinds.approval_request import request_of
from runtime.kinds.base import KindDefaults
from runtime.kinds.spec import KindSpec, ignoring_types
from runtime.language.templates import TemplateError, render
from runtime.model import Approval, Delegation, Evidence, Step, StepError, StepState, StepStatus
from runtime.model.wire import format_time, sha256_hex

AWAITING = StepStatus.AWAITING_APPROVAL


class ApprovalKind(KindDefaults):
    """``required_separation``: the runtime's ``REQUIRE_SEPARATION_OF_DUTIES``."""

    def __init__(self, required_separation: bool = False) -> None:
        self.required_separation = required_separation

    def begin(self, ops: StepOps, step: Step) -> None:
        config = self.rendered(ops, step)
        if config is None:
            return
        timeout = step.config.get("timeoutMs", step.timeout_ms)
        deadline = ops.now + timedelta(milliseconds=timeout) if timeout else None
        ops.mark_started(step, AWAITING, deadline_at=deadline, approvals=(), delegations=(), escalations=0,
                         escalations_notified=(), notified=None, approval_request=None)
        if not _request(ops, step, config):
            return
        ops.waits.park(step.id, wake(ops.step_state(step.id), config))
        ops.log("info", "approval requested", step.id, approvers=config.get("approvers"),
                message=config.get("message"), digest=_digest(ops.step_state(step.id)))
        _notify(ops, step, config, 0)

    def resume(self, ops: StepOps, step: Step, state: StepState) -> None:
        config = _config(ops, step)
        if state.approval_request is None and not _request(ops, step, config):  # (committed before digests)
            return
        ops.waits.park(step.id, wake(state, config))
        if state.notified is None:  # its outcome was never recorded
            _notify(ops, step, config, 0)
        for stage in range(1, state.escalations + 1):
            if stage not in state.escalations_notified:
                _notify(ops, step, config, stage)

    def scope_changed(self, ops: StepOps, step: Step) -> None:
        """A step succeeded while this one waits: what it shows may have changed."""
        if ops.step_state(step.id).status is AWAITING and not _request(ops, step, _config(ops, step)):
            ops.waits.unpark(step.id)

    def message(self, ops: StepOps, step: Step, message: StepMessage) -> None:
        if isinstance(message, NotificationSent):
            _notified(ops, step, message)
        elif isinstance(message, DecideApproval):
            self._decide(ops, step, message)
        elif isinstance(message, DelegateApproval):
            self._delegate(ops, step, message)
        else:
            super().message(ops, step, message)

    def _decide(self, ops: StepOps, step: Step, message: DecideApproval) -> None:
        state = ops.step_state(step.id)
        config = _config(ops, step)
        rules.check_decision(config, ops.execution, step.id, state, message,
                             required_separation=self.required_separation)
        decision = Approval(message.approver, message.decision, message.comment, ops.now, _digest(state))
        state = ops.set_step(step.id, approvals=(*state.approvals, decision))
        _record_decision(ops, step.id, state.attempts, decision, message.via)
        result = rules.outcome(config, rules.current_votes(state))
        if result is not None:
            ops.waits.unpark(step.id)
            if result == "approved":
                ops.succeed(step.id, output(state.approvals, approved=True))
            else:
                _reject(ops, step.id, state.approvals, f"rejected by {decision.approver}")
        ops.emit(fx.AnswerState(message.reply))

    def _delegate(self, ops: StepOps, step: Step, message: DelegateApproval) -> None:
        state = ops.step_state(step.id)
        rules.check_delegation(_config(ops, step), ops.execution, step.id, state, message,
                               required_separation=self.required_separation)
        handed = Delegation(message.delegator, message.to, message.reason, ops.now)
        ops.set_step(step.id, delegations=(*state.delegations, handed))
        ops.log("info", f"approval delegated to {message.to}", step.id, delegator=message.delegator)
        ops.audit("approval.delegated", message.delegator, step.id, reason=message.reason, to=message.to,
                  digest=_digest(state))
        ops.emit(fx.AnswerState(message.reply))

    def timeout(self, ops: StepOps, step: Step) -> None:
        state = ops.step_state(step.id)
        config = _config(ops, step)
        if _stage_due(state, config):
            _escalate(ops, step, state, config)
            return
        ops.waits.unpark(step.id)
        action = config.get("timeoutAction", "fail")
        approvals = state.approvals
        ops.audit("approval.timed_out", step_id=step.id, timeoutAction=action)
        if action == "approve":
            ops.succeed(step.id, output(approvals, approved=True, auto=True))
        elif action == "reject":
            _reject(ops, step.id, approvals, "approval timed out (timeoutAction reject)")
        else:
            ops.fail(step.id, StepError("timeout", f"no decision within {config.get('timeoutMs')} ms", False))

    def cancel(self, ops: StepOps, step: Step) -> None:
        ops.waits.unpark(step.id)


def output(approvals: Sequence[Approval], *, approved: bool, auto: bool = False) -> dict[str, Any]:
    return {
        "approved": approved,
        "approvals": [
            {"approver": a.approver, "decision": a.decision, "comment": a.comment, "at": format_time(a.at),
             "digest": a.digest}
            for a in approvals
        ],
        "autoApproved": auto,
    }


def notification(ops: StepOps, step: Step, config: Mapping[str, Any], stage: int = 0) -> dict[str, Any]:
    """The body of a notification of the step (its ``text``, ``link`` and decision links are
    added by the sender); ``stage`` n > 0: the n-th escalation, sent to its approvers."""
    state = ops.step_state(step.id)
    message = config.get("message")
    approvers = rules.approver_ids(rules.stages(config)[stage - 1] if stage else config)
    body = {
        "executionId": ops.execution.id, "stepId": step.id, "runbookId": ops.execution.runbook_id,
        "message": message if isinstance(message, str) else None, "approvers": approvers,
        "minApprovals": config.get("minApprovals", 1),
        "deadlineAt": format_time(state.deadline_at) if state.deadline_at else None,
        "digest": _digest(state),
    }
    if stage:
        body["escalation"] = stage
    return body


def wake(state: StepState, config: Mapping[str, Any]) -> datetime | None:
    """When the parked step must be looked at: its deadline, or its next escalation stage."""
    next_stage = _next_stage_at(state, config)
    times = [t for t in (state.deadline_at, next_stage) if t is not None]
    return min(times) if times else None


def _next_stage_at(state: StepState, config: Mapping[str, Any]) -> datetime | None:
    stages = rules.stages(config)
    if state.escalations >= len(stages) or state.started_at is None:
        return None
    after = stages[state.escalations].get("afterMs")
    return state.started_at + timedelta(milliseconds=after) if isinstance(after, int) else None


def _stage_due(state: StepState, config: Mapping[str, Any]) -> bool:
    """Whether the wake-up is for the next stage (one due at or after the deadline never comes)."""
    at = _next_stage_at(state, config)
    return at is not None and (state.deadline_at is None or at < state.deadline_at)


def _escalate(ops: StepOps, step: Step, state: StepState, config: Mapping[str, Any]) -> None:
    """Reach the next stage, and every later one already due (after a downtime)."""
    stages = rules.stages(config)
    while True:
        stage = stages[state.escalations]
        state = ops.set_step(step.id, escalations=state.escalations + 1)
        added = rules.approver_ids(stage)
        ops.log("info", f"approval escalated (stage {state.escalations})", step.id, approvers=added)
        ops.audit("approval.escalated", step_id=step.id, stage=state.escalations, approvers=added,
                  afterMs=stage.get("afterMs"))
        _notify(ops, step, config, state.escalations)
        next_at = _next_stage_at(state, config)
        if not _stage_due(state, config) or next_at is None or next_at > ops.now:
            break
    ops.waits.park(step.id, wake(state, config))


def _config(ops: StepOps, step: Step) -> Mapping[str, Any]:
    """The config rendered now (it rendered when the step began; the scope only grows)."""
    try:
        rendered: Mapping[str, Any] = render(step.config, ops.scope(step.id))
    except TemplateError:
        return step.config
    return rendered


def _digest(state: StepState) -> str | None:
    return state.approval_request.digest if state.approval_request is not None else None


def _request(ops: StepOps, step: Step, config: Mapping[str, Any]) -> bool:
    """Compute what the step shows; record it if its digest is new. False: it cannot be
    computed, and the step has failed."""
    try:
        request = request_of(config, ops.execution, ops.runbook, step.id)
    except (TypeError, ValueError) as exc:
        ops.fail(step.id, StepError("approval_request", f"what the approval shows has no canonical JSON: {exc}"))
        return False
    state = ops.step_state(step.id)
    previous = _digest(state)
    if previous == request.digest:
        return True
    ops.set_step(step.id, approval_request=request)
    data = {"digest": request.digest, "shown": request.shown}
    evidence_id = sha256_hex(["approval_request", ops.execution.id, step.id, state.attempts, request.digest,
                              ops.now.isoformat()])[:32]
    evidence_sha = sha256_hex(data)
    ops.add_records(evidence=(Evidence(evidence_id, ops.execution.id, step.id, "approval_request",
                                       evidence_sha, data, ops.now),))
    ops.audit("approval.requested", step_id=step.id, digest=request.digest, previousDigest=previous,
              evidence={"id": evidence_id, "sha256": evidence_sha})
    if previous is not None:
        ops.log("info", "what the approval shows changed: decisions on the earlier digest no longer count",
                step.id, digest=request.digest, previousDigest=previous)
    return True


def _record_decision(ops: StepOps, step_id: str, attempt: int, decision: Approval, via: str | None) -> None:
    """The decision's evidence (hashed), log line and audit entry, each with its digest."""
    execution_id = ops.execution.id
    data = {"approver": decision.approver, "decision": decision.decision, "comment": decision.comment,
            "digest": decision.digest}
    evidence_id = sha256_hex(["approval", execution_id, step_id, attempt, decision.approver,
                              decision.at.isoformat()])[:32]
    evidence_sha = sha256_hex(data)
    ops.add_records(evidence=(Evidence(evidence_id, execution_id, step_id, "approval_decision",
                                       evidence_sha, data, decision.at),))
    ops.log("info", f"approval decision: {decision.decision}", step_id, approver=decision.approver)
    extra: dict[str, Any] = {"via": via} if via else {}
    extra["evidence"] = {"id": evidence_id, "sha256": evidence_sha}  # the ledger's export carries it
    ops.audit("approval.decided", decision.approver, step_id, reason=decision.comment, decision=decision.decision,
              digest=decision.digest, **extra)


def _notify(ops: StepOps, step: Step, config: Mapping[str, Any], stage: int) -> None:
    """Send a notification once this commits: its target as written (the shell renders it
    with the secrets), the body rendered here. Stage n > 0 goes to the stage's ``notify``,
    else the step's; nothing is sent without one."""
    target = step.config.get("notify")
    if stage:
        written = step.config.get("escalation")
        own = written[stage - 1].get("notify") if isinstance(written, list) else None
        target = own if isinstance(own, Mapping) else target
    if not isinstance(target, Mapping):
        return
    ops.emit(fx.Notify(step.id, ops.step_state(step.id).attempts, dict(target), ops.scope(step.id),
                       notification(ops, step, config, stage), step.retry_policy, stage))


def _notified(ops: StepOps, step: Step, message: NotificationSent) -> None:
    ops.add_records(message.logs, message.evidence)
    state = ops.step_state(step.id)
    if state.status is AWAITING and state.attempts == message.attempt:
        if message.stage:
            ops.set_step(step.id, escalations_notified=(*state.escalations_notified, message.stage))
        else:
            ops.set_step(step.id, notified="sent" if message.error is None else "failed")
    stage: dict[str, Any] = {"stage": message.stage} if message.stage else {}
    if message.error is None:
        ops.log("info", "approvers notified", step.id, **stage)
        ops.audit("approval.notified", step_id=step.id, **stage)
    else:
        ops.log("warning", f"notification failed: {message.error.message}", step.id, code=message.error.code, **stage)
        ops.audit("approval.notification_failed", step_id=step.id, error=message.error.message,
                  code=message.error.code, **stage)


def _reject(ops: StepOps, step_id: str, approvals: Sequence[Approval], why: str) -> None:
    ops.set_step(step_id, output=output(approvals, approved=False))
    ops.fail(step_id, StepError("rejected", why, False), StepStatus.REJECTED)


def spec(required_separation: bool = False) -> KindSpec:
    """The spec of the human-approval type (``required_separation``: the runtime's
    ``REQUIRE_SEPARATION_OF_DUTIES``)."""
    return KindSpec(ApprovalKind(required_separation), ignoring_types(check_config),
                    config_aliases=("approvalConfig",), check_steps=check_shown)


SPEC = spec()
