"""``Timers``: every execution's next deadline in one heap, watched by one task.

An execution arms one deadline at a time (``arm``: a new one replaces the old, ``None``
clears it), whether its actor runs or it is parked with no task at all. When a deadline
comes, ``fire(execution_id, at)`` is called from the timer task; the runtime turns that
into a ``Tick`` message, reactivating a parked execution. Replaced deadlines stay in the
heap until they come up and are skipped (the heap is rebuilt when they pile up).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable
from datetime import datetime

import trio

from runtime.shell.clock import Clock

Fire = Callable[[str, datetime], None]


class Timers:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._heap: list[tuple[float, int, str, datetime]] = []
        self._armed: dict[str, tuple[float, int]] = {}  # execution id -> its live heap entry
        self._order = itertools.count()
        self._sleep: trio.CancelScope | None = None

    def __len__(self) -> int:
        return len(self._armed)

    def arm(self, execution_id: str, at: datetime | None) -> None:
        if at is None:
            self._armed.pop(execution_id, None)
            return
        when = self._clock.trio_time(at)
        entry = (when, next(self._order))
        self._armed[execution_id] = entry
        heapq.heappush(self._heap, (*entry, execution_id, at))
        if self._sleep is not None and when < self._sleep.deadline:
            self._sleep.deadline = when
        if len(self._heap) > 2 * len(self._armed) + 1024:
            self._compact()

    async def run(self, fire: Fire) -> None:
        """Fire deadlines as they come, until cancelled."""
        while True:
            with trio.CancelScope(deadline=self._heap[0][0] if self._heap else math.inf) as sleep:
                self._sleep = sleep
                await trio.sleep_forever()
            self._sleep = None
            now = trio.current_time()
            while self._heap and self._heap[0][0] <= now:
                when, order, execution_id, at = heapq.heappop(self._heap)
                if self._armed.get(execution_id) == (when, order):
                    del self._armed[execution_id]
                    fire(execution_id, at)

    def _compact(self) -> None:
        live = {(when, order): eid for eid, (when, order) in self._armed.items()}
        self._heap = [entry for entry in self._heap if (entry[0], entry[1]) in live]
        heapq.heapify(self._heap)
