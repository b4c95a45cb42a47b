"""Server-sent events of one execution: every committed state, live, until it finishes.

A stream has two halves. The *pump*, a task in the app's lifespan nursery, iterates
``runtime.shell.watch`` and hands each state on with ``send_nowait``: it never reaches a
checkpoint between two states, so the watch is re-entered (and its subscription held) before
any other task can commit a new state. The *body*, an async generator Quart iterates to
write the response, only receives from the pump's channel; it sends a comment line as a
heartbeat when nothing happened for ``HEARTBEAT_S`` and it holds no nursery or cancel scope
across a ``yield``. Closing the body (client gone, shutdown) cancels the pump.

Each state is one frame::

    event: execution
    data: {"id": ..., "status": ..., "steps": {...}}

"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import cast

import trio

from gateway.shapes import execution_json
from runtime import Execution, NotFound, RunbookError, Runtime

HEARTBEAT_S = 15.0
BUFFER = 256
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class Streams:
    """The live streams of one app; ``close_all`` ends them all (graceful shutdown)."""

    def __init__(self) -> None:
        self._pumps: set[trio.CancelScope] = set()
        self.closing = False

    @property
    def live(self) -> int:
        return len(self._pumps)

    def close_all(self) -> None:
        self.closing = True
        for scope in list(self._pumps):
            scope.cancel()

    def open(self, nursery: trio.Nursery, runtime: Runtime, execution_id: str, tenant_id: str,
             seen: int = 0) -> AsyncIterator[bytes]:
        """Start the pump in ``nursery``; return the body to stream (raises RuntimeError if closing).
        ``seen``: the ``Last-Event-ID`` of a client that resumes: states up to it are not sent again."""
        if self.closing:
            raise RuntimeError("the gateway is shutting down")
        send, receive = trio.open_memory_channel[Execution](BUFFER)
        scope = trio.CancelScope()
        nursery.start_soon(self._pump, runtime, execution_id, tenant_id, send, scope,
                           name=f"sse {execution_id}")
        self._pumps.add(scope)  # after start_soon: a closed nursery raises and nothing is left behind
        return self._body(receive, scope, runtime, execution_id, tenant_id, seen)

    async def _pump(self, runtime: Runtime, execution_id: str, tenant_id: str,
                    send: trio.MemorySendChannel[Execution], scope: trio.CancelScope) -> None:
        try:
            with scope, send:
                watch = cast(AsyncGenerator[Execution, None], runtime.watch(execution_id, tenant_id=tenant_id))
                async with aclosing(watch) as states:
                    async for execution in states:
                        send.send_nowait(execution)  # no checkpoint: the watch resumes at once
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError, NotFound):
            pass  # a reader that cannot keep up, or is gone, ends its own stream
        finally:
            self._pumps.discard(scope)

    async def _body(self, receive: trio.MemoryReceiveChannel[Execution], scope: trio.CancelScope,
                    runtime: Runtime, execution_id: str, tenant_id: str, seen: int) -> AsyncIterator[bytes]:
        last: Execution | None = None
        try:
            with receive:
                while True:
                    execution, ended = await _next_state(receive)
                    if ended:
                        break
                    if execution is None:
                        yield b": keep-alive\n\n"
                        continue
                    last = execution
                    if execution.version > seen:
                        yield frame(execution)
            if last is not None and not last.status.finished and not self.closing:
                latest = await _latest(runtime, execution_id, tenant_id)
                if latest is not None and latest.status.finished:  # dropped before the end: send the end
                    yield frame(latest)
        finally:
            scope.cancel()


async def _next_state(receive: trio.MemoryReceiveChannel[Execution]) -> tuple[Execution | None, bool]:
    """The next state, ``(None, False)`` after a quiet heartbeat period, ``(None, True)`` at the end."""
    with trio.move_on_after(HEARTBEAT_S):
        try:
            return await receive.receive(), False
        except trio.EndOfChannel:
            return None, True
    return None, False


async def _latest(runtime: Runtime, execution_id: str, tenant_id: str) -> Execution | None:
    try:
        return await runtime.fetch(execution_id, tenant_id=tenant_id)
    except RunbookError:
        return None


def frame(execution: Execution) -> bytes:
    """One event; its id is the execution's version, so ``Last-Event-ID`` resumes after it."""
    data = json.dumps(execution_json(execution), ensure_ascii=False, separators=(",", ":"))
    return f"id: {execution.version}\nevent: execution\ndata: {data}\n\n".encode()


def last_event_id(header: str | None) -> int:
    """The version a resuming client has seen (0: none, or a header that is not ours)."""
    text = (header or "").strip()
    return int(text) if text.isdigit() and len(text) < 19 else 0
