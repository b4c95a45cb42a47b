"""The runtime's clock: wall-clock time that advances with Trio's clock.

Everything the engine records carries ``Clock.now()``, so a ``MockClock`` drives hours of
deadlines in a test in milliseconds, and a datetime deadline maps to one Trio time
(``trio_time``) the same way every time it is armed.

With several processes on one database, each clock is set to the database's at start
(``anchor``, before anything is armed): step and execution deadlines and the expiry of
retained events mean the same instant on every process, whatever the hosts' own clocks say
(within half a round trip to the database, plus how far the hosts' monotonic clocks drift
apart while they run).
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

    def anchor(self, wall: datetime, at: float) -> None:
        """Show ``wall`` at Trio time ``at`` from now on (the database's clock)."""
        self._wall0, self._trio0 = wall, at

    def trio_time(self, at: datetime) -> float:
        """The Trio time at which ``now()`` reaches ``at``."""
        return self._trio0 + (at - self._wall0).total_seconds()
