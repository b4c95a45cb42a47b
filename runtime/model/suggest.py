""""Did you mean": the known name closest to a misspelt one, for validation problems.

A name is suggested when it is close enough (``difflib``'s ratio of at least 0.7, case
ignored): ``call-servce`` -> ``call-service``, ``dependOn`` -> ``dependsOn``, ``inptu`` ->
``input``. ``unknown_field`` is the one wording of an unknown field, with its suggestion.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from runtime.model.errors import Problem

CUTOFF = 0.7


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest candidate, or ``""`` when none is close."""
    by_lower: dict[str, str] = {}
    for candidate in candidates:
        if candidate != word:
            by_lower.setdefault(candidate.lower(), candidate)
    found = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=CUTOFF)
    return f"; did you mean '{by_lower[found[0]]}'?" if found else ""


def unknown_field(path: str, key: str, known: Iterable[str]) -> Problem:
    """``unknown field 'key'`` at ``path.key``, with the closest known field if one is close."""
    return Problem(f"{path}.{key}" if path else key, f"unknown field '{key}'{did_you_mean(key, known)}")
