"""conditional: config checks, the decision, and the kind: decided the moment the step is
ready (no task, no slot); the targets of the branch not taken are skipped.

Its branch targets must be steps other than itself, and each waits for it (its spec's
``check_steps`` and ``decides``), whatever its ``dependsOn`` says.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from runtime.core.kinds import StepOps
from runtime.core.why import condition, note
from runtime.kinds.base import KindDefaults
from runtime.kinds.spec import KindSpec, ignoring_types
from runtime.language.conditions import PatternError, Trace, condition_problems, evaluate
from runtime.model import Step, StepError, StepStatus
from runtime.model.errors import Problem
from runtime.model.suggest import unknown_field

_FIELDS = {"condition", "trueBranch", "falseBranch"}
_BRANCHES = ("trueBranch", "falseBranch")


def check_config(config: Mapping[str, Any], path: str) -> list[Problem]:
    problems = [unknown_field(path, key, _FIELDS) for key in config if key not in _FIELDS]
    if "condition" not in config:
        problems.append(Problem(f"{path}.condition", "required: a condition"))
    else:
        problems += condition_problems(config["condition"], f"{path}.condition")
    for key in _BRANCHES:
        value = config.get(key)
        if value is not None and not (
            isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))
        ):
            problems.append(Problem(f"{path}.{key}", "must be a step id or a list of step ids"))
    return problems


def check_targets(config: Mapping[str, Any], path: str, step_id: str | None, ids: Collection[str]) -> list[Problem]:
    """Each branch target is a step, and not the conditional itself."""
    problems = []
    for key in _BRANCHES:
        for target in branch(config.get(key)):
            if target not in ids:
                problems.append(Problem(f"{path}.{key}", f"branch target '{target}' is not a step"))
            elif target == step_id:
                problems.append(Problem(f"{path}.{key}", "a conditional cannot branch to itself"))
    return problems


def targets(config: Mapping[str, Any]) -> list[str]:
    """Every step either branch names (they wait for the conditional)."""
    true_branch, false_branch = branches(config)
    return [*true_branch, *false_branch]


def branches(config: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    return branch(config.get("trueBranch")), branch(config.get("falseBranch"))


def branch(value: Any) -> list[str]:
    """A branch is a step id or a list of them (what is neither names no step)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def decide(config: Mapping[str, Any], scope: Mapping[str, Any],
           trace: Trace | None = None) -> tuple[bool, list[str], list[str]]:
    """(result, the branch taken, the branch not taken); the comparisons made go to ``trace``."""
    true_branch, false_branch = branches(config)
    result = evaluate(config["condition"], scope, trace)
    return (result, true_branch, false_branch) if result else (result, false_branch, true_branch)


class ConditionalKind(KindDefaults):
    def begin(self, ops: StepOps, step: Step) -> None:
        ops.mark_started(step, StepStatus.RUNNING)
        trace: Trace = []
        try:
            result, taken, not_taken = decide(step.config, ops.scope(step.id), trace)
        except PatternError as exc:
            ops.fail(step.id, StepError(exc.code, f"condition: {exc}", False))
            return
        note(ops, step.id, condition={**condition(trace, result), "branch": taken})
        ops.succeed(step.id, {"result": result, "branch": taken})
        for target in not_taken:
            if target not in taken and ops.step_state(target).status is StepStatus.PENDING:
                ops.skip(target, f"branch not taken by '{step.id}'", branchOf=step.id)

    def decides(self, step: Step) -> Sequence[str]:
        return targets(step.config)


CONDITIONAL = ConditionalKind()
SPEC = KindSpec(CONDITIONAL, ignoring_types(check_config), check_steps=check_targets, decides=targets)
