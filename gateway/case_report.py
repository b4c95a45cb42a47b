"""How a case's result reads: what it missed (expected against actual) and what happened,
for the ``runbooks test`` report and its JUnit XML; ``duration_text`` for virtual times."""

from __future__ import annotations

import json
from typing import Any, Final

from runtime.testing import CaseResult, Mismatch, Moment
from runtime.testing.match import Said

SHOWN_CHARS: Final = 160  # of a value in a mismatch line
SHOWN_MOMENTS: Final = 40  # of what happened, under a failing case


def failure_lines(result: CaseResult) -> list[str]:
    """What a failing case missed, then what happened."""
    lines = [mismatch_text(m) for m in result.mismatches]
    moments = result.outcome.timeline
    if moments:
        lines.append("what happened:")
        lines += [f"  {moment_text(m)}" for m in moments[:SHOWN_MOMENTS]]
        if len(moments) > SHOWN_MOMENTS:
            lines.append(f"  ... and {len(moments) - SHOWN_MOMENTS} more")
    return lines


def mismatch_text(mismatch: Mismatch) -> str:
    if mismatch.problem is not None:
        return f"{mismatch.path}: {mismatch.problem}"
    text = f"{mismatch.path}: expected {value_text(mismatch.expected)}, got {value_text(mismatch.actual)}"
    return f"{text} ({mismatch.note})" if mismatch.note else text


def value_text(value: Any) -> str:
    if isinstance(value, Said):
        return str(value)
    text = json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 1] + "…"


def moment_text(moment: Moment) -> str:
    at = duration_text(moment.at_ms).rjust(9)
    return f"{at}  {moment.what}" if moment.step is None else f"{at}  {moment.step} {moment.what}"


def duration_text(ms: int) -> str:
    """``0 s``, ``1.5 s``, ``4 min 10 s``, ``4 h``, ``7 d 2 h``: the two largest units."""
    if ms < 60_000:
        return f"{round(ms / 1000, 1):g} s"
    units = (("d", 86_400_000), ("h", 3_600_000), ("min", 60_000), ("s", 1000))
    parts = []
    for name, size in units:
        if ms >= size:
            parts.append(f"{ms // size} {name}")
            ms %= size
    return " ".join(parts[:2])
