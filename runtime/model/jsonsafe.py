"""Whether a value can be stored and sent as JSON, and if not, where and why.

Every value the engine keeps ends up as JSON text in the store and in API answers: the input
and context of a start, events, runbook documents, step outputs, log and evidence data.
``first_problem`` walks a value (iteratively: no recursion to exhaust) and returns the first
thing JSON cannot hold, with its path:

- a type JSON does not have (a ``set``, ``bytes``, a ``datetime``, any object);
- a mapping key that is not a string;
- ``NaN`` or an infinity;
- an integer too large to write as JSON text (over ``MAX_INT_BITS`` bits, about 3900 digits:
  Python refuses to turn such an int into text, so the store could not write it). Integers
  of any smaller size are data like any other: the stores keep JSON as text. Fields whose
  numbers reach the clock or a database column are bounded by ``runtime.model.limits`` instead;
- a string that cannot be encoded as UTF-8 (a lone surrogate such as ``"\\ud800"``, which
  ``json.loads`` accepts from a ``\\ud800`` escape);
- nesting deeper than ``MAX_DEPTH``, or more than ``MAX_VALUES`` values in all.

This module is a leaf: plain Python, no Trio, no engine imports, so the step runner, the
embedded API and the gateway all use the same rules.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any, Final

__all__ = ["MAX_DEPTH", "MAX_INT_BITS", "MAX_VALUES", "JsonProblem", "clean_text", "first_problem", "is_json",
           "json_size"]

MAX_DEPTH: Final = 64
MAX_INT_BITS: Final = 13_000  # ~3900 decimal digits; Python converts at most 4300 to text
MAX_VALUES: Final = 600_000  # more values than 1 MiB of JSON text can hold
_SCALARS: Final = (str, int, float, bool, type(None))


class JsonProblem(tuple[str, str]):
    """``(path, message)``: where a value stops being JSON, and why."""

    __slots__ = ()

    @property
    def path(self) -> str:
        return self[0]

    @property
    def message(self) -> str:
        return self[1]


def json_size(value: Any) -> int:
    """The size in bytes of ``value`` as compact UTF-8 JSON: what the size caps count."""
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str).encode("utf-8", "replace"))


def is_json(value: Any, *, max_depth: int = MAX_DEPTH) -> bool:
    """Whether ``value`` is plain JSON within the limits."""
    return first_problem(value, max_depth=max_depth) is None


def first_problem(value: Any, path: str = "$", *, max_depth: int = MAX_DEPTH,
                  max_values: int = MAX_VALUES) -> JsonProblem | None:
    """The first problem of ``value`` as JSON (depth first, in order), or None.

    ``path`` names the value itself; members are added as ``.key`` (or ``["key"]`` when the
    key is not a plain name) and ``[index]``.
    """
    stack: list[tuple[Any, str, int]] = [(value, path, 1)]
    seen = 0
    while stack:
        item, where, depth = stack.pop()
        seen += 1
        if seen > max_values:
            return JsonProblem((path, f"more than {max_values} values"))
        problem = _scalar_problem(item)
        if problem is not None:
            return JsonProblem((where, problem))
        if isinstance(item, _SCALARS):
            continue
        if depth > max_depth:
            return JsonProblem((where, f"nested deeper than {max_depth} levels"))
        children = list(_children(item, where))
        for key, _ in children:
            if key is not None:
                return JsonProblem((where, key))
        stack.extend((child, child_path, depth + 1) for _, (child, child_path) in reversed(children))
    return None


def _scalar_problem(item: Any) -> str | None:
    if isinstance(item, str):
        return None if _encodable(item) else "a string that cannot be encoded as UTF-8 (a lone surrogate)"
    if isinstance(item, bool) or item is None:
        return None
    if isinstance(item, int):
        return None if item.bit_length() <= MAX_INT_BITS else "an integer too large to write as JSON (about 3900 digits at most)"
    if isinstance(item, float):
        return None if math.isfinite(item) else "not a finite number (NaN or infinity)"
    if isinstance(item, dict | list | tuple):
        return None
    return f"a {type(item).__name__}, which is not a JSON type (object, array, string, number, boolean, null)"


def _children(item: dict[Any, Any] | list[Any] | tuple[Any, ...],
              where: str) -> Iterator[tuple[str | None, tuple[Any, str]]]:
    """(key problem or None, (child, its path)) for each member, in order."""
    if isinstance(item, dict):
        for key, child in item.items():
            if not isinstance(key, str):
                yield f"a key that is not a string ({type(key).__name__} {_short(key)})", (child, where)
            elif not _encodable(key):
                yield "a key that cannot be encoded as UTF-8 (a lone surrogate)", (child, where)
            else:
                yield None, (child, member_path(where, key))
    else:
        for index, child in enumerate(item):
            yield None, (child, f"{where}[{index}]")


def member_path(parent: str, key: str) -> str:
    """``parent.key``, or ``parent["key"]`` when the key is not a plain name."""
    if key and (key.replace("_", "a").replace("-", "a").isalnum()) and key.isascii():
        return f"{parent}.{key}" if parent else key
    quoted = key.replace("\\", "\\\\").replace('"', '\\"')
    return f'{parent}["{quoted}"]'


def clean_text(text: str) -> str:
    """``text`` with each lone surrogate and NUL replaced by U+FFFD, so that any store can hold
    it as text (for messages the engine writes from what an executor raised)."""
    if "\x00" not in text and _encodable(text):
        return text
    return "".join("\ufffd" if char == "\x00" or "\ud800" <= char <= "\udfff" else char for char in text)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
