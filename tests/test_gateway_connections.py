"""Every request is answered: refused requests, late bodies, 100-continue, oversized bodies and
a fuzzing burst over keep-alive connections, several at once.

A raw HTTP/1.1 client (h11 over a Trio socket) sends each request the way a real client may:
the headers, then, after a pause, the body in a second segment. Before the fix, a request
refused before its body arrived left the connection open but dead, and the next request on
it was never answered."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import h11
import pytest
import trio

from gateway.routes import ROUTES
from tests.gateway_fixtures import echo_runbook, running_gateway

ANSWER_WITHIN_S = 5.0
pytestmark = pytest.mark.slow


@attrs.frozen
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


class RawClient:
    """One keep-alive connection; reconnects when the server closes (or asks to close) it."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.stream: trio.SocketStream | None = None
        self.conn = h11.Connection(h11.CLIENT)
        self.connections = 0

    async def _connect(self) -> None:
        if self.stream is not None:
            await self.stream.aclose()
        self.stream = await trio.open_tcp_stream(self.host, self.port)
        self.conn = h11.Connection(h11.CLIENT)
        self.connections += 1

    async def request(self, method: str, target: str, headers: list[tuple[str, bytes]] | None = None,
                      body: bytes = b"", *, pause_s: float = 0.0, expect_continue: bool = False) -> Answer:
        if self.stream is None or self.conn.our_state is not h11.IDLE:
            await self._connect()
        assert self.stream is not None
        all_headers = [("Host", b"gateway.test"), *(headers or [])]
        if body or method in ("POST", "PUT", "PATCH"):
            all_headers.append(("Content-Length", str(len(body)).encode()))
        if expect_continue:
            all_headers.append(("Expect", b"100-continue"))
        await self.stream.send_all(self.conn.send(h11.Request(method=method, target=target, headers=all_headers)))
        with trio.fail_after(ANSWER_WITHIN_S):
            if expect_continue:
                informational = await self._next_event()
                assert isinstance(informational, h11.InformationalResponse), informational
                assert informational.status_code == 100
            if pause_s:
                await trio.sleep(pause_s)  # the body comes in a later segment
            if body:
                await self.stream.send_all(self.conn.send(h11.Data(data=body)))
            await self.stream.send_all(self.conn.send(h11.EndOfMessage()))
            return await self._answer()

    async def _next_event(self) -> Any:
        assert self.stream is not None
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.conn.receive_data(await self.stream.receive_some(65536))

    async def _answer(self) -> Answer:
        response = await self._next_event()
        while isinstance(response, h11.InformationalResponse):
            response = await self._next_event()
        assert isinstance(response, h11.Response), response
        body = b""
        while not isinstance(event := await self._next_event(), h11.EndOfMessage):
            assert isinstance(event, h11.Data), event
            body += event.data
        headers = {name.decode().lower(): value.decode("latin-1") for name, value in response.headers}
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        return Answer(response.status_code, headers, body)

    async def aclose(self) -> None:
        if self.stream is not None:
            await self.stream.aclose()


@asynccontextmanager
async def gateway() -> AsyncIterator[tuple[str, int]]:
    async with running_gateway() as gw:
        await gw.register(echo_runbook())
        host, port = gw.url.removeprefix("http://").split(":")
        yield host, int(port)


JSON = [("Content-Type", b"application/json")]
REFUSALS = {
    "identity header": ("POST", "/api/v1/events", [("X-User-Id", b"\x84"), *JSON], b'{"type": "t", "correlationKey": "k"}'),
    "identity too long": ("POST", "/api/v1/runbooks/validate", [("X-User-Id", b"0" * 201), *JSON], b"{}"),
    "media type": ("POST", "/api/v1/events", [("Content-Type", b"text/plain")], b"hello"),
    "method": ("PUT", "/api/v1/events", JSON, b'{"x": 1}'),
    "route": ("POST", "/api/v1/nowhere", JSON, b'{"x": 1}'),
    "query": ("POST", "/api/v1/executions?force=maybe", JSON, b'{"runbookId": "echo"}'),
}


@pytest.mark.parametrize("kind", sorted(REFUSALS))
async def test_a_request_refused_before_its_body_arrives_leaves_the_connection_usable(kind: str) -> None:
    method, target, headers, body = REFUSALS[kind]
    async with gateway() as (host, port):
        client = RawClient(host, port)
        try:
            refused = await client.request(method, target, headers, body, pause_s=0.05)
            assert 400 <= refused.status < 500
            for _ in range(3):  # the same connection answers the next requests at once
                ok = await client.request("GET", "/api/v1/runbooks")
                assert ok.status == 200
            assert client.connections == 1
        finally:
            await client.aclose()


async def test_expect_100_continue_is_answered_and_the_connection_reused() -> None:
    async with gateway() as (host, port):
        client = RawClient(host, port)
        try:
            started = await client.request("POST", "/api/v1/executions", JSON, b'{"runbookId": "echo"}',
                                           expect_continue=True)
            assert started.status == 201
            refused = await client.request("POST", "/api/v1/events", [("X-Tenant-Id", b"\xff"), *JSON], b"{}",
                                           expect_continue=True, pause_s=0.05)
            assert refused.status == 400
            assert (await client.request("GET", "/health")).status == 200
            assert client.connections == 1
        finally:
            await client.aclose()


async def test_a_body_over_the_limit_is_413_and_the_connection_closed() -> None:
    async with gateway() as (host, port):
        stream = await trio.open_tcp_stream(host, port)
        try:
            await stream.send_all(b"POST /api/v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                  b"Content-Length: 5000000\r\n\r\n" + b"[" * 1000)
            received = b""
            with trio.fail_after(ANSWER_WITHIN_S):
                while chunk := await stream.receive_some(65536):  # until the server closes
                    received += chunk
            assert received.startswith(b"HTTP/1.1 413")
            assert b"\r\nconnection: close\r\n" in received.lower()
        finally:
            await stream.aclose()


def _burst(seed: int, count: int) -> list[tuple[str, str, list[tuple[str, bytes]], bytes, float]]:
    """Requests for every operation, good and bad: methods, bodies, headers, split segments."""
    rng = random.Random(seed)
    bodies = [b"", b"{}", b'{"reason": "x"}', b'{"reason": "\\ud800"}', b"[" * 200, b"\xff\xfe", b"null",
              b'{"runbookId": "echo", "input": {"n": 1}}', b'{"type": "t", "correlationKey": "k"}',
              b'{"decision": "approve"}', json.dumps({"id": "x", "steps": [{"id": ["a"], "type": 5}]}).encode(),
              b'{"runbookId": "echo", "version": 1.0}', b'{"a": ' + b"9" * 5000 + b"}", b"id: [unclosed"]
    headers = [JSON, [("Content-Type", b"application/yaml")], [("Content-Type", b"text/plain")],
               [("X-User-Id", b"\x84"), *JSON], [("X-Tenant-Id", b"t" * 300), *JSON], [], JSON]
    methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "TRACE", "OPTIONS", "HEAD"]
    requests = []
    for _ in range(count):
        route = rng.choice(ROUTES)
        if route.operation_id == "streamExecution":
            continue  # a stream of a live execution is answered, but lasts as long as it
        target = route.rule.replace("<runbook:runbook_id>", "echo").replace("<runbook_id>", "echo")
        target = target.replace("<execution_id>", rng.choice(["nope", "0", "%00", "x" * 300])).replace(
            "<step_id>", "s")
        method = route.method if rng.random() < 0.6 else rng.choice(methods)
        body = rng.choice(bodies) if method not in ("GET", "HEAD") or rng.random() < 0.2 else b""
        query = rng.choice(["", "?limit=0", "?limit=5&limit=6", "?version=1.0", "?cursor=%C2%B2", "?force=true"])
        requests.append((method, target + query, rng.choice(headers), body, rng.choice([0.0, 0.0, 0.01, 0.03])))
    return requests


async def test_a_fuzzing_burst_over_concurrent_keep_alive_connections_is_answered_whole() -> None:
    answered: list[int] = []
    async with gateway() as (host, port):

        async def connection(seed: int) -> None:
            client = RawClient(host, port)
            try:
                for method, target, headers, body, pause in _burst(seed, 60):
                    answer = await client.request(method, target, headers, body, pause_s=pause)
                    assert answer.status < 500, (method, target, body[:80], answer)
                    answered.append(answer.status)
            finally:
                await client.aclose()

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for seed in range(6):
                    nursery.start_soon(connection, seed)
    assert len(answered) == sum(len(_burst(seed, 60)) for seed in range(6))


async def test_content_length_with_transfer_encoding_is_400_and_the_connection_closed() -> None:
    """RFC 9112 section 6.3: a request with both cannot be framed safely (a proxy in front may
    read it by its length, the gateway by its chunks), so it is refused and the connection
    closed; what follows on the connection is never read as another request."""
    async with gateway() as (host, port):
        stream = await trio.open_tcp_stream(host, port)
        smuggled = (b"GET /api/v1/runbooks HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            await stream.send_all(
                b"POST /api/v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"2\r\n{}\r\n0\r\n\r\n" + smuggled)
            received = b""
            with trio.fail_after(ANSWER_WITHIN_S):
                while chunk := await stream.receive_some(65536):  # until the server closes
                    received += chunk
        finally:
            await stream.aclose()
    assert received.startswith(b"HTTP/1.1 400"), received[:200]
    assert b"\r\nconnection: close\r\n" in received.lower()
    assert received.count(b"HTTP/1.1 ") == 1  # the smuggled request got no answer
