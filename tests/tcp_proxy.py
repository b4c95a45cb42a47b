"""A TCP proxy between the engine and a real server, that a test can cut.

    async with tcp_proxy("127.0.0.1", 5432) as proxy:
        dsn = f"postgresql://postgres@127.0.0.1:{proxy.port}/test"
        ...
        proxy.refuse()      # the server is gone: open connections are reset, new ones closed at once
        proxy.blackhole()   # the network is gone: bytes are held back, nothing answers
        proxy.forward()     # back to normal
        proxy.hold_replies_after(b"marker")  # once the server sends `marker` to a client,
                            # nothing more the clients send reaches the server (an ack is lost)

It runs in the test's Trio loop; the stores reach it from their worker threads as they
would reach the server. No stand-in for PostgreSQL: every byte that gets through is the
real server's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Literal

import trio

Mode = Literal["forward", "refuse", "blackhole"]
_CHUNK = 65536


class TcpProxy:
    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self.mode: Mode = "forward"
        self.connections = 0  # accepted so far
        self._live: set[trio.CancelScope] = set()
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
                self._live.add(scope)
                try:
                    async with server, trio.open_nursery() as pipes:
                        pipes.start_soon(self._pipe, client, server, True)
                        pipes.start_soon(self._pipe, server, client, False)
                finally:
                    self._live.discard(scope)

    async def _pipe(self, source: trio.SocketStream, sink: trio.SocketStream, upstream: bool) -> None:
        try:
            while data := await source.receive_some(_CHUNK):
                while self.mode == "blackhole" or (upstream and self.holding):  # held back
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
