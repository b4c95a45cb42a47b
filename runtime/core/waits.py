"""``Waits``: an execution's parked steps, as one transition sees them.

A parked step holds no task and no slot: an approval waiting for decisions, a step waiting
for an event, a run-runbook step waiting for its child. Each may have a deadline (its kind's
``timeout`` hook fires when it passes, by ``due``), and a step waiting for an event holds a
subscription, stopped when the step stops waiting.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

from runtime.core import effects as fx
from runtime.core.draft import Draft
from runtime.core.state import ExecutionState


class Waits:
    def __init__(self, state: ExecutionState, draft: Draft, outbox: fx.Outbox) -> None:
        self._state = state
        self._draft = draft
        self._outbox = outbox

    def clear(self) -> None:
        """A new incarnation: nothing is parked or subscribed until the kinds resume."""
        self._state.parked.clear()
        self._state.subscriptions.clear()

    def park(self, step_id: str, deadline: datetime | None) -> None:
        self._state.parked[step_id] = deadline

    def unpark(self, step_id: str) -> None:
        self._state.parked.pop(step_id, None)

    def subscribe(self, step_id: str, event_type: str, key: str, filter: Mapping[str, Any] | None) -> None:
        self._state.subscriptions[step_id] = (event_type, key)
        self._outbox.emit(fx.Subscribe(step_id, self._draft.ex.tenant_id, event_type, key, filter))

    def unsubscribe(self, step_id: str) -> None:
        """Stop the step's subscription, if it has one."""
        found = self._state.subscriptions.pop(step_id, None)
        if found is not None:
            self._outbox.emit(fx.Unsubscribe(step_id, self._draft.ex.tenant_id, *found))

    def due(self, at: datetime) -> Iterator[str]:
        """The steps whose deadline is ``at`` or earlier, each while it is still parked."""
        parked = self._state.parked
        for step_id, deadline in list(parked.items()):
            if deadline is not None and at >= deadline and step_id in parked:
                yield step_id

    def deadlines(self) -> list[datetime]:
        return [deadline for deadline in self._state.parked.values() if deadline is not None]
