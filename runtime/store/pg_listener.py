"""``Listener``: the one LISTEN connection of a process, in a worker thread of its own.

PostgreSQL notifications arrive on a dedicated connection that the thread reads with
psycopg's blocking ``notifies()``; each payload is handed to the Trio side with
``TrioToken.run_sync_soon`` (in arrival order), so nothing of Trio runs in the thread and
nothing blocks the event loop. A lost connection is retried every second; ``on_connected``
tells the Trio side when the stream is (again) complete, so it can catch up on what it may
have missed meanwhile. Cancelling ``run`` ends the thread within half a second.

A connection can also go silent without breaking (a network that drops packets, a proxy that
stalls): nothing would tell. So the process announces a ping of its own with every heartbeat
(``ping:<nonce>:<n>``, on another connection); when none of its own comes back on this one
within ``silence_s``, the connection is given up as lost (``on_connected(False)``) and a new
one is opened. The pings of the other processes are dropped here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import trio
from psycopg import sql

logger = logging.getLogger("runbooks.cluster")
POLL_S = 0.5
RECONNECT_S = 1.0


class Listener:
    def __init__(self, connect: Callable[[], psycopg.Connection[Any]], channel: str,
                 on_notice: Callable[[str], None], on_connected: Callable[[bool], None],
                 own_ping: str, silence_s: float) -> None:
        self._connect = connect
        self._channel = channel
        self._on_notice = on_notice
        self._on_connected = on_connected
        self._own_ping = own_ping  # the prefix of this process's pings
        self._silence_s = silence_s

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen until cancelled; ``started`` once the first LISTEN is in place."""
        token = trio.lowlevel.current_trio_token()
        stop = threading.Event()
        listening = trio.Event()

        def connected(state: bool) -> None:
            self._on_connected(state)
            if state:
                listening.set()

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: trio.to_thread.run_sync(
                    self._loop, token, stop, connected, abandon_on_cancel=True, thread_name="runbooks-listener"))
                await listening.wait()
                task_status.started()
        finally:
            stop.set()

    def _loop(self, token: trio.lowlevel.TrioToken, stop: threading.Event, connected: Callable[[bool], None]) -> None:
        while not stop.is_set():
            try:
                with self._connect() as conn:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
                    token.run_sync_soon(connected, True)
                    self._listen(conn, token, stop)
            except trio.RunFinishedError:
                return
            except (psycopg.Error, Silent) as exc:
                logger.warning("notifications: connection lost (%s); reconnecting", exc)
                try:
                    token.run_sync_soon(connected, False)
                except trio.RunFinishedError:
                    return
                stop.wait(RECONNECT_S)

    def _listen(self, conn: psycopg.Connection[Any], token: trio.lowlevel.TrioToken, stop: threading.Event) -> None:
        heard = time.monotonic()
        while not stop.is_set():
            for notice in conn.notifies(timeout=POLL_S):
                if notice.payload.startswith("ping:"):
                    if notice.payload.startswith(self._own_ping):
                        heard = time.monotonic()
                    continue
                token.run_sync_soon(self._on_notice, notice.payload)
            if time.monotonic() - heard > self._silence_s:
                raise Silent(f"none of this process's pings came back within {self._silence_s:g} s")


class Silent(Exception):
    """The LISTEN connection did not break, but hears nothing."""
