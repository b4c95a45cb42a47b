"""``ExecutionHost``: everything an execution actor may reach of the runtime, in one frozen value.

The actor (``runtime.shell.execution``) gets this instead of the ``Runtime``: the clock, how to
load an execution and its plan, how to commit, the event router and the timers, where
committed states go, and whom to tell when it leaves; with several processes on one
database, the instance id its writes are fenced with and the commands queued for it. Nothing else of the runtime is
reachable from an actor, so the dependency points one way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import attrs

from runtime.core.effects import CancelChild, Notify, StartChild
from runtime.core.plan import Plan
from runtime.io.context import Services
from runtime.io.task_run import StepTypes
from runtime.model import Execution, RetryPolicy
from runtime.model.records import Change, ChangeResult, QueuedCommand
from runtime.shell.clock import Clock
from runtime.shell.commands import Applied, Queued
from runtime.shell.timers import Timers

if TYPE_CHECKING:
    from runtime.shell.events import EventRouter


@attrs.frozen
class ExecutionHost:
    clock: Clock
    load: Callable[[str], Awaitable[Execution | None]]  # the committed state, from the store
    recent: Callable[[str], Execution | None]  # the state committed here last, if still in memory
    plan_for: Callable[[Execution], Awaitable[Plan]]  # waits for custom types not registered yet
    commit: Callable[[Change], Awaitable[ChangeResult]]
    published: Callable[[Execution, Change | None], None]
    types: StepTypes
    services: Services
    default_policy: RetryPolicy
    router: EventRouter
    timers: Timers
    left: Callable[[str, Any, Execution | None], None]  # (execution id, address, final state or None)
    incarnation: Callable[[], int]
    # I/O the shell hands over once a transition is committed (each runs in the runtime's own
    # tasks, so it outlives an actor that parks): (execution id, effect)
    start_child: Callable[[str, StartChild], None]
    cancel_child: Callable[[str, CancelChild], None]
    notify: Callable[[str, Notify], None]
    # several processes on one database (None / no-ops otherwise)
    owner: str | None = None  # this process's instance id: every write is fenced with it
    pending_commands: Callable[[str], Awaitable[list[Queued]]] | None = None  # queued for an execution
    hand: Callable[[tuple[QueuedCommand, ...]], None] | None = None  # commands a commit queued, to actors here
    applied: Applied = attrs.field(factory=Applied)  # commands applied by this process: never twice
