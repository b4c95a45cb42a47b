"""A TCP proxy between the engine and a real server, that a test can cut.

    async with tcp_proxy("127.0.0.1", 5432) as proxy:
        dsn = f"postgresql://postgres@127.0.0.1:{proxy.port}/test"
        ...
        proxy.refuse()      # the server is gone: open connections are reset, new ones closed at once
        proxy.blackhole()   # the network is gone: bytes are held back, nothing answers
        proxy.forward()     # back to normal
        proxy.hold_replies_after(b"marker")  # once the server sends `marker` to a client,
                            # nothing more the clients send reaches the server (an ack is lost)
        proxy.hold_one(rng)  # one open connection (chosen with rng) goes silent, the others go on
        proxy.delay_s = 0.2  # every chunk, both ways, waits this long first
        proxy.server_ports()  # the local ports of the connections to the server (pg_stat_activity)

It runs in the test's Trio loop; the stores reach it from their worker threads as they
would reach the server. No stand-in for PostgreSQL: every byte that gets through is the
real server's.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Literal

import attrs
import trio

Mode = Literal["forward", "refuse", "blackhole"]
_CHUNK = 65536


@attrs.define(eq=False)
class _Connection:
    scope: trio.CancelScope
    server_port: int
    held: bool = False


class TcpProxy:
    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self.mode: Mode = "forward"
        self.connections = 0  # accepted so far
        self._live: set[trio.CancelScope] = set()
        self._open: list[_Connection] = []
        self.delay_s = 0.0
        self._changed = trio.Event()
        self._marker: bytes | None = None
        self.holding = False  # the marker went by: the clients' bytes are held back from now on

    def hold_replies_after(self, marker: bytes) -> None:
        self._marker, self.holding = marker, False

    def forward(self) -> None:
        self._set("forward")

    def refuse(self) -> None:
        self._set("refuse")
        for scope in list(self._live):
            scope.cancel()

    def blackhole(self) -> None:
        self._set("blackhole")

    def hold_one(self, rng: random.Random) -> int | None:
        """Hold back every byte of one open connection (its server port), until ``release``."""
        candidates = sorted((c for c in self._open if not c.held), key=lambda c: c.server_port)
        if not candidates:
            return None
        chosen = rng.choice(candidates)
        chosen.held = True
        return chosen.server_port

    def release(self) -> None:
        """Every held connection and the delay back to normal (the mode is left as it is)."""
        for connection in self._open:
            connection.held = False
        self.delay_s = 0.0
        self._changed.set()
        self._changed = trio.Event()

    def server_ports(self) -> list[int]:
        return [c.server_port for c in self._open]

    def _set(self, mode: Mode) -> None:
        self.mode = mode
        self._marker, self.holding = None, False
        self._changed.set()
        self._changed = trio.Event()

    async def _handle(self, client: trio.SocketStream) -> None:
        self.connections += 1
        async with client:
            if self.mode == "refuse":
                return
            try:
                server = await trio.open_tcp_stream(*self.target)
            except OSError:
                return
            with trio.CancelScope() as scope:
                connection = _Connection(scope, server.socket.getsockname()[1])
                self._live.add(scope)
                self._open.append(connection)
                try:
                    async with server, trio.open_nursery() as pipes:
                        pipes.start_soon(self._pipe, client, server, True, connection)
                        pipes.start_soon(self._pipe, server, client, False, connection)
                finally:
                    self._live.discard(scope)
                    self._open.remove(connection)

    async def _pipe(self, source: trio.SocketStream, sink: trio.SocketStream, upstream: bool,
                    connection: _Connection) -> None:
        try:
            while data := await source.receive_some(_CHUNK):
                if self.delay_s:
                    await trio.sleep(self.delay_s)
                while self.mode == "blackhole" or (upstream and self.holding) or connection.held:  # held back
                    await self._changed.wait()
                if not upstream and self._marker is not None and self._marker in data:
                    self.holding = True
                if self.mode == "refuse":
                    return
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            with trio.CancelScope(shield=True):  # one side gone: end the other too
                await sink.aclose()


@asynccontextmanager
async def tcp_proxy(host: str, port: int) -> AsyncIterator[TcpProxy]:
    proxy = TcpProxy(host, port)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, proxy._handle, 0, host="127.0.0.1"))
        proxy.port = listeners[0].socket.getsockname()[1]
        try:
            yield proxy
        finally:
            nursery.cancel_scope.cancel()
