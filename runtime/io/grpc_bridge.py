"""grpcio under Trio: the runtime's gRPC channels and the two ways a call is awaited.

``Channels`` keeps one ``grpc.Channel`` per (target, tls) for the life of a runtime and
closes them all when the runtime closes. grpcio's own asyncio API (``grpc.aio``) cannot run
under Trio, so the calls use the synchronous channel:

- ``unary_call`` starts the call with ``.future(...)``; the future's done callback wakes the
  Trio task through its Trio token, so no thread waits for the answer. A Trio cancellation
  cancels the future: the call in flight is aborted and the server sees it cancelled.
- ``stream_exchange`` sends a fixed list of requests on a bidirectional stream and reads
  every response (server reflection is such a stream). grpcio offers only a blocking
  iterator here, so the reading runs in a worker thread; on a Trio cancellation the call is
  cancelled at once, which ends the thread's blocking read.

Both raise ``grpc.RpcError`` (also a ``grpc.Call``: ``code()``, ``details()``) for a
status other than OK; the caller decides what a status means.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import grpc
import trio

__all__ = ["Channels", "Metadata", "stream_exchange", "unary_call"]

Metadata = Sequence[tuple[str, str]]


class Channels:
    """One channel per (target, tls), opened on first use; ``close()`` closes every one."""

    def __init__(self) -> None:
        self._channels: dict[tuple[str, bool, str | None, str | None], grpc.Channel] = {}
        self._closed = False

    def get(self, target: str, tls: bool, *, authority: str | None = None,
            server_name: str | None = None) -> grpc.Channel:
        """The channel to ``target``; ``authority`` replaces the ``:authority`` sent (the name a
        caller asked for, when ``target`` is the address it resolved to) and ``server_name`` the
        name TLS verifies."""
        if self._closed:
            raise RuntimeError("the runtime's gRPC channels are closed")
        key = (target, tls, authority, server_name)
        channel = self._channels.get(key)
        if channel is None:
            options: list[tuple[str, str]] = []
            if authority is not None:
                options.append(("grpc.default_authority", authority))
            if tls and server_name is not None:
                options.append(("grpc.ssl_target_name_override", server_name))
            channel = (grpc.secure_channel(target, grpc.ssl_channel_credentials(), options=options) if tls
                       else grpc.insecure_channel(target, options=options))
            self._channels[key] = channel
        return channel

    def __len__(self) -> int:
        return len(self._channels)

    def close(self) -> None:
        """Close every channel (calls still in flight end as CANCELLED)."""
        self._closed = True
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            channel.close()


async def unary_call(channel: grpc.Channel, path: str, request: bytes, *, timeout_s: float,
                     metadata: Metadata) -> bytes:
    """Send one serialized request to ``path`` (``/pkg.Service/Method``); the serialized answer."""
    call = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
    future = call.future(request, timeout=timeout_s, metadata=tuple(metadata))
    await _done(future)
    error = future.exception()
    if error is not None:
        raise error
    result: bytes = future.result()
    return result


async def _done(future: grpc.Future[Any]) -> None:
    """Wait until ``future`` is done without a thread; a Trio cancellation cancels it."""
    token = trio.lowlevel.current_trio_token()
    finished = trio.Event()

    def wake(_: grpc.Future[Any]) -> None:  # runs on a grpcio thread (or here, if already done)
        try:
            token.run_sync_soon(finished.set)
        except trio.RunFinishedError:
            pass  # the Trio run ended meanwhile: nobody is waiting any more

    future.add_done_callback(wake)
    try:
        await finished.wait()
    except BaseException:  # trio.Cancelled (or KeyboardInterrupt): abort the call in flight
        future.cancel()
        raise


async def stream_exchange(channel: grpc.Channel, path: str, requests: Sequence[bytes], *,
                          timeout_s: float) -> list[bytes]:
    """Send ``requests`` on a bidirectional stream, half-close, and return every response."""
    call_stream = channel.stream_stream(path, request_serializer=None, response_deserializer=None)
    call: Any = call_stream(iter(list(requests)), timeout=timeout_s)
    read: Callable[[], list[bytes]] = lambda: list(call)  # noqa: E731 (blocks until the stream ends)
    try:
        return await trio.to_thread.run_sync(read, abandon_on_cancel=True)
    except BaseException:  # the thread is abandoned; cancelling the call ends its read at once
        call.cancel()
        raise
