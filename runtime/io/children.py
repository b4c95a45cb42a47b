"""``Children``: the child executions of run-runbook steps, seen from the runtime.

Starting and cancelling a child is I/O the execution shell hands over after its commit
(``StartChild``, ``CancelChild``); each runs as a task of the runtime, so it outlives a
parent that parks meanwhile. A start is idempotent: the child's id and idempotency key come
from the parent, the step and its attempt, so a parent that asks again after a restart finds
the child it already has (and, if that child has already ended, hears of its end again).

``finished`` is the one place where the end of a child becomes a message to its parent
(``ChildFinished``): the runtime calls it for every committed finished state of an
execution that has a parent. Nothing polls.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from runtime.core.effects import CancelChild, StartChild
from runtime.core.messages import ChildFinished
from runtime.model import Execution, StepError
from runtime.model.errors import Conflict, NotFound, RunbookError
from runtime.model.wire import to_json

if TYPE_CHECKING:
    from runtime.api.runtime import Runtime

logger = logging.getLogger("runbooks.runtime")


class Children:
    def __init__(self, runtime: Runtime, nursery: trio.Nursery) -> None:
        self._runtime = runtime
        self._nursery = nursery

    def start(self, parent_id: str, effect: StartChild) -> None:
        self._nursery.start_soon(self._start, parent_id, effect, name=f"child {effect.child_id} of {parent_id}")

    async def _start(self, parent_id: str, effect: StartChild) -> None:
        key = f"child:{parent_id}:{effect.step_id}:{effect.attempt}"
        try:
            result = await self._runtime.start_execution(
                effect.runbook_id, effect.input, effect.context, version=effect.version, idempotency_key=key,
                force=True, actor=f"execution:{parent_id}", parent=(parent_id, effect.step_id, effect.depth),
                execution_id=effect.child_id)
        except RunbookError as exc:
            error = StepError("child_failed", f"the child runbook '{effect.runbook_id}' could not start: {exc}")
            self._tell(parent_id, ChildFinished(effect.step_id, effect.child_id, "not started", error=error))
            return
        if result.execution.status.finished:  # it ended before this parent heard of it
            self.finished(result.execution)

    def cancel(self, parent_id: str, effect: CancelChild) -> None:
        self._nursery.start_soon(self._cancel, parent_id, effect, name=f"cancel child {effect.child_id}")

    async def _cancel(self, parent_id: str, effect: CancelChild) -> None:
        try:
            await self._runtime.cancel(effect.child_id, effect.reason, actor=f"execution:{parent_id}")
        except (Conflict, NotFound):
            pass  # it has ended already, or never started

    def finished(self, child: Execution) -> None:
        """Tell the parent of ``child`` (a finished execution) that it ended."""
        parent_id, step_id = child.parent_execution_id, child.parent_step_id
        if parent_id is None or step_id is None:
            return
        self._tell(parent_id, ChildFinished(step_id, child.id, child.status.value, child.output, child.error))

    def _tell(self, parent_id: str, message: ChildFinished) -> None:
        runtime = self._runtime
        if runtime.cluster is not None and not runtime.owns(parent_id):
            # Another process runs the parent (or nobody now): a command it applies, durably queued
            body = {"stepId": message.step_id, "childId": message.child_id, "status": message.status,
                    "output": message.output, "error": to_json(message.error)}
            self._nursery.start_soon(runtime.cluster.send, parent_id, "child_finished", body,
                                     name=f"child {message.child_id} ended")
            return
        runtime.directory.post(parent_id, message)
