"""Every request is answered, and a keep-alive connection is never left half-dead.

The failure this prevents (found with schemathesis, reproduced with a raw socket): a client
sends the headers of a POST, then its body in a second segment; the gateway refuses the
request before the body has arrived (a bad identity header is refused before any view reads
the body). hypercorn then decides to close the connection, since the request was not read
to its end, but it does so from the app's task, right after telling the app that the
exchange is over, and quart-trio answers that by cancelling the app's task: the close is
cancelled half-way. The connection stays open; the body arrives, hypercorn's reader parses
the next request, waits for a go-ahead that never comes, and that request (and every later
one on the connection) gets no answer at all.

``CompleteExchange`` wraps the ASGI app and makes that impossible in two ways:

- a response starts only once the request body has arrived whole (quart-trio reads it in
  the background anyway; this only waits for it), up to ``BODY_WAIT_S``; so the exchange
  ends normally and the connection is reused as keep-alive should be. A body declared
  larger than ``MAX_BODY_BYTES`` (413), or one that does not arrive in time, is not waited
  for: that response says ``Connection: close``, so no client sends another request on it;
- the last message of every response is sent shielded from cancellation (bounded by
  ``CLOSE_S``), so whatever hypercorn does at the end of an exchange (recycle the connection
  for the next request, or close it) runs to its end.

It also refuses, before the app sees it, a request that carries both ``Content-Length`` and
``Transfer-Encoding`` (RFC 9112 section 6.3): where its body ends depends on which header
is believed, so a proxy in front and the gateway could cut the stream into different
requests (request smuggling). The answer is 400 with ``Connection: close``, and nothing more
is read from that connection.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

import trio

from gateway.bodies import MAX_BODY_BYTES
from gateway.problems import PROBLEM_JSON, ProblemBody

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Any, Receive, Send], Awaitable[None]]

BODY_WAIT_S: Final = 10.0
CLOSE_S: Final = 5.0


class CompleteExchange:
    """ASGI middleware: see the module docstring."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        headers = scope.get("headers", ())
        if _ambiguous_length(headers):
            await _refuse_ambiguous(receive, send)
            return
        exchange = _Exchange(headers)
        await self.app(scope, exchange.receiver(receive), exchange.sender(send))


def _ambiguous_length(headers: Any) -> bool:
    names = {bytes(name).lower() for name, _ in headers}
    return b"content-length" in names and b"transfer-encoding" in names


async def _refuse_ambiguous(receive: Receive, send: Send) -> None:
    await _drain(receive)  # answering mid-body would race hypercorn's own error answer
    body = ProblemBody(400, "bad request", "a request may not carry both Content-Length and "
                                           "Transfer-Encoding; the connection is closed").to_json()
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": 400, "headers": [
        (b"content-type", PROBLEM_JSON.encode()), (b"content-length", str(len(data)).encode()),
        (b"connection", b"close")]})
    with trio.move_on_after(CLOSE_S, shield=True):
        await send({"type": "http.response.body", "body": data})


async def _drain(receive: Receive) -> None:
    """Read what the server took as the body, within ``BODY_WAIT_S`` and ``MAX_BODY_BYTES``."""
    received = 0
    with trio.move_on_after(BODY_WAIT_S):
        while received <= MAX_BODY_BYTES:
            message = await receive()
            received += len(message.get("body", b""))
            if message.get("type") != "http.request" or not message.get("more_body", False):
                return


class _Exchange:
    """What one request has received of its body, and how its response is sent."""

    def __init__(self, headers: Any) -> None:
        self.declared = _declared_length(headers)
        self.received = 0
        self.complete = trio.Event()
        if self.declared == 0:
            self.complete.set()

    def receiver(self, receive: Receive) -> Receive:
        async def wrapped() -> Message:
            message = await receive()
            if message.get("type") == "http.request":
                self.received += len(message.get("body", b""))
                if not message.get("more_body", False):
                    self.complete.set()
            elif message.get("type") == "http.disconnect":
                self.complete.set()
            return message

        return wrapped

    def sender(self, send: Send) -> Send:
        async def wrapped(message: Message) -> None:
            kind = message.get("type")
            if kind == "http.response.start":
                await self._before_response(message)
            if kind == "http.response.body" and not message.get("more_body", False):
                with trio.move_on_after(CLOSE_S, shield=True):  # the end of the exchange runs whole
                    await send(message)
                return
            await send(message)

        return wrapped

    async def _before_response(self, message: Message) -> None:
        if not self.complete.is_set() and not self._too_large():
            with trio.move_on_after(BODY_WAIT_S):
                await self.complete.wait()
        if not self.complete.is_set():  # the rest of the body will not be read: no reuse
            headers = [(name, value) for name, value in message.get("headers", ())
                       if bytes(name).lower() != b"connection"]
            message["headers"] = [*headers, (b"connection", b"close")]

    def _too_large(self) -> bool:
        return max(self.declared or 0, self.received) > MAX_BODY_BYTES


def _declared_length(headers: Any) -> int | None:
    """The Content-Length; None when the length is not known (chunked); 0 without a body."""
    length = 0
    for name, value in headers:
        name = bytes(name).lower()
        if name == b"transfer-encoding":
            return None
        if name == b"content-length":
            try:
                length = int(bytes(value))
            except ValueError:
                return None
    return length
