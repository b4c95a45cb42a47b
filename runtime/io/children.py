"""``Children``: the child executions of run-runbook steps, seen from the runtime.

Starting and cancelling a child is I/O the execution shell hands over after its commit
(``StartChild``, ``CancelChild``); each runs as a task of the runtime, so it outlives a
parent that parks meanwhile. A cancel that another process's owner has not answered in time
is queued there (its next owner applies it): for the parent, that is done. A start is idempotent: the child's id and idempotency key come
from the parent, the step and its attempt, so a parent that asks again after a restart finds
the child it already has (and, if that child has already ended, hears of its end again).

A child the store does not admit (``FanoutLimit``: too many under its root or in its
tenant) fails its parent's step ``fanout_limit``; one that cannot start for another reason
(an unknown runbook, its root or parent ended meanwhile) ``child_failed``. A start the
store could not take (it is away) is tried again: it is idempotent.

A parent's cancel of its child is handed over after the parent's commit, and tried again
while the store cannot be reached (it used to end the process). A process that stops in
between (a crash, a lost lease) leaves the child running under an ended parent. Such a
child is cancelled when it is found (``abandoned``): at recovery, and, with several processes,
every third of the lease by its owner.

``finished`` is the one place where the end of a child becomes a message to its parent
(``ChildFinished``): the runtime calls it for every committed finished state of an
execution that has a parent. Nothing polls. ``ChildrenHost`` is all it reaches of the
runtime: the one start of an execution, cancel, and ``tell``, which hands a message to an
execution wherever it runs (this process, or the one that owns it).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from runtime.core.effects import CancelChild, StartChild
from runtime.core.messages import ChildFinished
from runtime.kinds.run_runbook import NOT_STARTED
from runtime.model import Execution, Lineage, StepError
from runtime.model.errors import (
    CommandQueued,
    Conflict,
    FanoutLimit,
    Fenced,
    NotFound,
    RunbookError,
    StoreUnavailable,
)
from runtime.model.types import StartResult

logger = logging.getLogger("runbooks.runtime")
RETRY_S, RETRY_MAX_S = 0.1, 5.0  # a child's start or cancel while the store is away: backoff


@attrs.frozen
class ChildrenHost:
    start: Callable[..., Awaitable[StartResult]]  # the start of an execution, as the API starts one
    cancel: Callable[[str, str, str], Awaitable[Any]]  # (execution id, reason, actor)
    tell: Callable[[str, ChildFinished], None]  # to an execution, wherever it runs


class Children:
    def __init__(self, host: ChildrenHost, nursery: trio.Nursery) -> None:
        self._host = host
        self._nursery = nursery
        self._cancelling: set[str] = set()  # children whose cancel is in flight

    def start(self, parent_id: str, effect: StartChild) -> None:
        self._nursery.start_soon(self._start, parent_id, effect, name=f"child {effect.child_id} of {parent_id}")

    async def _start(self, parent_id: str, effect: StartChild) -> None:
        key = f"child:{parent_id}:{effect.step_id}:{effect.attempt}"
        lineage = Lineage(parent_id, effect.step_id, effect.depth, effect.root_id)
        delay = RETRY_S
        while True:  # (while the store is away: the start is idempotent, by its key)
            try:
                result = await self._host.start(
                    effect.runbook_id, effect.input, effect.context, version=effect.version, idempotency_key=key,
                    force=True, actor=f"execution:{parent_id}", parent=lineage, execution_id=effect.child_id)
                break
            except StoreUnavailable as exc:
                delay = await _again(f"the start of child {effect.child_id} of {parent_id}", delay, exc)
            except RunbookError as exc:
                self._start_refused(parent_id, effect, exc)
                return
        if result.execution.status.finished:  # it ended before this parent heard of it
            self.finished(result.execution)

    def _start_refused(self, parent_id: str, effect: StartChild, exc: RunbookError) -> None:
        if isinstance(exc, FanoutLimit):
            self._not_started(parent_id, effect, StepError("fanout_limit", str(exc)))
            return
        error = StepError("child_failed", f"the child runbook '{effect.runbook_id}' could not start: {exc}")
        self._not_started(parent_id, effect, error)

    def _not_started(self, parent_id: str, effect: StartChild, error: StepError) -> None:
        self._host.tell(parent_id, ChildFinished(effect.step_id, effect.child_id, NOT_STARTED, error=error))

    def cancel(self, parent_id: str, effect: CancelChild) -> None:
        if effect.child_id in self._cancelling:
            return
        self._cancelling.add(effect.child_id)
        self._nursery.start_soon(self._cancel, parent_id, effect, name=f"cancel child {effect.child_id}")

    def abandoned(self, child_id: str, parent_id: str) -> None:
        """A child found unfinished under a parent that has ended: the parent's cancel, handed
        over after its commit, was lost (the process stopped before the child's cancel was
        committed). It is cancelled now, as the parent would have."""
        logger.warning("execution %s is a child of %s, which has ended: cancelling it", child_id, parent_id)
        self.cancel(parent_id, CancelChild(child_id, f"parent execution {parent_id} ended"))

    async def _cancel(self, parent_id: str, effect: CancelChild) -> None:
        """Cancel the child, trying again while the store cannot be reached (a cancel is
        applied once: a second one finds the child ended). A process that no longer owns
        what it writes leaves the child to the owners' sweep of abandoned children."""
        delay = RETRY_S
        try:
            while True:
                try:
                    await self._host.cancel(effect.child_id, effect.reason, f"execution:{parent_id}")
                except (Conflict, NotFound):
                    pass  # it has ended already, or never started
                except CommandQueued:  # its owner (another process) did not answer in time: whoever runs it next applies it
                    logger.info("the cancel of child %s of %s is queued for its owner", effect.child_id, parent_id)
                except Fenced as exc:
                    logger.warning("the cancel of child %s of %s is left to its owner: %s", effect.child_id,
                                   parent_id, exc)
                except StoreUnavailable as exc:
                    delay = await _again(f"the cancel of child {effect.child_id} of {parent_id}", delay, exc)
                    continue
                return
        finally:
            self._cancelling.discard(effect.child_id)

    def finished(self, child: Execution) -> None:
        """Tell the parent of ``child`` (a finished execution) that it ended."""
        parent_id, step_id = child.parent_execution_id, child.parent_step_id
        if parent_id is None or step_id is None:
            return
        self._host.tell(parent_id, ChildFinished(step_id, child.id, child.status.value, child.output, child.error))


async def _again(what: str, delay: float, exc: Exception) -> float:
    """Wait ``delay`` before ``what`` is tried again (the store is away): the next delay."""
    logger.warning("%s failed, trying again in %.1f s: %s", what, delay, exc)
    await trio.sleep(delay)
    return min(delay * 2, RETRY_MAX_S)
