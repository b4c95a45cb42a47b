"""``WatchHub``: committed snapshots on their way out: the recent ones, watchers, observers.

Every committed state of an execution is ``published`` here once it is durable. The hub
keeps the most recent snapshots (a bounded LRU: ``get`` answers from it), hands each state
to the watchers of that execution (``watch``: live, none lost however slowly a watcher
reads, up to 1,024 states behind, then its stream ends), and tells the observers
(``runtime.observers``: callables ``(what, data)``) that a step or an execution finished.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import trio

from runtime.io import tracing
from runtime.model import Execution
from runtime.model.errors import NotFound
from runtime.model.records import Change

logger = logging.getLogger("runbooks.runtime")
Observer = Callable[[str, Any], None]
WATCH_BUFFER = 1024


class WatchHub:
    def __init__(self, cache_size: int) -> None:
        self.observers: list[Observer] = []
        self._cache_size = cache_size
        self._recent: OrderedDict[str, Execution] = OrderedDict()
        self._watchers: dict[str, list[trio.MemorySendChannel[Execution]]] = {}

    def recent(self, execution_id: str) -> Execution | None:
        return self._recent.get(execution_id)

    def remember(self, execution: Execution) -> None:
        """A committed state read back (from the store): for ``recent`` only."""
        recent = self._recent
        recent[execution.id] = execution
        recent.move_to_end(execution.id)
        if len(recent) > self._cache_size:
            recent.popitem(last=False)

    def published(self, execution: Execution, change: Change | None = None) -> None:
        """``execution`` is committed (``change``: the records that made it, if any)."""
        self.remember(execution)
        watchers = self._watchers.get(execution.id)
        if watchers:
            self._feed(execution, watchers)
        if self.observers:
            if change is not None:
                for _, step_id, _, state in change.steps:
                    if state.status.finished:
                        self.notify("step.finished", (execution, step_id, state))
            if execution.status.finished:
                self.notify("execution.finished", execution)
        if execution.status.finished:
            tracing.emit_execution_span(execution)

    def _feed(self, execution: Execution, watchers: list[trio.MemorySendChannel[Execution]]) -> None:
        for watcher in list(watchers):
            try:
                watcher.send_nowait(execution)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                watcher.close()  # a consumer that cannot keep up is dropped, the engine is never slowed
                watchers.remove(watcher)
                continue
            if execution.status.finished:
                watcher.close()
        if execution.status.finished or not watchers:
            self._watchers.pop(execution.id, None)

    def watched(self, execution_id: str) -> bool:
        return execution_id in self._watchers

    def watched_ids(self) -> list[str]:
        return list(self._watchers)

    def follow(self, execution: Execution) -> None:
        """A committed state read from the store (another process runs the execution): to this
        process's watchers only; the observers hear of it where it runs."""
        self.remember(execution)
        watchers = self._watchers.get(execution.id)
        if watchers:
            self._feed(execution, watchers)

    def notify(self, what: str, data: Any) -> None:
        for observer in self.observers:
            try:
                observer(what, data)
            except Exception:  # an observer's bug must not take an execution down
                logger.exception("observer %r failed on %s", observer, what)

    async def watch(self, execution_id: str,
                    current: Callable[[], Awaitable[Execution | None]]) -> AsyncIterator[Execution]:
        """The execution's current state (``current()``), then every later committed state
        until it finishes. The watcher registers before reading, so no state falls between."""
        pair: tuple[trio.MemorySendChannel[Execution], trio.MemoryReceiveChannel[Execution]] = \
            trio.open_memory_channel(WATCH_BUFFER)
        send, receive = pair
        watchers = self._watchers.setdefault(execution_id, [])
        watchers.append(send)
        try:
            state = await current()
            if state is None:
                raise NotFound(f"execution {execution_id} not found")
            yield state
            seen = state.version
            with receive:
                while not state.status.finished:
                    try:
                        state = await receive.receive()
                    except trio.EndOfChannel:
                        return
                    if state.version > seen:
                        seen = state.version
                        yield state
        finally:
            send.close()
            listed = self._watchers.get(execution_id)
            if listed is not None and send in listed:
                listed.remove(send)
                if not listed:
                    del self._watchers[execution_id]
