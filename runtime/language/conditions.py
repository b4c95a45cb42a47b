"""Conditions: the language of ``when``, ``condition``, ``while`` and ``filter``.

This module owns evaluating a condition against a scope and the static condition checks
that validation runs. It is pure: no I/O; its only state is a cache of compiled patterns.

A comparison is ``{field, operator, value}``; ``field`` is a path resolved with
:func:`runtime.language.templates.resolve`. Combinators are ``{all: [...]}`` (``all([])`` is
true), ``{any: [...]}`` (``any([])`` is false) and ``{not: condition}``.

* A missing field makes ``exists`` false and every other operator false (``ne`` too;
  wrap the comparison in ``not`` to test "absent or different").
* When ``value`` contains ``${...}`` templates it is rendered first (a string, or the
  strings inside a list/dict value); a template that does not resolve makes the
  comparison false.
* ``eq``/``ne``: deep equality where a boolean never equals a number (``True != 1``)
  and ``1 == 1.0``; ``ne`` is the negation of ``eq`` for a present field.
* ``gt``/``gte``/``lt``/``lte``: number with number (booleans are not numbers) or
  string with string; any other pairing is false, never an exception.
* ``in``: the field is an element of a list value, or a substring of a string value.
* ``contains``: a list field has the value as an element, a string field has it as a
  substring, a dict field has it as a key.
* ``exists``: the path resolves, even to ``null``.
* ``matches``: a search of the value (a regular expression) in a string field (a field
  of another type: false). Patterns run on RE2 (``google-re2``), whose matching time is
  linear in the text whatever the pattern: no pattern, written by an author or rendered
  from an input or an event, can stall the process by backtracking. RE2 has no
  backreferences or look-around, and its ``\\w``, ``\\d``, ``\\s``, ``\\b`` are ASCII
  (``\\pL``, ``\\pN`` are the Unicode classes). Validation refuses a pattern RE2 cannot
  run; at run time such a pattern (or a value that renders to something other than a
  string) raises ``PatternError``, code ``bad_pattern``: the step whose ``when``,
  ``condition`` or ``while`` it is fails with that code, and an event ``filter`` does
  not pass (``event_passes``).

An unknown operator or a malformed condition raises ``ValueError`` at evaluation time:
validation (:func:`condition_problems`) should have rejected it.
"""

from __future__ import annotations

import functools
import operator as op
from collections.abc import Callable, Mapping
from typing import Any, Final

import re2

from runtime.language.templates import (
    MISSING,
    TemplateError,
    path_syntax_error,
    render,
    resolve,
    template_paths,
    template_problems,
)
from runtime.model.errors import Problem

__all__ = ["COMBINATORS", "OPERATORS", "PatternError", "Trace", "condition_problems", "evaluate", "event_passes"]

Test = Callable[[Any, Any], bool]

OPERATORS: Final = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "contains", "exists", "matches")
COMBINATORS: Final = ("all", "any", "not")
_ALLOWED: Final = ", ".join(OPERATORS)
_PATTERN_SHOWN: Final = 200  # characters of a pattern quoted in a message
_RE2_OPTIONS: Final = re2.Options()
_RE2_OPTIONS.log_errors = False  # refusals are ours to report, not RE2's to print on stderr
_SHAPE: Final = (
    "a condition needs either field and operator (with value), or exactly one of all, any, not"
)
_FIELD_HINT: Final = " (field is a plain path such as input.x, not a ${...} template)"


class PatternError(ValueError):
    """A ``matches`` pattern that cannot run (RE2 refuses it, or it is not a string)."""

    code = "bad_pattern"


# --- evaluation -----------------------------------------------------------------------


Trace = list[tuple[str, Any, str, Any, bool]]
"""What ``evaluate`` saw, one comparison a line: (field, its value or ``MISSING``, operator,
the value compared with, result), in the order evaluated (``all``/``any`` stop early)."""


def evaluate(condition: Mapping[str, Any], scope: Mapping[str, Any], trace: Trace | None = None) -> bool:
    """Whether ``condition`` holds in ``scope`` (see the module docstring); each comparison
    made is appended to ``trace`` when one is given."""
    if not isinstance(condition, Mapping):
        raise ValueError(f"a condition must be a mapping, got {type(condition).__name__}")
    for key in COMBINATORS:
        if key in condition:
            return _combine(key, condition[key], scope, trace)
    return _compare(condition, scope, trace)


def _combine(key: str, operand: Any, scope: Mapping[str, Any], trace: Trace | None) -> bool:
    if key == "not":
        return not evaluate(operand, scope, trace)
    if not isinstance(operand, (list, tuple)):
        raise ValueError(f"'{key}' needs a list of conditions")
    results = (evaluate(item, scope, trace) for item in operand)
    return all(results) if key == "all" else any(results)


def _compare(condition: Mapping[str, Any], scope: Mapping[str, Any], trace: Trace | None = None) -> bool:
    name = condition.get("operator")
    test = _TESTS.get(name) if isinstance(name, str) else None
    if test is None:
        raise ValueError(f"unknown condition operator {name!r}; allowed: {_ALLOWED}")
    field = condition.get("field", "")
    actual = resolve(scope, field)
    expected: Any = None
    if actual is MISSING:
        result = False
    else:
        try:
            expected = None if name == "exists" else _expected(condition.get("value"), scope)
            result = test(actual, expected)
        except TemplateError:
            result = False
    if trace is not None:
        trace.append((str(field), actual, str(name), expected, result))
    return result


def _expected(value: Any, scope: Mapping[str, Any]) -> Any:
    return render(value, scope) if template_paths(value) else value


def _equal(a: Any, b: Any) -> bool:
    """Deep equality where booleans are not numbers and ``1 == 1.0``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_equal(a[key], b[key]) for key in a)
    return bool(a == b)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _orderable(a: Any, b: Any) -> bool:
    return (_is_number(a) and _is_number(b)) or (isinstance(a, str) and isinstance(b, str))


def _ordering(compare: Callable[[Any, Any], Any]) -> Test:
    def test(actual: Any, expected: Any) -> bool:
        return _orderable(actual, expected) and bool(compare(actual, expected))

    return test


def _not_equal(actual: Any, expected: Any) -> bool:
    return not _equal(actual, expected)


def _in(actual: Any, expected: Any) -> bool:
    if isinstance(expected, (list, tuple)):
        return any(_equal(actual, item) for item in expected)
    return isinstance(expected, str) and isinstance(actual, str) and actual in expected


def _contains(actual: Any, expected: Any) -> bool:
    if isinstance(actual, (list, tuple)):
        return any(_equal(item, expected) for item in actual)
    if isinstance(actual, str):
        return isinstance(expected, str) and expected in actual
    if isinstance(actual, Mapping):
        return any(_equal(key, expected) for key in actual)
    return False


def _exists(actual: Any, expected: Any) -> bool:
    return actual is not MISSING


def _matches(actual: Any, expected: Any) -> bool:
    if not isinstance(expected, str):
        raise PatternError(f"'matches' needs a regular expression string, got {type(expected).__name__}")
    regex = _compiled(expected)
    return isinstance(actual, str) and regex.search(actual) is not None


@functools.lru_cache(maxsize=512)
def _compiled(pattern: str) -> Any:
    """The compiled pattern; ``PatternError`` if RE2 cannot run it (a refusal is not cached)."""
    try:
        return re2.compile(pattern, _RE2_OPTIONS)
    except re2.error as error:
        reason = error.args[0] if error.args else b"refused"
        text = reason.decode("utf-8", "replace") if isinstance(reason, bytes) else str(reason)
    except (TypeError, ValueError) as error:  # e.g. a lone surrogate cannot be encoded
        text = str(error) or type(error).__name__
    raise PatternError(f"bad regular expression {_shown(pattern)}: {text}")


def _shown(pattern: str) -> str:
    return repr(pattern) if len(pattern) <= _PATTERN_SHOWN else repr(pattern[:_PATTERN_SHOWN]) + "..."


_TESTS: Final[dict[str, Test]] = {
    "eq": _equal,
    "ne": _not_equal,
    "gt": _ordering(op.gt),
    "gte": _ordering(op.ge),
    "lt": _ordering(op.lt),
    "lte": _ordering(op.le),
    "in": _in,
    "contains": _contains,
    "exists": _exists,
    "matches": _matches,
}


# --- static checks --------------------------------------------------------------------


def condition_problems(condition: Any, path: str) -> list[Problem]:
    """Every problem of ``condition`` at once; ``path`` locates it in the document."""
    if not isinstance(condition, Mapping):
        kind = type(condition).__name__
        return [Problem(path, f"a condition must be a mapping, got {kind}")]
    combinators = [key for key in COMBINATORS if key in condition]
    comparison = "field" in condition or "operator" in condition
    if not combinators and not comparison:
        return [Problem(path, _SHAPE)]
    problems: list[Problem] = []
    if len(combinators) > 1 or (combinators and comparison):
        problems.append(Problem(path, _SHAPE))
    for key in combinators:
        problems += _combinator_problems(key, condition[key], f"{path}.{key}")
    if comparison:
        problems += _comparison_problems(condition, path)
    return problems


def _combinator_problems(key: str, operand: Any, path: str) -> list[Problem]:
    if key == "not":
        return condition_problems(operand, path)
    if not isinstance(operand, (list, tuple)):
        return [Problem(path, f"'{key}' must be a list of conditions")]
    return [
        problem
        for index, item in enumerate(operand)
        for problem in condition_problems(item, f"{path}[{index}]")
    ]


def _comparison_problems(condition: Mapping[str, Any], path: str) -> list[Problem]:
    problems = _field_problems(condition, path)
    name = condition.get("operator")
    if "operator" not in condition:
        problems.append(Problem(f"{path}.operator", f"missing operator; one of {_ALLOWED}"))
    elif not isinstance(name, str) or name not in OPERATORS:
        message = f"unknown operator {name!r}; allowed: {_ALLOWED}"
        problems.append(Problem(f"{path}.operator", message))
    elif name != "exists":
        problems += _value_problems(name, condition, f"{path}.value")
    return problems


def _field_problems(condition: Mapping[str, Any], path: str) -> list[Problem]:
    if "field" not in condition:
        return [Problem(f"{path}.field", "missing field")]
    field = condition["field"]
    if not isinstance(field, str) or not field:
        return [Problem(f"{path}.field", "field must be a non-empty string path")]
    error = path_syntax_error(field)
    if error is None:
        return []
    hint = _FIELD_HINT if "${" in field else ""
    return [Problem(f"{path}.field", f"bad field '{field}': {error}{hint}")]


def _value_problems(name: str, condition: Mapping[str, Any], path: str) -> list[Problem]:
    if "value" not in condition:
        return [Problem(path, f"operator '{name}' needs a value")]
    value = condition["value"]
    problems = template_problems(value, path)
    if name == "in" and not isinstance(value, (list, tuple, str)):
        kind = type(value).__name__
        problems.append(Problem(path, f"operator 'in' needs a list or a string, got {kind}"))
    if name == "matches":
        problems += _regex_problems(value, path)
    return problems


def _regex_problems(value: Any, path: str) -> list[Problem]:
    if not isinstance(value, str):
        kind = type(value).__name__
        return [Problem(path, f"operator 'matches' needs a regular expression string, got {kind}")]
    if "${" in value:
        return []
    try:
        _compiled(value)
    except PatternError as error:
        return [Problem(path, str(error))]
    return []


def event_passes(condition: Any, payload: Any, event_type: str) -> bool:
    """Whether an event passes a wait's or a rule's ``filter``: a condition on ``payload.<...>``
    and ``type`` (no filter: every event passes; a pattern that cannot run: it does not)."""
    try:
        return condition is None or evaluate(condition, {"payload": payload, "type": event_type})
    except PatternError:
        return False
