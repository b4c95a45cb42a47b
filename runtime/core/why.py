"""A step's decision record (``StepState.why``): what the core decided about it and on what.

The record is committed with the decision it explains, in the same transition. It is small
JSON, a few hundred bytes at most whatever the step's data: a value shown is cut to
``VALUE_CHARS`` characters of its JSON text, a condition keeps its first ``MAX_CHECKS``
comparisons, and a step keeps its last ``MAX_RETRIES`` retry reasons (and their count).

Keys, each written by the decision it names:

``after``      {dependency: its status} when the step started, for each dependency that had not
               succeeded then (skipped, or failed with ``continueOnError``); one that is not
               named had succeeded
``when``       the ``when`` comparisons and their result, when it let the step run or skipped it
``condition``  a conditional's comparisons, its result and the branch taken
``skipped``    why the step was skipped (a ``when``, a branch not taken, every dependency skipped)
``retries``    [{attempt, code, message}] (the last ones) and ``retried``: how many in all
``byHand``     {action: completed|skipped, actor, justification, from, legalBasis?, evidence?}
``forked``     {executionId, status}: a fork began with this step's outcome in that execution

What other fields of the step already say (approvals with their digests, a loop's progress,
attempts) is not copied here; ``runtime.core.explain`` reads both.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, Final, Protocol

from runtime.language.conditions import Trace
from runtime.language.templates import MISSING
from runtime.model import StepState, StepStatus

VALUE_CHARS: Final = 40
MAX_CHECKS: Final = 4
MAX_RETRIES: Final = 3
TEXT_CHARS: Final = 200


class Steps(Protocol):
    def step_state(self, step_id: str) -> StepState: ...

    def set_step(self, step_id: str, **changes: Any) -> StepState: ...


def note(ops: Steps, step_id: str, **entries: Any) -> None:
    """Add ``entries`` to the step's record (a key written again is replaced)."""
    old = ops.step_state(step_id).why
    ops.set_step(step_id, why={**old, **entries} if old else entries)


def value(data: Any) -> Any:
    """``data`` as the record keeps it: itself when its JSON is short, else that JSON cut short
    (a string ending in ``…``); ``MISSING`` as ``{"missing": true}``."""
    if data is MISSING:
        return {"missing": True}
    if data is None or isinstance(data, bool | int | float):
        return data
    if isinstance(data, str) and len(data) <= VALUE_CHARS:
        return data
    try:
        text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=str)
    except (TypeError, ValueError):
        text = repr(data)
    return data if len(text) <= VALUE_CHARS and not isinstance(data, str) else text[:VALUE_CHARS] + "…"


def text(message: str) -> str:
    return message if len(message) <= TEXT_CHARS else message[:TEXT_CHARS] + "…"


def checks(trace: Trace) -> list[dict[str, Any]]:
    """The comparisons of a condition as the record keeps them."""
    return [{"field": field, "actual": value(actual), "operator": operator, "expected": value(expected),
             "result": result} for field, actual, operator, expected, result in trace[:MAX_CHECKS]]


def condition(trace: Trace, result: bool) -> dict[str, Any]:
    record: dict[str, Any] = {"checks": checks(trace), "result": result}
    if len(trace) > MAX_CHECKS:
        record["more"] = len(trace) - MAX_CHECKS
    return record


def unusual(depends_on: Iterable[str], steps: Mapping[str, StepState]) -> dict[str, str]:
    """The dependencies that had not succeeded when the step started, with their status (the
    others had: a step starts once each dependency is done, and one that succeeded stays so)."""
    return {dep: status.value for dep in depends_on if (status := steps[dep].status) is not StepStatus.SUCCEEDED}


def retried(old: Mapping[str, Any] | None, attempt: int, code: str, message: str) -> dict[str, Any]:
    """The entries of the record after one more retry."""
    retries = [*(old or {}).get("retries", ()), {"attempt": attempt, "code": code, "message": text(message)}]
    return {"retries": retries[-MAX_RETRIES:], "retried": int((old or {}).get("retried", 0)) + 1}
