"""Runbook document validation: every problem at once, each with its path.

``validate_document`` checks a loaded document (a dict) against the document rules (ids,
dependencies, cycles, types, templates, bounds, size) and the rules of each step type, and
returns the list of problems. A value JSON cannot hold is refused first (its path named),
since every other check assumes plain JSON. What a type adds (where its config is written,
its config check, the steps its config names) comes from its spec
(``runtime.kinds.spec.KindSpec``): no type is known here by name. ``build_runbook``
validates and builds the immutable ``Runbook``; ``effective_dependencies`` is the one place
that applies the default-dependency rules, for validation and scheduling alike.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from runtime.documents.triggers import TRIGGER_DEFAULTS, TriggerLimits, check_triggers
from runtime.kinds.base import check_retry_policy
from runtime.kinds.spec import KindSpec, TypeLookup
from runtime.language.conditions import condition_problems
from runtime.language.input_schema import schema_problems
from runtime.language.templates import SECRET_ROOT, template_paths, template_problems
from runtime.model import RetryPolicy, Runbook, Step
from runtime.model.canonical import canonical_sha256
from runtime.model.errors import Problem, ValidationError
from runtime.model.jsonsafe import first_problem
from runtime.model.limits import (
    MAX_CONCURRENCY,
    count_problem,
    duration_problem,
)
from runtime.model.suggest import did_you_mean, unknown_field
from runtime.model.wire import MAX_DOCUMENT_BYTES, canonical_json, from_json, to_json
from runtime.security.secrets import NAME as SECRET_NAME

ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # fullmatch: "$" would allow a final newline
RESERVED_IDS = frozenset({"input", "context", "execution", "executionId", "item", "index", "secret"})
SCOPE_ROOTS = frozenset(RESERVED_IDS | {"stepId", "tenantId", "previous"})
MAX_STEPS = 500

_RUNBOOK_FIELDS = {
    "id", "name", "description", "timeoutMs", "maxConcurrentSteps", "inputSchema",
    "requireLegalBasis", "output", "steps", "version", "tags", "metadata", "triggers",
}
_STEP_FIELDS = frozenset({
    "id", "name", "description", "type", "dependsOn", "when", "config", "retryPolicy", "timeoutMs",
    "continueOnError",
})  # and the fields a type may write its config under instead of ``config`` (``config_aliases``)


def validate_document(doc: Any, types: TypeLookup, triggers: TriggerLimits = TRIGGER_DEFAULTS) -> list[Problem]:
    """Every problem of the document, in document order, each once and with the id of the step
    it is in (``triggers``: the bounds of its triggers)."""
    problems = _problems(doc, types, triggers)
    if isinstance(doc, Mapping) and isinstance(doc.get("steps"), list):
        problems = [_in_step(problem, doc["steps"]) for problem in problems]
    return list(dict.fromkeys(problems))  # the same template twice in a step: one problem


_STEP_PATH = re.compile(r"steps\[(\d+)\]")


def _in_step(problem: Problem, steps: list[Any]) -> Problem:
    """The problem with the id of the step its path is in (``steps[N]...``), when it has one."""
    found = _STEP_PATH.match(problem.path)
    if found is None or int(found[1]) >= len(steps) or not isinstance(steps[int(found[1])], Mapping):
        return problem
    step_id = steps[int(found[1])].get("id")
    return attrs.evolve(problem, step_id=step_id) if isinstance(step_id, str) and step_id else problem


def _problems(doc: Any, types: TypeLookup, triggers: TriggerLimits) -> list[Problem]:
    if not isinstance(doc, Mapping):
        return [Problem("$", "a runbook document must be a mapping (object)")]
    not_json = first_problem(dict(doc), "")
    if not_json is not None:  # every other check assumes plain JSON
        return [Problem(not_json.path or "$", f"not JSON: {not_json.message}")]
    problems: list[Problem] = []
    if len(canonical_json(doc).encode()) > MAX_DOCUMENT_BYTES:
        problems.append(Problem("$", "document is larger than 1 MiB"))
    problems += _check_header(doc, triggers)
    steps = doc.get("steps")
    if not isinstance(steps, list) or not steps:
        problems.append(Problem("steps", "required: a list of 1 to 500 steps"))
        return problems
    if len(steps) > MAX_STEPS:
        problems.append(Problem("steps", f"at most {MAX_STEPS} steps (found {len(steps)})"))
    ids = _check_ids(steps, problems)
    aliases = _config_aliases(types)
    for index, step in enumerate(steps):
        if isinstance(step, Mapping):
            problems += _check_step(step, f"steps[{index}]", ids, types, aliases)
    problems += _check_cycles([s for s in steps if isinstance(s, Mapping) and isinstance(s.get("id"), str)
                               and s["id"] in ids], ids, types)
    return problems


def _config_aliases(types: TypeLookup) -> tuple[str, ...]:
    """Every field a known type may write its config under instead of ``config``."""
    specs = [_spec(types, name) for name in types.names()]
    return tuple(dict.fromkeys(alias for spec in specs if spec is not None for alias in spec.config_aliases))


def _spec(types: TypeLookup, name: Any) -> KindSpec | None:
    known = types.get(name) if isinstance(name, str) else None
    return known.spec if known is not None else None


def _check_header(doc: Mapping[str, Any], triggers: TriggerLimits) -> list[Problem]:
    problems = [unknown_field("", key, _RUNBOOK_FIELDS) for key in doc if key not in _RUNBOOK_FIELDS]
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
        problems += check_triggers(doc["triggers"], limits=triggers)
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


def _check_step(step: Mapping[str, Any], path: str, ids: set[str], types: TypeLookup,
                aliases: tuple[str, ...]) -> list[Problem]:
    problems = [unknown_field(path, key, (*_STEP_FIELDS, *aliases)) for key in step
                if key not in _STEP_FIELDS and key not in aliases]
    problems += _check_common(step, path, ids, aliases)
    step_type = step.get("type")
    if not isinstance(step_type, str):
        problems.append(Problem(f"{path}.type", "required: a step type"))
        return problems
    known = types.get(step_type)
    if known is None:
        problems.append(Problem(f"{path}.type", f"unknown step type '{step_type}'{did_you_mean(step_type, types.names())} "
                                                f"(known: {', '.join(types.names())})"))
        return problems
    return problems + _check_config(step, path, ids, known.spec, types)


def _check_config(step: Mapping[str, Any], path: str, ids: set[str], spec: KindSpec,
                  types: TypeLookup) -> list[Problem]:
    field = spec.config_field(step)
    config, config_path = step.get(field, {}), f"{path}.{field}"
    if not isinstance(config, Mapping):
        return [Problem(config_path, "must be a mapping (object)")]
    step_id = step.get("id")
    return [
        *spec.check_config(config, config_path, types),
        *template_problems(dict(config), config_path),
        *_check_references(config, config_path, ids),
        *spec.check_steps(config, config_path, step_id if isinstance(step_id, str) else None, ids),
    ]


def _check_common(step: Mapping[str, Any], path: str, ids: set[str], aliases: tuple[str, ...]) -> list[Problem]:
    problems: list[Problem] = []
    depends = step.get("dependsOn")
    if depends is not None:
        if not isinstance(depends, list) or not all(isinstance(d, str) for d in depends):
            problems.append(Problem(f"{path}.dependsOn", "must be a list of step ids"))
        else:
            problems += [Problem(f"{path}.dependsOn", f"unknown step '{d}'{did_you_mean(d, ids)}")
                         for d in depends if d not in ids]
    if "when" in step:
        problems += condition_problems(step["when"], f"{path}.when")
    if "timeoutMs" in step and (problem := duration_problem(step["timeoutMs"])):
        problems.append(Problem(f"{path}.timeoutMs", problem))
    for key in ("name", "description"):
        if key in step and not isinstance(step[key], str):
            problems.append(Problem(f"{path}.{key}", "must be a string"))
    problems += [Problem(f"{path}.{key}", "must be a mapping (object)") for key in aliases
                 if key in step and not isinstance(step[key], Mapping)]
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
            problems.append(Problem(path, f"template '${{{ref}}}' refers to unknown step '{root}'"
                                          f"{did_you_mean(root, (*SCOPE_ROOTS, *ids))}"))
    return problems


def effective_dependencies(steps: Sequence[Mapping[str, Any]], types: TypeLookup) -> dict[str, list[str]]:
    """The dependencies of every step after the defaults: the step before; a step another
    decides (a branch target) depends on the step that decides it."""
    deciders = _deciders(steps, types)
    deps: dict[str, list[str]] = {}
    for index, step in enumerate(steps):
        explicit = step.get("dependsOn")
        owner = deciders.get(step["id"])
        if explicit is not None:
            # a decided step always waits for the step that decides it
            deps[step["id"]] = list(explicit) + ([owner] if owner and owner not in explicit else [])
        elif owner is not None:
            deps[step["id"]] = [owner]
        else:
            deps[step["id"]] = [steps[index - 1]["id"]] if index else []
    return deps


def _deciders(steps: Sequence[Mapping[str, Any]], types: TypeLookup) -> dict[str, str]:
    """Each step that another decides -> the first step that decides it."""
    deciders: dict[str, str] = {}
    for step in steps:
        spec = _spec(types, step.get("type"))
        config = step.get(spec.config_field(step)) if spec is not None else None
        if spec is not None and isinstance(config, Mapping):
            for target in spec.decides(config):
                deciders.setdefault(target, step["id"])
    return deciders


def _check_cycles(steps: Sequence[Mapping[str, Any]], ids: set[str], types: TypeLookup) -> list[Problem]:
    clean = [{**s, "dependsOn": _known(s.get("dependsOn"), ids)} if "dependsOn" in s else s for s in steps]
    deps = effective_dependencies(clean, types)
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


def build_runbook(doc: Mapping[str, Any], types: TypeLookup, default_retries: int,
                  triggers: TriggerLimits = TRIGGER_DEFAULTS) -> Runbook:
    """Validate ``doc`` and build its Runbook (version 0: the store assigns versions)."""
    problems = validate_document(doc, types, triggers)
    if problems:
        raise ValidationError(problems, title="invalid runbook")
    deps = effective_dependencies(doc["steps"], types)
    steps = tuple(_build_step(raw, tuple(deps[raw["id"]]), default_retries, types) for raw in doc["steps"])
    fields = {k: v for k, v in doc.items() if k not in ("steps", "version", "tags", "metadata")}
    header = from_json({**fields, "steps": []}, Runbook)
    return attrs.evolve(header, steps=steps, document=dict(doc), content_sha256=canonical_sha256(dict(doc)))


def _build_step(raw: Mapping[str, Any], deps: tuple[str, ...], default_retries: int, types: TypeLookup) -> Step:
    policy = RetryPolicy(max_retries=default_retries)
    if "retryPolicy" in raw:
        policy = from_json({**to_json(policy), **raw["retryPolicy"]}, RetryPolicy)
    spec = _spec(types, raw["type"])
    assert spec is not None  # validated
    config = raw.get(spec.config_field(raw))
    return Step(
        id=raw["id"], type=raw["type"], config=dict(config or {}), depends_on=deps,
        when=raw.get("when"), retry_policy=policy, timeout_ms=raw.get("timeoutMs"),
        continue_on_error=raw.get("continueOnError", False), name=raw.get("name"),
        description=raw.get("description"),
    )
