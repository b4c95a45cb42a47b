"""The bounds of every duration and count a runbook, a request or the configuration may give.

Each bound is what the clock, the databases and the C code underneath can hold, with room to
spare, and what an operator could mean: a duration is at most a year (``datetime`` and Trio
deadlines take it; 27 digits of milliseconds overflow both), a retry budget at most 100
attempts, concurrency and approval counts at most 1000. ``duration_problem`` and
``count_problem`` give the message for a value outside them (None when it is fine), so every
check in the engine words the same bound the same way.
"""

from __future__ import annotations

import math
from typing import Any, Final

MAX_DURATION_MS: Final = 365 * 24 * 3600 * 1000  # one year
MAX_RETRIES: Final = 100
MAX_CONCURRENCY: Final = 1000  # maxConcurrentSteps, MAX_CONCURRENT_STEPS, loop concurrency
MAX_APPROVALS: Final = 1000
MIN_BACKOFF_MULTIPLIER: Final = 1.0
MAX_BACKOFF_MULTIPLIER: Final = 10.0
MAX_VERSION: Final = 2**31 - 1  # runbook versions (a 32-bit column is enough, and plenty)
MAX_SEQ: Final = 2**63 - 1  # log sequence numbers and cursors: a signed 64-bit column


def is_int(value: Any) -> bool:
    """An ``int`` that is not a ``bool`` (JSON has no separate integer type; Python does)."""
    return isinstance(value, int) and not isinstance(value, bool)


def duration_problem(value: Any, *, allow_zero: bool = False) -> str | None:
    """Why ``value`` is not a duration in milliseconds (positive, or >= 0), or None."""
    low = 0 if allow_zero else 1
    if not is_int(value) or not low <= value <= MAX_DURATION_MS:
        kind = "a non-negative" if allow_zero else "a positive"
        return f"must be {kind} integer of milliseconds, at most {MAX_DURATION_MS} (one year)"
    return None


def count_problem(value: Any, low: int, high: int) -> str | None:
    """Why ``value`` is not an integer from ``low`` to ``high``, or None."""
    if not is_int(value) or not low <= value <= high:
        return f"must be an integer from {low} to {high}"
    return None


def multiplier_problem(value: Any) -> str | None:
    """Why ``value`` is not a sane backoff multiplier, or None."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or not MIN_BACKOFF_MULTIPLIER <= value <= MAX_BACKOFF_MULTIPLIER:
        return f"must be a number from {MIN_BACKOFF_MULTIPLIER:g} to {MAX_BACKOFF_MULTIPLIER:g}"
    return None
