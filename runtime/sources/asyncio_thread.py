"""An asyncio event loop in a thread of its own, for the clients that only run on asyncio.

nats-py is asyncio-only. Rather than run asyncio inside Trio (trio-asyncio replaces
asyncio's loop policy for the whole process and needs greenlet), its coroutines run on one
loop in a daemon thread, and ``AsyncioThread.call`` awaits them from Trio: the coroutine
is handed over with ``run_coroutine_threadsafe`` and its end wakes the Trio task through
the Trio token, so no Trio worker thread blocks while it runs. A Trio cancellation cancels
the asyncio task. A crossing costs tens of microseconds, so callers cross once per batch of
messages, never once per message.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import outcome
import trio

T = TypeVar("T")


class AsyncioThread:
    def __init__(self, name: str = "asyncio-bridge") -> None:
        self._loop = asyncio.SelectorEventLoop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    async def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the asyncio loop; its result (or its exception) here."""
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        box: list[outcome.Outcome[T]] = []
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)

        def finished(f: concurrent.futures.Future[T]) -> None:
            box.append(outcome.capture(f.result))
            try:
                token.run_sync_soon(done.set)
            except trio.RunFinishedError:
                pass

        future.add_done_callback(finished)
        try:
            await done.wait()
        except trio.Cancelled:
            future.cancel()
            raise
        return box[0].unwrap()

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)


_shared: AsyncioThread | None = None
_lock = threading.Lock()


def shared_loop() -> AsyncioThread:
    """The process's one asyncio thread (started on first use)."""
    global _shared
    with _lock:
        if _shared is None:
            _shared = AsyncioThread()
        return _shared
