"""conditional: config checks, the decision, and the kind: decided the moment the step is
ready (no task, no slot); the targets of the branch not taken are skipped."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from runtime.core.kinds import StepOps
from runtime.kinds.base import KindDefaults
from runtime.language.conditions import PatternError, condition_problems, evaluate
from runtime.model import Step, StepError, StepStatus
from runtime.model.errors import Problem

_FIELDS = {"condition", "trueBranch", "falseBranch"}


def check_config(config: Mapping[str, Any], path: str) -> list[Problem]:
    problems = [Problem(f"{path}.{key}", f"unknown field '{key}'") for key in config if key not in _FIELDS]
    if "condition" not in config:
        problems.append(Problem(f"{path}.condition", "required: a condition"))
    else:
        problems += condition_problems(config["condition"], f"{path}.condition")
    for key in ("trueBranch", "falseBranch"):
        value = config.get(key)
        if value is not None and not (
            isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))
        ):
            problems.append(Problem(f"{path}.{key}", "must be a step id or a list of step ids"))
    return problems


def branches(config: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    return _ids(config.get("trueBranch")), _ids(config.get("falseBranch"))


def decide(config: Mapping[str, Any], scope: Mapping[str, Any]) -> tuple[bool, list[str], list[str]]:
    """(result, the branch taken, the branch not taken)."""
    true_branch, false_branch = branches(config)
    result = evaluate(config["condition"], scope)
    return (result, true_branch, false_branch) if result else (result, false_branch, true_branch)


def _ids(value: Any) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


class ConditionalKind(KindDefaults):
    name = "conditional"

    def begin(self, ops: StepOps, step: Step) -> None:
        ops.mark_started(step, StepStatus.RUNNING)
        try:
            result, taken, not_taken = decide(step.config, ops.scope(step.id))
        except PatternError as exc:
            ops.fail(step.id, StepError(exc.code, f"condition: {exc}", False))
            return
        ops.succeed(step.id, {"result": result, "branch": taken})
        for target in not_taken:
            if target not in taken and ops.step_state(target).status is StepStatus.PENDING:
                ops.skip(target, f"branch not taken by '{step.id}'")

    def decides(self, step: Step) -> Sequence[str]:
        true_branch, false_branch = branches(step.config)
        return [*true_branch, *false_branch]


CONDITIONAL = ConditionalKind()
