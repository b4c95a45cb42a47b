"""human-approval: the checks of its config, before anything runs.

The fields: ``approvers`` (user ids or ``role:NAME``, or a template giving them),
``minApprovals``, ``timeoutMs``, ``timeoutAction``, ``message``, ``notify: {url, headers?}``,
``show`` (the steps whose outputs the approvers are shown), ``separationOfDuties`` and
``allowDelegation`` (booleans), and ``escalation``: a list of stages ``{afterMs, approvers,
notify?}``, each ``afterMs`` counted from when the step started waiting, strictly
increasing, and before ``timeoutMs`` when the step has one (a stage after it would never come).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from runtime.model.errors import Problem
from runtime.model.limits import MAX_APPROVALS, count_problem, duration_problem
from runtime.model.suggest import unknown_field

ROLE_PREFIX = "role:"
TIMEOUT_ACTIONS = ("fail", "approve", "reject")
MAX_ESCALATIONS = 10
_FIELDS = {"approvers", "minApprovals", "timeoutMs", "timeoutAction", "message", "notify", "show",
           "separationOfDuties", "allowDelegation", "escalation"}
_NOTIFY_FIELDS = {"url", "headers"}
_STAGE_FIELDS = {"afterMs", "approvers", "notify"}
_FLAGS = ("separationOfDuties", "allowDelegation")


def check_config(config: Mapping[str, Any], path: str) -> list[Problem]:
    problems = [unknown_field(path, key, _FIELDS) for key in config if key not in _FIELDS]
    problems += _check_approvers(config, path)
    timeout = config.get("timeoutMs")
    if timeout is not None and (problem := duration_problem(timeout)) is not None:
        problems.append(Problem(f"{path}.timeoutMs", problem))
    if config.get("timeoutAction", "fail") not in TIMEOUT_ACTIONS:
        problems.append(Problem(f"{path}.timeoutAction", f"must be one of {', '.join(TIMEOUT_ACTIONS)}"))
    if "message" in config and not isinstance(config["message"], str):
        problems.append(Problem(f"{path}.message", "must be a string"))
    if "notify" in config:
        problems += check_notify(config["notify"], f"{path}.notify")
    problems += [Problem(f"{path}.{flag}", "must be true or false")
                 for flag in _FLAGS if flag in config and not isinstance(config[flag], bool)]
    if "escalation" in config:
        problems += _check_escalation(config["escalation"], f"{path}.escalation", config.get("timeoutMs"))
    return problems


def _check_approvers(config: Mapping[str, Any], path: str) -> list[Problem]:
    approvers = config.get("approvers")
    templated = isinstance(approvers, str) and "${" in approvers
    ids: list[Any] = approvers if isinstance(approvers, list) else []
    listed = listed_ids(ids)
    problems = []
    if not templated and not listed:
        problems.append(Problem(f"{path}.approvers", "required: a non-empty list of user ids (or role:NAME)"))
    by_role = any(isinstance(a, str) and a.startswith(ROLE_PREFIX) for a in ids)
    minimum = config.get("minApprovals", 1)
    if (problem := count_problem(minimum, 1, MAX_APPROVALS)) is not None:
        problems.append(Problem(f"{path}.minApprovals", problem))
    elif listed and not by_role and minimum > len(set(ids)) and "escalation" not in config:
        problems.append(Problem(f"{path}.minApprovals", f"{minimum} approvals needed but only {len(set(ids))} approvers"))
    return problems


def listed_ids(ids: Any) -> bool:
    """Whether ``ids`` is a non-empty list of user ids or ``role:NAME`` entries."""
    return isinstance(ids, list) and bool(ids) and all(isinstance(a, str) and a and a != ROLE_PREFIX for a in ids)


def check_notify(notify: Any, path: str) -> list[Problem]:
    if not isinstance(notify, Mapping):
        return [Problem(path, "must be a mapping {url, headers}")]
    problems = [unknown_field(path, key, _NOTIFY_FIELDS) for key in notify if key not in _NOTIFY_FIELDS]
    if not isinstance(notify.get("url"), str) or not notify["url"].strip():
        problems.append(Problem(f"{path}.url", "required: the URL to POST the notification to"))
    headers = notify.get("headers", {})
    if not isinstance(headers, Mapping) or not all(isinstance(v, str) for v in headers.values()):
        problems.append(Problem(f"{path}.headers", "must map header names to strings"))
    return problems


def _check_escalation(stages: Any, path: str, timeout: Any) -> list[Problem]:
    if not isinstance(stages, list) or not 1 <= len(stages) <= MAX_ESCALATIONS:
        return [Problem(path, f"must be a list of 1 to {MAX_ESCALATIONS} stages {{afterMs, approvers, notify?}}")]
    problems: list[Problem] = []
    previous = 0
    for index, stage in enumerate(stages):
        where = f"{path}[{index}]"
        if not isinstance(stage, Mapping):
            problems.append(Problem(where, "must be a mapping {afterMs, approvers, notify?}"))
            continue
        problems += [unknown_field(where, key, _STAGE_FIELDS) for key in stage if key not in _STAGE_FIELDS]
        problems += _check_stage_time(stage.get("afterMs"), f"{where}.afterMs", previous, timeout)
        if isinstance(stage.get("afterMs"), int):
            previous = stage["afterMs"]
        if not listed_ids(stage.get("approvers")):
            problems.append(Problem(f"{where}.approvers", "required: a non-empty list of user ids (or role:NAME)"))
        if "notify" in stage:
            problems += check_notify(stage["notify"], f"{where}.notify")
    return problems


def _check_stage_time(after: Any, path: str, previous: int, timeout: Any) -> list[Problem]:
    if (problem := duration_problem(after)) is not None:
        return [Problem(path, problem)]
    if after <= previous:
        return [Problem(path, f"must be later than the stage before ({previous} ms)")]
    if isinstance(timeout, int) and after >= timeout:
        return [Problem(path, f"must be before timeoutMs ({timeout} ms): the step ends then")]
    return []


def check_shown(config: Mapping[str, Any], path: str, step_id: str | None, ids: Collection[str]) -> list[Problem]:
    """``show`` is a list of the document's other steps."""
    show = config.get("show")
    if show is None:
        return []
    if not isinstance(show, list) or not all(isinstance(s, str) for s in show):
        return [Problem(f"{path}.show", "must be a list of step ids")]
    problems = []
    for target in show:
        if target not in ids:
            problems.append(Problem(f"{path}.show", f"'{target}' is not a step"))
        elif target == step_id:
            problems.append(Problem(f"{path}.show", "an approval step cannot show its own output"))
    return problems
