"""Templates: the ``${path}`` language of runbook documents.

This module owns resolving a path in a scope, rendering templated values, and the
static template checks that validation runs. It is pure: no I/O and no state.

A *scope* is a plain mapping (``input``, ``context``, ``executionId``, ``stepId``,
``tenantId``, ``execution``, in a loop ``item``/``index``/``previous``, and one key
per finished step id holding that step's output). A *path* is dot-separated
(``input.hosts.0.name``): a segment that is a non-negative integer indexes a list,
dict keys are looked up as strings. A step id may itself contain dots
(``deploy.v2.url`` resolves in step ``deploy.v2`` when there is no step ``deploy``
holding ``v2.url``): at the top level every dotted prefix is tried, shortest first.

Rendering rules:

* A string that is exactly one ``${path}`` (whitespace inside the braces allowed)
  becomes the resolved value itself, with its type (a list stays a list, ``null``
  stays ``None``). The value is the scope's own object, not a copy.
* Otherwise each ``${path}`` is replaced by text: strings as they are, booleans as
  ``true``/``false``, ``None`` as ``null``, numbers via ``str``, dicts and lists as
  compact JSON.
* A path that does not resolve raises :class:`TemplateError` naming the path.
* The legacy bare forms ``{executionId}``, ``{stepId}`` and ``{tenantId}`` (single
  braces, not preceded by ``$``) are replaced as text when the scope has that key,
  and left untouched otherwise.
* There is no escaping syntax: ``$${x}`` is a literal ``$`` followed by the template
  ``${x}``. An unclosed ``${`` is left as text by :func:`render`; validation reports it.
* Rendering is a single pass: text that a substitution produced is never rendered again.
* Dicts (values, not keys), lists and tuples are rendered recursively into new
  containers; the input is never mutated. Other values are returned as they are.
* ``${secret.NAME}`` is resolved only when :func:`render` is given ``secrets`` (a
  function from a name to its value, raising :class:`TemplateError` for an unknown
  name): the engine passes it where a config is rendered for the request that needs the
  value, nowhere else. Without it the reference is left as it is written, so a rendering
  for a decision (an approval's approvers, an event key) never holds a value.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

from runtime.model.errors import Problem

__all__ = [
    "MISSING",
    "TemplateError",
    "path_syntax_error",
    "render",
    "resolve",
    "secret_names",
    "template_paths",
    "template_problems",
]


class _Missing(enum.Enum):
    MISSING = "MISSING"

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing.MISSING
"""Returned by :func:`resolve` when a path does not resolve (distinct from ``None``)."""

LEGACY_NAMES: Final = ("executionId", "stepId", "tenantId")
SECRET_ROOT: Final = "secret"
_SECRET_PREFIX: Final = SECRET_ROOT + "."

Secrets = Callable[[str], str]
"""A secret's value by name; raises :class:`TemplateError` for a name it does not know."""

_TEMPLATE: Final = re.compile(r"\$\{([^}]*)\}")
_TOKEN: Final = re.compile(
    r"\$\{(?P<path>[^}]*)\}|(?<!\$)\{(?P<legacy>" + "|".join(LEGACY_NAMES) + r")\}"
)
_PATH_CHARS: Final = re.compile(r"[A-Za-z0-9_.-]+")
_CLIP: Final = 80


class TemplateError(Exception):
    """A template could not be rendered: ``path`` is the ``${...}`` path that failed."""

    code = "template"

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message

    def __reduce__(self) -> tuple[type[TemplateError], tuple[str, str]]:
        return (TemplateError, (self.path, self.message))


# --- resolving ------------------------------------------------------------------------


def resolve(scope: Mapping[str, Any], path: str) -> Any:
    """The value at ``path`` in ``scope``, or :data:`MISSING` (never raises for a miss)."""
    if not isinstance(path, str) or not path:
        return MISSING
    segments = path.split(".")
    for n in range(1, len(segments) + 1):
        key = ".".join(segments[:n])
        if key in scope:
            found = _walk(scope[key], segments[n:])
            if found is not MISSING:
                return found
    return MISSING


def _walk(value: Any, segments: list[str]) -> Any:
    for segment in segments:
        value = _child(value, segment)
        if value is MISSING:
            break
    return value


def _child(value: Any, segment: str) -> Any:
    if isinstance(value, Mapping):
        return value.get(segment, MISSING)
    if isinstance(value, (list, tuple)) and segment.isascii() and segment.isdigit():
        index = int(segment)
        return value[index] if index < len(value) else MISSING
    return MISSING


# --- rendering ------------------------------------------------------------------------


def render(value: Any, scope: Mapping[str, Any], secrets: Secrets | None = None) -> Any:
    """``value`` with every template in its strings rendered (see the module docstring)."""
    if isinstance(value, str):
        return _render_string(value, scope, secrets)
    if isinstance(value, Mapping):
        return {key: render(item, scope, secrets) for key, item in value.items()}
    if isinstance(value, list):
        return [render(item, scope, secrets) for item in value]
    if isinstance(value, tuple):
        return tuple(render(item, scope, secrets) for item in value)
    return value


def _render_string(text: str, scope: Mapping[str, Any], secrets: Secrets | None) -> Any:
    if "{" not in text:
        return text
    whole = _TEMPLATE.fullmatch(text)
    if whole is not None:
        return _lookup(scope, whole.group(1).strip(), secrets, text)
    return _TOKEN.sub(lambda match: _replacement(match, scope, secrets), text)


def _replacement(match: re.Match[str], scope: Mapping[str, Any], secrets: Secrets | None) -> str:
    legacy = match.group("legacy")
    if legacy is not None:
        return _text(scope[legacy]) if legacy in scope else match.group(0)
    return _text(_lookup(scope, match.group("path").strip(), secrets, match.group(0)))


def _lookup(scope: Mapping[str, Any], path: str, secrets: Secrets | None = None, written: str = "") -> Any:
    if path.startswith(_SECRET_PREFIX):
        return written if secrets is None else secrets(path[len(_SECRET_PREFIX):])
    value = resolve(scope, path)
    if value is MISSING:
        raise TemplateError(path, f"template path '{path}' not found")
    return value


def secret_names(value: Any) -> list[str]:
    """The names of the ``${secret.NAME}`` references in ``value``, in order."""
    return [path[len(_SECRET_PREFIX):] for path in template_paths(value) if path.startswith(_SECRET_PREFIX)]


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, (Mapping, list, tuple)):
        return json.dumps(_jsonable(value), separators=(",", ":"), default=_jsonable)
    return str(value)


def _jsonable(value: Any) -> Any:
    """Help ``json.dumps`` with non-dict mappings and non-JSON leaves (as ``str``)."""
    if isinstance(value, Mapping) and not isinstance(value, dict):
        return dict(value)
    if isinstance(value, (dict, list, tuple, str, int, float, bool)) or value is None:
        return value
    return str(value)


# --- static checks --------------------------------------------------------------------


def path_syntax_error(path: str) -> str | None:
    """Why ``path`` is not a well-formed path, or ``None`` when it is."""
    if not path:
        return "the path is empty"
    if _PATH_CHARS.fullmatch(path) is None:
        return "a path may contain only letters, digits, '_', '-' and '.'"
    if "" in path.split("."):
        return "the path has an empty segment"
    return None


def template_problems(value: Any, path: str) -> list[Problem]:
    """Every malformed template in the strings of ``value``; ``path`` locates ``value``."""
    return [
        problem
        for location, text in _strings(value, path)
        for problem in _string_problems(text, location)
    ]


def template_paths(value: Any) -> list[str]:
    """Every non-empty ``${...}`` path used in ``value``, in order of appearance."""
    return [
        found
        for _, text in _strings(value, "")
        for match in _TEMPLATE.finditer(text)
        if (found := match.group(1).strip())
    ]


def _strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """(location, string) for every string in ``value``, dict values and list items."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _strings(item, f"{path}.{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _strings(item, f"{path}[{index}]")


def _string_problems(text: str, location: str) -> list[Problem]:
    problems: list[Problem] = []
    position = 0
    while (start := text.find("${", position)) != -1:
        end = text.find("}", start + 2)
        if end == -1:
            snippet = _clip(text[start:])
            problems.append(Problem(location, f"unclosed template '{snippet}': missing '}}'"))
            break
        problem = _template_problem(text[start : end + 1], location)
        if problem is not None:
            problems.append(problem)
        position = end + 1
    return problems


def _template_problem(template: str, location: str) -> Problem | None:
    path = template[2:-1].strip()
    if not path:
        return Problem(location, f"empty template '{_clip(template)}'")
    error = path_syntax_error(path)
    if error is None:
        return None
    return Problem(location, f"bad template '{_clip(template)}': {error}")


def _clip(text: str) -> str:
    return text if len(text) <= _CLIP else text[: _CLIP - 3] + "..."
