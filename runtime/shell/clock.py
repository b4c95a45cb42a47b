"""The runtime's clock: wall-clock time that advances with Trio's clock.

Everything the engine records carries ``Clock.now()``, so a ``MockClock`` drives hours of
deadlines in a test in milliseconds, and a datetime deadline maps to one Trio time
(``trio_time``) the same way every time it is armed.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import trio


class Clock:
    def __init__(self, start: datetime | None = None) -> None:
        """``start``: the wall-clock time it shows now (default: the real one)."""
        self._wall0 = start or datetime.now(UTC)
        self._trio0 = trio.current_time()

    def now(self) -> datetime:
        return self._wall0 + timedelta(seconds=trio.current_time() - self._trio0)

    def trio_time(self, at: datetime) -> float:
        """The Trio time at which ``now()`` reaches ``at``."""
        return self._trio0 + (at - self._wall0).total_seconds()
