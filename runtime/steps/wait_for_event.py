"""wait-for-event: config checks and the event -> output rule. The wait itself is a parked
step in its ExecutionActor; events arrive as ``DeliverEvent`` messages from the EventRouter."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from runtime.conditions import condition_problems, evaluate
from runtime.errors import Problem
from runtime.limits import duration_problem
from runtime.model import Event
from runtime.wire import format_time

DEFAULT_TIMEOUT_MS = 3_600_000
_FIELDS = {"eventType", "correlationKey", "timeoutMs", "filter"}


def check_config(config: Mapping[str, Any], path: str) -> list[Problem]:
    problems = [Problem(f"{path}.{key}", f"unknown field '{key}'") for key in config if key not in _FIELDS]
    for key in ("eventType", "correlationKey"):
        if not isinstance(config.get(key), str) or not config.get(key):
            problems.append(Problem(f"{path}.{key}", "required: a non-empty string"))
    if (problem := duration_problem(config.get("timeoutMs", DEFAULT_TIMEOUT_MS))) is not None:
        problems.append(Problem(f"{path}.timeoutMs", problem))
    if "filter" in config:
        problems += condition_problems(config["filter"], f"{path}.filter")
    return problems


def matches(config: Mapping[str, Any], event: Event) -> bool:
    condition = config.get("filter")
    return condition is None or evaluate(condition, {"payload": event.payload, "type": event.type})


def output(event: Event) -> dict[str, Any]:
    return {
        "type": event.type,
        "correlationKey": event.correlation_key,
        "payload": event.payload,
        "receivedAt": format_time(event.received_at),
    }
