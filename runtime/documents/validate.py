"""Runbook document validation: every problem at once, each with its path.

``validate_document`` checks a loaded document (a dict) against the document rules (ids,
dependencies, cycles, types, templates, bounds, size) and the config rules of each step
type, and returns the list of problems. A value JSON cannot hold is refused first (its path
named), since every other check assumes plain JSON. ``build_runbook``
validates and builds the immutable ``Runbook``; ``effective_dependencies`` is the one place
that applies the default-dependency rules, for validation and scheduling alike.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from runtime.documents.triggers import check_triggers
from runtime.kinds.base import TypeLookup, check_retry_policy
from runtime.language.conditions import condition_problems
from runtime.language.input_schema import schema_problems
from runtime.language.templates import SECRET_ROOT, template_paths, template_problems
from runtime.model import RetryPolicy, Runbook, Step
from runtime.model.errors import Problem, ValidationError
from runtime.model.jsonsafe import first_problem
from runtime.model.limits import (
    MAX_CONCURRENCY,
    count_problem,
    duration_problem,
)
from runtime.model.wire import MAX_DOCUMENT_BYTES, canonical_json, from_json
from runtime.security.secrets import NAME as SECRET_NAME

ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # fullmatch: "$" would allow a final newline
RESERVED_IDS = frozenset({"input", "context", "execution", "executionId", "item", "index", "secret"})
SCOPE_ROOTS = frozenset(RESERVED_IDS | {"stepId", "tenantId", "previous"})
MAX_STEPS = 500

_RUNBOOK_FIELDS = {
    "id", "name", "description", "timeoutMs", "maxConcurrentSteps", "inputSchema",
    "requireLegalBasis", "output", "steps", "version", "tags", "metadata", "triggers",
}
_STEP_FIELDS = {
    "id", "name", "description", "type", "dependsOn", "when", "config", "approvalConfig",
    "retryPolicy", "timeoutMs", "continueOnError",
}


def validate_document(doc: Any, types: TypeLookup) -> list[Problem]:
    """Every problem of the document, in document order."""
    if not isinstance(doc, Mapping):
        return [Problem("$", "a runbook document must be a mapping (object)")]
    not_json = first_problem(dict(doc), "")
    if not_json is not None:  # every other check assumes plain JSON
        return [Problem(not_json.path or "$", f"not JSON: {not_json.message}")]
    problems: list[Problem] = []
    if len(canonical_json(doc).encode()) > MAX_DOCUMENT_BYTES:
        problems.append(Problem("$", "document is larger than 1 MiB"))
    problems += _check_header(doc)
    steps = doc.get("steps")
    if not isinstance(steps, list) or not steps:
        problems.append(Problem("steps", "required: a list of 1 to 500 steps"))
        return problems
    if len(steps) > MAX_STEPS:
        problems.append(Problem("steps", f"at most {MAX_STEPS} steps (found {len(steps)})"))
    ids = _check_ids(steps, problems)
    for index, step in enumerate(steps):
        if isinstance(step, Mapping):
            problems += _check_step(step, f"steps[{index}]", ids, types)
    problems += _check_cycles([s for s in steps if isinstance(s, Mapping) and isinstance(s.get("id"), str)
                               and s["id"] in ids], ids)
    return problems


def _check_header(doc: Mapping[str, Any]) -> list[Problem]:
    problems = [Problem(key, f"unknown field '{key}'") for key in doc if key not in _RUNBOOK_FIELDS]
    runbook_id = doc.get("id")
    if not isinstance(runbook_id, str) or not ID_PATTERN.fullmatch(runbook_id):
        problems.append(Problem("id", "required: a string matching [A-Za-z0-9][A-Za-z0-9._-]{0,127}"))
    for key in ("name", "description"):
        if key in doc and not isinstance(doc[key], str):
            problems.append(Problem(key, "must be a string"))
    if "timeoutMs" in doc and (problem := duration_problem(doc["timeoutMs"])):
        problems.append(Problem("timeoutMs", problem))
    if "maxConcurrentSteps" in doc and (problem := count_problem(doc["maxConcurrentSteps"], 1, MAX_CONCURRENCY)):
        problems.append(Problem("maxConcurrentSteps", problem))
    if "requireLegalBasis" in doc and not isinstance(doc["requireLegalBasis"], bool):
        problems.append(Problem("requireLegalBasis", "must be true or false"))
    if "inputSchema" in doc:
        problems += schema_problems(doc["inputSchema"])
    if "output" in doc:
        problems += template_problems(doc["output"], "output")
    if "triggers" in doc:
        problems += check_triggers(doc["triggers"])
    return problems


def _check_ids(steps: Sequence[Any], problems: list[Problem]) -> set[str]:
    seen: set[str] = set()
    for index, step in enumerate(steps):
        path = f"steps[{index}]"
        if not isinstance(step, Mapping):
            problems.append(Problem(path, "a step must be a mapping (object)"))
            continue
        step_id = step.get("id")
        if not isinstance(step_id, str) or not ID_PATTERN.fullmatch(step_id):
            problems.append(Problem(f"{path}.id", "required: a string matching [A-Za-z0-9][A-Za-z0-9._-]{0,127}"))
        elif step_id in RESERVED_IDS:
            problems.append(Problem(f"{path}.id", f"'{step_id}' is reserved"))
        elif step_id in seen:
            problems.append(Problem(f"{path}.id", f"duplicate step id '{step_id}'"))
        else:
            seen.add(step_id)
    return seen


def _check_step(step: Mapping[str, Any], path: str, ids: set[str], types: TypeLookup) -> list[Problem]:
    problems = [Problem(f"{path}.{key}", f"unknown field '{key}'") for key in step if key not in _STEP_FIELDS]
    problems += _check_common(step, path, ids)
    step_type = step.get("type")
    if not isinstance(step_type, str):
        problems.append(Problem(f"{path}.type", "required: a step type"))
        return problems
    known = types.get(step_type)
    if known is None:
        problems.append(Problem(f"{path}.type", f"unknown step type '{step_type}' (known: {', '.join(types.names())})"))
        return problems
    config_key = "approvalConfig" if step_type == "human-approval" and "approvalConfig" in step else "config"
    config = step.get(config_key, {})
    if not isinstance(config, Mapping):
        return [*problems, Problem(f"{path}.{config_key}", "must be a mapping (object)")]
    config_path = f"{path}.{config_key}"
    problems += known.check_config(config, config_path, types)
    problems += template_problems(dict(config), config_path)
    problems += _check_references(config, config_path, ids)
    problems += _check_branch_targets(step, config, config_path, ids)
    return problems


def _check_common(step: Mapping[str, Any], path: str, ids: set[str]) -> list[Problem]:
    problems: list[Problem] = []
    depends = step.get("dependsOn")
    if depends is not None:
        if not isinstance(depends, list) or not all(isinstance(d, str) for d in depends):
            problems.append(Problem(f"{path}.dependsOn", "must be a list of step ids"))
        else:
            problems += [Problem(f"{path}.dependsOn", f"unknown step '{d}'") for d in depends if d not in ids]
    if "when" in step:
        problems += condition_problems(step["when"], f"{path}.when")
    if "timeoutMs" in step and (problem := duration_problem(step["timeoutMs"])):
        problems.append(Problem(f"{path}.timeoutMs", problem))
    for key in ("name", "description"):
        if key in step and not isinstance(step[key], str):
            problems.append(Problem(f"{path}.{key}", "must be a string"))
    if "approvalConfig" in step and not isinstance(step["approvalConfig"], Mapping):
        problems.append(Problem(f"{path}.approvalConfig", "must be a mapping (object)"))
    if "continueOnError" in step and not isinstance(step["continueOnError"], bool):
        problems.append(Problem(f"{path}.continueOnError", "must be true or false"))
    if "retryPolicy" in step:
        problems += check_retry_policy(step["retryPolicy"], f"{path}.retryPolicy")
    return problems


def _check_references(config: Mapping[str, Any], path: str, ids: set[str]) -> list[Problem]:
    problems = []
    for ref in template_paths(dict(config)):
        parts = ref.split(".")
        root = parts[0]
        if root == SECRET_ROOT:
            if len(parts) != 2 or not SECRET_NAME.match(parts[1]):
                problems.append(Problem(path, f"template '${{{ref}}}': a secret is '${{secret.NAME}}' "
                                              "(NAME: letters, digits, '_' and '-')"))
            continue
        prefixes = {".".join(parts[:n]) for n in range(1, len(parts) + 1)}
        if root not in SCOPE_ROOTS and not prefixes & ids:
            problems.append(Problem(path, f"template '${{{ref}}}' refers to unknown step '{root}'"))
    return problems


def _check_branch_targets(step: Mapping[str, Any], config: Mapping[str, Any], path: str, ids: set[str]) -> list[Problem]:
    if step.get("type") != "conditional":
        return []
    problems = []
    for key in ("trueBranch", "falseBranch"):
        for target in branch_list(config.get(key)):
            if target not in ids:
                problems.append(Problem(f"{path}.{key}", f"branch target '{target}' is not a step"))
            elif target == step.get("id"):
                problems.append(Problem(f"{path}.{key}", "a conditional cannot branch to itself"))
    return problems


def branch_list(value: Any) -> list[str]:
    """A branch is a step id or a list of them."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def effective_dependencies(steps: Sequence[Mapping[str, Any]]) -> dict[str, list[str]]:
    """The dependencies of every step after the defaults (the step before; a branch target
    depends on its conditional)."""
    branch_owner: dict[str, str] = {}
    for step in steps:
        if step.get("type") == "conditional":
            config = step.get("config")
            if not isinstance(config, Mapping):
                continue
            for key in ("trueBranch", "falseBranch"):
                for target in branch_list(config.get(key)):
                    branch_owner.setdefault(target, step["id"])
    deps: dict[str, list[str]] = {}
    for index, step in enumerate(steps):
        explicit = step.get("dependsOn")
        owner = branch_owner.get(step["id"])
        if explicit is not None:
            # a branch target always waits for the conditional that decides it
            deps[step["id"]] = list(explicit) + ([owner] if owner and owner not in explicit else [])
        elif owner is not None:
            deps[step["id"]] = [owner]
        else:
            deps[step["id"]] = [steps[index - 1]["id"]] if index else []
    return deps


def _check_cycles(steps: Sequence[Mapping[str, Any]], ids: set[str]) -> list[Problem]:
    clean = [{**s, "dependsOn": _known(s.get("dependsOn"), ids)} if "dependsOn" in s else s for s in steps]
    deps = effective_dependencies(clean)
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in deps[node]:
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep):])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for step in steps:
        if step["id"] not in state:
            visit(step["id"])
    return [Problem("steps", "dependency cycle: " + " -> ".join([*cycle, cycle[0]])) for cycle in cycles]


def _known(depends: Any, ids: set[str]) -> list[str]:
    return [d for d in depends if isinstance(d, str) and d in ids] if isinstance(depends, list) else []


def build_runbook(doc: Mapping[str, Any], types: TypeLookup, default_retries: int) -> Runbook:
    """Validate ``doc`` and build its Runbook (version 0: the store assigns versions)."""
    problems = validate_document(doc, types)
    if problems:
        raise ValidationError(problems, title="invalid runbook")
    deps = effective_dependencies(doc["steps"])
    steps = tuple(_build_step(raw, tuple(deps[raw["id"]]), default_retries) for raw in doc["steps"])
    fields = {k: v for k, v in doc.items() if k not in ("steps", "version", "tags", "metadata")}
    header = from_json({**fields, "steps": []}, Runbook)
    import attrs

    return attrs.evolve(header, steps=steps, document=dict(doc))


def _build_step(raw: Mapping[str, Any], deps: tuple[str, ...], default_retries: int) -> Step:
    policy = RetryPolicy(max_retries=default_retries)
    if "retryPolicy" in raw:
        policy = from_json({**_policy_json(policy), **raw["retryPolicy"]}, RetryPolicy)
    config = raw.get("approvalConfig") if raw["type"] == "human-approval" and "approvalConfig" in raw else raw.get("config")
    return Step(
        id=raw["id"], type=raw["type"], config=dict(config or {}), depends_on=deps,
        when=raw.get("when"), retry_policy=policy, timeout_ms=raw.get("timeoutMs"),
        continue_on_error=raw.get("continueOnError", False), name=raw.get("name"),
        description=raw.get("description"),
    )


def _policy_json(policy: RetryPolicy) -> dict[str, Any]:
    from runtime.model.wire import to_json

    result: dict[str, Any] = to_json(policy)
    return result
