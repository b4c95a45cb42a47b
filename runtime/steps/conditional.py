"""conditional: config checks and the decision (made inline by the ExecutionActor)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from runtime.conditions import condition_problems, evaluate
from runtime.errors import Problem

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
