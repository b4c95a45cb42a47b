"""``ExecutionState``: one execution as the core holds it between two messages.

``execution`` is the immutable snapshot (committed after each transition). The rest is what
the core keeps beside it while an actor runs the execution, all of it derived again from
the snapshot when an execution resumes from committed state: which attempt of which task
step is current, which parked steps have a deadline, the timer armed, and scheduling caches.
"""

from __future__ import annotations

from datetime import datetime

import attrs

from runtime.core.plan import Plan
from runtime.model import Execution, Step


@attrs.define(eq=False)
class ExecutionState:
    plan: Plan
    execution: Execution
    attempts: dict[str, str] = attrs.Factory(dict)  # task step id -> its current attempt id
    parked: dict[str, datetime | None] = attrs.Factory(dict)  # parked step id -> deadline
    subscriptions: dict[str, tuple[str, str]] = attrs.Factory(dict)  # step id -> (event type, key)
    incarnation: int = 0
    issued: int = 0  # attempt ids issued in this incarnation
    wake_at: datetime | None = None  # the deadline of the armed timer
    armed: bool = False  # whether this incarnation has armed (or cleared) the timer yet
    # scheduling caches (derived): steps still pending, and the dependency that blocked each
    pending: list[Step] = attrs.Factory(list)
    blocked_on: dict[str, str] = attrs.Factory(dict)

    @classmethod
    def of(cls, plan: Plan, execution: Execution) -> ExecutionState:
        """The state of a committed execution before its ``Begin``."""
        return cls(plan, execution, pending=list(plan.steps))

    @property
    def idle(self) -> bool:
        """Nothing runs: the execution only waits (for events, decisions, a resume), or ended."""
        return not self.attempts
