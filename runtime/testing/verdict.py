"""A case's expectations against what its run did: every ``Mismatch``, none when it passed.

Each mismatch names where it is (``status``, ``steps.deploy``, ``outputs.build.commit``,
``calls.deploy[0].body.version``, ``audit[1]``) with the expected and the actual value, or
is a problem of the run itself (a call with no canned reply, an approval refused), which
fails a case whatever it expects.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from runtime.language.templates import MISSING, resolve
from runtime.model import AuditEntry, StepError, StepState
from runtime.testing.canned import NO_REPLY, Call, describe
from runtime.testing.drive import Outcome
from runtime.testing.match import ABSENT, Said, differences, request_differences, same
from runtime.testing.spec import REFUSED, Case, StepExpect


@attrs.frozen
class Mismatch:
    path: str
    expected: Any = None
    actual: Any = None
    note: str = ""  # what explains the actual value (the error of a failed step, ...)
    problem: str | None = None  # a problem of the run itself, instead of a value


def verdict(case: Case, outcome: Outcome) -> list[Mismatch]:
    expect = case.expect
    found = [Mismatch(where, problem=what) for where, what in outcome.problems]
    found += _status(expect.status, outcome)
    found += [m for key, want in expect.steps.items() for m in _step(key, want, outcome.steps.get(key))]
    found += _outputs(expect.outputs, outcome.scope)
    found += [m for key, want in expect.calls.items()
              for m in _calls(key, want, [c for c in outcome.calls if c.key == key])]
    found += _audit(expect.audit, outcome.audit)
    if expect.error is not None:
        found += _error(expect.error, outcome)
    return found


def _status(expected: str | None, outcome: Outcome) -> list[Mismatch]:
    execution = outcome.execution
    actual = REFUSED if execution is None else execution.status.value
    if expected is None or expected == actual:
        return []
    if execution is None:
        note = "; ".join(outcome.refused)
    elif execution.error is not None:
        error = execution.error
        note = f"step '{error.step_id}': {_error_note(error)}" if error.step_id else _error_note(error)
    else:
        note = _waits(outcome)
    if outcome.stopped == "until":
        note = f"still {actual} after {outcome.virtual_ms} ms of virtual time (untilMs); {note}".rstrip("; ")
    return [Mismatch("status", expected, actual, note)]


def _waits(outcome: Outcome) -> str:
    waiting = [f"{key} {state.status.value}" for key, state in outcome.steps.items()
               if state.status.value in ("waiting", "awaiting_approval")]
    return f"nothing more could happen: {', '.join(waiting)}" if waiting else ""


def _step(key: str, want: StepExpect, state: StepState | None) -> list[Mismatch]:
    path = f"steps.{key}"
    if state is None:
        return [Mismatch(path, want.status, Said("(never started)"))]
    error = state.error
    note = _error_note(error) if error is not None else ""
    found = []
    if want.status is not None and want.status != state.status.value:
        found.append(Mismatch(path, want.status, state.status.value, note))
    if want.attempts is not None and want.attempts != state.attempts:
        found.append(Mismatch(f"{path}.attempts", want.attempts, state.attempts, note))
    actual_code = error.code if error is not None else None
    if want.error is not None and want.error != actual_code:
        found.append(Mismatch(f"{path}.error", want.error, actual_code, note))
    return found


def _error_note(error: StepError) -> str:
    if error.code == NO_REPLY:  # the call itself is listed among the problems
        return f"{error.code}: a call with no canned reply"
    return f"{error.code}: {error.message}"


def _outputs(expected: Mapping[str, Any], scope: Mapping[str, Any]) -> list[Mismatch]:
    found = []
    for path, value in expected.items():
        actual = resolve(scope, path)
        for d in differences(value, ABSENT if actual is MISSING else actual):
            found.append(Mismatch(f"outputs.{path}{d.path}", d.expected, d.actual))
    return found


def _calls(key: str, want: int | Sequence[Mapping[str, Any]], made: list[Call]) -> list[Mismatch]:
    count = want if isinstance(want, int) else len(want)
    made_text = "; ".join(f"{describe(c.kind, c.request)} -> {c.answer or 'no reply'}" for c in made)
    found = []
    if count != len(made):
        found.append(Mismatch(f"calls.{key}", Said(f"{count} call(s)"), Said(f"{len(made)} call(s)"), made_text))
    if not isinstance(want, int):
        for index, (expected, call) in enumerate(zip(want, made, strict=False)):
            found += [Mismatch(f"calls.{key}[{index}]{d.path}", d.expected, d.actual)
                      for d in request_differences(expected, call.request)]
    return found


def _audit(expected: Sequence[Mapping[str, str]], entries: Sequence[AuditEntry]) -> list[Mismatch]:
    """Each expected entry, in order, among the audit entries after the one before it."""
    actual = [{"action": e.action, "actor": e.actor, "stepId": e.step_id} for e in entries]
    position = 0
    for index, want in enumerate(expected):
        fits = [i for i in range(position, len(actual)) if not differences(dict(want), actual[i])]
        if not fits:
            after = f" after audit[{index - 1}]" if index else ""
            listed = ", ".join(str(a["action"]) for a in actual[position:]) or "none"
            return [Mismatch(f"audit[{index}]", dict(want), Said(f"not found{after}"), f"the entries left: {listed}")]
        position = fits[0] + 1
    return []


def _error(expected: Mapping[str, str], outcome: Outcome) -> list[Mismatch]:
    error = outcome.execution.error if outcome.execution is not None else None
    if error is None:
        return [Mismatch("error", dict(expected), None)]
    actual = {"code": error.code, "stepId": error.step_id, "message": error.message}
    found = [Mismatch(f"error.{field}", value, actual[field]) for field, value in expected.items()
             if field != "message" and not same(value, actual[field])]
    if "message" in expected and expected["message"] not in error.message:
        found.append(Mismatch("error.message", Said(f"a message containing {expected['message']!r}"), error.message))
    return found
