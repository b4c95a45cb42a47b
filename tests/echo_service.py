"""A real local HTTP service that answers each request with the request itself, as the engine
sent it (percent-encoded query, JSON body, ``Authorization`` header...): the "service that
echoes the request" through which encoded forms of a secret could come back.

    async with echo_service() as url:
        ...  # POST f"{url}/json" answers {"request": "<the raw request>"}; f"{url}/text" answers it as text
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import trio

__all__ = ["echo_service"]

MAX_REQUEST_BYTES = 1 << 20


@asynccontextmanager
async def echo_service() -> AsyncIterator[str]:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, _answer, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            nursery.cancel_scope.cancel()


async def _answer(stream: trio.SocketStream) -> None:
    async with stream:
        raw = await _read_request(stream)
        if raw is None:
            return
        target = raw.split(b" ", 2)[1] if raw.count(b" ") >= 2 else b"/"
        text = raw.decode("utf-8", "replace")
        if target.startswith(b"/text"):
            body, media_type = text.encode(), b"text/plain; charset=utf-8"
        else:
            body, media_type = json.dumps({"request": text}).encode(), b"application/json"
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Type: " + media_type + b"\r\nContent-Length: "
                              + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)


async def _read_request(stream: trio.SocketStream) -> bytes | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        if not chunk or len(data) > MAX_REQUEST_BYTES:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < min(length, MAX_REQUEST_BYTES):
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body
