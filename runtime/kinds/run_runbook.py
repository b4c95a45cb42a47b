"""run-runbook: a step that runs another runbook as a child execution and waits for its end.

The child is an ordinary execution in the same tenant, with ``parentExecutionId`` and
``parentStepId``; its id comes from the parent, the step and the step's attempt, so starting
it again (after a restart) finds the same child instead of making a second one. The step
holds no task and no slot of ``maxConcurrentSteps``: it parks until the child's end arrives
as a ``ChildFinished`` message (the runtime sends one when an execution with a parent
finishes), and succeeds with the child's output when the child completed; a child that
failed, was cancelled or timed out fails the step (``child_failed``, the child's error in the
message). A parent that ends (cancelled, failed, timed out) cancels its child; a paused
parent does not pause it. More than ``MAX_DEPTH`` nested children fail the step
(``depth_limit``); a child the store does not admit (``MAX_DESCENDANTS`` under its root, or
its tenant's cap; see ``runtime.api.starting``) fails it ``fanout_limit``. The step's
``timeoutMs`` bounds the wait (``timeout``; the child is cancelled).

Config: ``runbookId`` (templated), ``version``, ``input`` (templated; a secret cannot be
passed: the child uses ``${secret.NAME}`` itself), ``context`` (added to the parent's
``userId``, ``legalBasis`` and ``reason``).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from runtime.core import effects as fx
from runtime.core.kinds import StepOps
from runtime.core.messages import ChildFinished, StepMessage
from runtime.kinds.base import KindDefaults, positive_int, unknown_fields
from runtime.kinds.spec import KindSpec, ignoring_types
from runtime.language.templates import TemplateError, render, secret_names
from runtime.model import Step, StepError, StepState, StepStatus
from runtime.model.errors import Problem
from runtime.model.wire import sha256_hex

MAX_DEPTH = 10
NOT_STARTED = "not started"  # the status of a ChildFinished for a child that could not start
_FIELDS = frozenset({"runbookId", "version", "input", "context"})
_INHERITED = ("userId", "legalBasis", "reason")


def check_config(config: Mapping[str, Any], path: str) -> list[Problem]:
    problems = unknown_fields(config, _FIELDS, path)
    runbook_id = config.get("runbookId")
    if not isinstance(runbook_id, str) or not runbook_id.strip():
        problems.append(Problem(f"{path}.runbookId", "required: the id of the runbook to run"))
    if "version" in config and not positive_int(config["version"]):
        problems.append(Problem(f"{path}.version", "must be a positive integer"))
    if "context" in config and not isinstance(config["context"], Mapping):
        problems.append(Problem(f"{path}.context", "must be a mapping (object)"))
    for name in secret_names(dict(config)):
        problems.append(Problem(path, f"'${{secret.{name}}}' cannot be passed to a child runbook "
                                      "(its steps can use the secret themselves)"))
    return problems


def child_id(parent_id: str, step_id: str, attempt: int) -> str:
    """The id of the child of this attempt of the step: the same every time it is asked."""
    return sha256_hex(["child", parent_id, step_id, attempt])[:32]


def child_error(message: ChildFinished) -> StepError:
    if message.status == NOT_STARTED and message.error is not None:
        return message.error  # why it could not start (``fanout_limit``, ``child_failed``)
    why = f": {message.error.message}" if message.error is not None else ""
    return StepError("child_failed", f"child execution {message.child_id} {message.status}{why}", False)


class RunRunbookKind(KindDefaults):
    def begin(self, ops: StepOps, step: Step) -> None:
        state = ops.step_state(step.id)
        if ops.execution.depth >= MAX_DEPTH:  # no child starts, so the step names none
            ops.mark_started(step, StepStatus.RUNNING, child_execution_id=None, deadline_at=None, approvals=())
            ops.fail(step.id, StepError("depth_limit", f"runbooks nested deeper than {MAX_DEPTH} levels", False))
            return
        child = child_id(ops.execution.id, step.id, state.attempts + 1)
        deadline = ops.now + timedelta(milliseconds=step.timeout_ms) if step.timeout_ms else None
        ops.mark_started(step, StepStatus.RUNNING, child_execution_id=child, deadline_at=deadline, approvals=())
        if self._start(ops, step, child):
            ops.waits.park(step.id, deadline)
            ops.log("info", "child execution started", step.id, childExecutionId=child)

    def resume(self, ops: StepOps, step: Step, state: StepState) -> None:
        ops.waits.park(step.id, state.deadline_at)
        if state.child_execution_id is not None:  # it may have ended while nobody listened: ask again
            self._start(ops, step, state.child_execution_id)

    def _start(self, ops: StepOps, step: Step, child: str) -> bool:
        try:
            config = render(step.config, ops.scope(step.id))
        except TemplateError as exc:
            ops.fail(step.id, StepError("template", str(exc), False))
            return False
        parent = ops.execution.context
        context = {k: parent[k] for k in _INHERITED if k in parent}
        context.update(config.get("context") or {})
        context["tenantId"] = ops.execution.tenant_id  # always the parent's tenant
        attempt = ops.step_state(step.id).attempts
        root = ops.execution.root_execution_id or ops.execution.id
        ops.emit(fx.StartChild(step.id, attempt, child, str(config["runbookId"]), config.get("version"),
                               config.get("input", {}), context, ops.execution.depth + 1, root))
        return True

    def message(self, ops: StepOps, step: Step, message: StepMessage) -> None:
        if not isinstance(message, ChildFinished):
            super().message(ops, step, message)
            return
        state = ops.step_state(step.id)
        if state.status is not StepStatus.RUNNING or state.child_execution_id != message.child_id:
            ops.emit(fx.Note(f"execution {ops.execution.id}: dropped the end of child {message.child_id} "
                             f"(step '{step.id}' no longer waits for it)"))
            return
        ops.waits.unpark(step.id)
        if message.status == NOT_STARTED:  # refused by the store: no such child exists
            ops.set_step(step.id, child_execution_id=None)
        if message.status == "completed":
            ops.succeed(step.id, message.output)
        else:
            ops.fail(step.id, child_error(message))

    def timeout(self, ops: StepOps, step: Step) -> None:
        ops.waits.unpark(step.id)
        child = ops.step_state(step.id).child_execution_id
        if child is not None:
            ops.emit(fx.CancelChild(child, f"step '{step.id}' of execution {ops.execution.id} timed out"))
        ops.fail(step.id, StepError("timeout", f"the child did not finish within {step.timeout_ms} ms", False))

    def cancel(self, ops: StepOps, step: Step) -> None:
        ops.waits.unpark(step.id)
        child = ops.step_state(step.id).child_execution_id
        if child is not None:
            ops.emit(fx.CancelChild(child, f"parent execution {ops.execution.id} ended"))


RUN_RUNBOOK = RunRunbookKind()
SPEC = KindSpec(RUN_RUNBOOK, ignoring_types(check_config))
