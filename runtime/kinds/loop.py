"""loop: the config checks and its ``SPEC`` (its runner, which runs the iterations, is
``runtime.io.loop``).

A loop runs its body once per item (``items``) or while a condition holds (``while``, with
``index`` and ``previous`` in scope). Each iteration is its own supervised child: it runs
the body's attempts with the body's retry policy, and a failure is reported, not raised.
``maxIterations`` (default and hard cap 1000) is checked at validation and again here;
exceeding it fails the step with ``loop_limit`` before anything is truncated. In the
execution core a loop is a task step like any other (``runtime.kinds.task``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from runtime.kinds.base import check_retry_policy, positive_int, unknown_fields
from runtime.kinds.spec import KindSpec, TypeLookup
from runtime.kinds.task import TASK
from runtime.language.conditions import condition_problems
from runtime.model.errors import Problem
from runtime.model.limits import MAX_CONCURRENCY, count_problem, duration_problem
from runtime.model.suggest import did_you_mean

MAX_ITERATIONS = 1000
_FIELDS = frozenset({"items", "while", "maxIterations", "concurrency", "failFast", "step"})
_BODY_FIELDS = frozenset({"type", "config", "retryPolicy", "timeoutMs"})


def check_config(config: Mapping[str, Any], path: str, types: TypeLookup) -> list[Problem]:
    problems = unknown_fields(config, _FIELDS, path)
    if ("items" in config) == ("while" in config):
        problems.append(Problem(path, "a loop needs exactly one of 'items' or 'while'"))
    if "items" in config and not isinstance(config["items"], list | str):
        problems.append(Problem(f"{path}.items", "must be a list or a template resolving to one"))
    if "while" in config:
        problems += condition_problems(config["while"], f"{path}.while")
    limit = config.get("maxIterations", MAX_ITERATIONS)
    if not positive_int(limit):
        problems.append(Problem(f"{path}.maxIterations", "must be a positive integer"))
    elif limit > MAX_ITERATIONS:
        problems.append(Problem(f"{path}.maxIterations", f"loop maxIterations {limit} exceeds the cap of {MAX_ITERATIONS}"))
    if "concurrency" in config and (problem := count_problem(config["concurrency"], 1, MAX_CONCURRENCY)):
        problems.append(Problem(f"{path}.concurrency", problem))
    if "failFast" in config and not isinstance(config["failFast"], bool):
        problems.append(Problem(f"{path}.failFast", "must be true or false"))
    body = config.get("step")
    if not isinstance(body, Mapping):
        return [*problems, Problem(f"{path}.step", "required: the loop body {type, config, retryPolicy, timeoutMs}")]
    return problems + _body_problems(body, f"{path}.step", types)


def _body_problems(body: Mapping[str, Any], path: str, types: TypeLookup) -> list[Problem]:
    problems = unknown_fields(body, _BODY_FIELDS, path)
    name = body.get("type")
    body_type = types.get(name) if isinstance(name, str) else None
    if body_type is None:
        problems.append(Problem(f"{path}.type", f"unknown step type '{name}'"
                                                f"{did_you_mean(name, types.names()) if isinstance(name, str) else ''}"))
    elif body_type.executor is None:
        problems.append(Problem(f"{path}.type", f"a loop body cannot be of type '{body_type.name}' (only call-service and custom types)"))
    elif not isinstance(body.get("config", {}), Mapping):
        problems.append(Problem(f"{path}.config", "must be a mapping (object)"))
    else:
        problems += body_type.spec.check_config(body.get("config", {}), f"{path}.config", types)
    if "retryPolicy" in body:
        problems += check_retry_policy(body["retryPolicy"], f"{path}.retryPolicy")
    if "timeoutMs" in body and (problem := duration_problem(body["timeoutMs"])):
        problems.append(Problem(f"{path}.timeoutMs", problem))
    return problems


SPEC = KindSpec(TASK, check_config)
