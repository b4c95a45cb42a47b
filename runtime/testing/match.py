"""How an expected value meets an actual one, in replies' ``match`` and in expectations.

An object matches when every key it gives matches (the actual one may have more); a list
matches a list of the same length item by item; anything else must be equal (``1`` equals
``1.0``, but ``true`` is not ``1``). A request is matched field by field: ``method`` in any
case, ``url`` whole, or from its path when it starts with ``/`` (with ``*`` for any text),
``headers`` and ``metadata`` by name in any case, the rest as values.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urlsplit

import attrs


class Said(str):
    """Words standing where a value would be (``(absent)``, ``2 call(s)``): shown as they are."""


ABSENT: Final = Said("(absent)")  # what a difference shows for a key the actual value lacks


@attrs.frozen
class Difference:
    path: str  # inside the value compared: "" (the value itself), ".body.version", "[2]"
    expected: Any
    actual: Any


def differences(expected: Any, actual: Any, path: str = "") -> list[Difference]:
    if isinstance(expected, Mapping):
        return _mapping_differences(expected, actual, path)
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            return [Difference(path, expected, actual)]
        return [d for i, (e, a) in enumerate(zip(expected, actual, strict=True)) for d in differences(e, a, f"{path}[{i}]")]
    return [] if same(expected, actual) else [Difference(path, expected, actual)]


def _mapping_differences(expected: Mapping[str, Any], actual: Any, path: str) -> list[Difference]:
    if not isinstance(actual, Mapping):
        return [Difference(path, expected, actual)]
    found: list[Difference] = []
    for key, value in expected.items():
        if key in actual:
            found += differences(value, actual[key], f"{path}.{key}")
        else:
            found.append(Difference(f"{path}.{key}", value, ABSENT))
    return found


def same(expected: Any, actual: Any) -> bool:
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(expected) is type(actual) and expected == actual
    return bool(expected == actual)


def request_differences(expected: Mapping[str, Any], request: Mapping[str, Any]) -> list[Difference]:
    """How a request (``canned.request_of``) differs from what ``expected`` says of it."""
    found: list[Difference] = []
    for field, value in expected.items():
        actual = request.get(field, ABSENT)
        if field == "url":
            if not url_matches(str(value), str(actual)):
                found.append(Difference(".url", value, actual))
        elif field in ("headers", "metadata") and isinstance(value, Mapping) and isinstance(actual, Mapping):
            found += differences(_lower(value), _lower(actual), f".{field}")
        elif field == "method" and "url" in request:
            if str(value).upper() != str(actual).upper():
                found.append(Difference(".method", value, actual))
        else:
            found += differences(value, actual, f".{field}")
    return found


def url_matches(pattern: str, url: str) -> bool:
    """``pattern`` is the whole URL, or (starting with ``/``) its path, with its query when the
    pattern has one; ``*`` stands for any text."""
    if pattern.startswith("/"):
        parts = urlsplit(url)
        url = parts.path + (f"?{parts.query}" if "?" in pattern and parts.query else "")
    regex = ".*".join(re.escape(piece) for piece in pattern.split("*"))
    return re.fullmatch(regex, url) is not None


def _lower(headers: Mapping[str, Any]) -> dict[str, Any]:
    return {str(name).lower(): value for name, value in headers.items()}
