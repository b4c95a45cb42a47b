"""A real local HTTP service for tests: QuartTrio served by hypercorn on 127.0.0.1:0.

    async with fake_service() as svc:
        svc.script("/deploy", Response(503, headers={"Retry-After": "1"}), Response(200, json={"id": 7}))
        ...  # call f"{svc.url}/deploy"
        assert svc.count("/deploy") == 2

Every request is recorded on arrival (before any scripted delay), in arrival order. A
scripted path answers its responses in order and then repeats the last one; any other path
answers 200 with ``{"ok": true, "path": path}``. ``Response.delay_s`` sleeps in the handler
(``trio.sleep``), so slow endpoints are real. Leaving the context stops the server promptly,
even with a slow request in flight (the handler is cancelled).

``refused_url()`` gives a URL on which connections are refused (a port bound but never
listening), for connection-error tests.
"""

from __future__ import annotations

import json as jsonlib
import socket
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from typing import Any, Final

import attrs
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from quart import Response as QuartResponse
from quart import request
from quart_trio import QuartTrio

__all__ = ["FakeService", "RecordedRequest", "Response", "fake_service", "refused_url"]

METHODS: Final = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
_NO_JSON: Final[Any] = object()
SHUTDOWN_GRACE_S: Final = 0.2


@attrs.frozen
class Response:
    """One scripted answer. ``json`` wins over ``text``; neither gives an empty body."""

    status: int = 200
    json: Any = _NO_JSON
    text: str | None = None
    headers: Mapping[str, str] = attrs.field(factory=dict)
    delay_s: float = 0.0

    def body(self) -> bytes:
        """The exact bytes the service sends (hash them to check evidence)."""
        if self.json is not _NO_JSON:
            return jsonlib.dumps(self.json).encode()
        return (self.text or "").encode()

    def content_type(self) -> str | None:
        if self.json is not _NO_JSON:
            return "application/json"
        return "text/plain; charset=utf-8" if self.text is not None else None


@attrs.frozen
class RecordedRequest:
    """A request as the service saw it; header names are lower-case."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: str
    json: Any  # the parsed body when it was sent as JSON, else None
    content: bytes = b""  # the body's bytes as received (for binary bodies such as protobuf)


@attrs.define
class FakeService:
    """The running service: its URL, what it received, and what it will answer."""

    url: str = ""
    requests: list[RecordedRequest] = attrs.Factory(list)
    _scripts: dict[str, list[Response]] = attrs.Factory(dict)
    _arrived: trio.Event = attrs.Factory(trio.Event)

    def script(self, path: str, *responses: Response) -> None:
        """Answer ``path`` with ``responses`` in order; the last one repeats."""
        if not responses:
            raise ValueError("script() needs at least one response")
        self._scripts[path] = list(responses)

    def count(self, path: str) -> int:
        return sum(1 for r in self.requests if r.path == path)

    def requests_to(self, path: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == path]

    async def wait_for(self, path: str, count: int = 1) -> None:
        """Return once ``path`` has received at least ``count`` requests."""
        while self.count(path) < count:
            await self._arrived.wait()

    def _record(self, recorded: RecordedRequest) -> None:
        self.requests.append(recorded)
        self._arrived.set()
        self._arrived = trio.Event()

    def _next_response(self, path: str) -> Response:
        scripted = self._scripts.get(path)
        if not scripted:
            return Response(json={"ok": True, "path": path})
        return scripted.pop(0) if len(scripted) > 1 else scripted[0]


def _create_app(service: FakeService) -> QuartTrio:
    app = QuartTrio("fake_service")

    @app.route("/", defaults={"path": ""}, methods=METHODS)
    @app.route("/<path:path>", methods=METHODS)
    async def handle(path: str) -> QuartResponse:
        data = await request.get_data()
        body = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
        service._record(RecordedRequest(
            method=request.method, path=request.path, query=request.args.to_dict(),
            headers={k.lower(): v for k, v in request.headers.items()}, body=body,
            json=_parse_json(body) if request.is_json else None,
            content=data if isinstance(data, bytes) else data.encode(),
        ))
        answer = service._next_response(request.path)
        if answer.delay_s:
            await trio.sleep(answer.delay_s)
        response = QuartResponse(answer.body(), status=answer.status, content_type=answer.content_type())
        response.headers.update(answer.headers)
        return response

    return app


def _parse_json(body: str) -> Any:
    try:
        return jsonlib.loads(body)
    except ValueError:
        return None


@asynccontextmanager
async def fake_service() -> AsyncIterator[FakeService]:
    """Serve a fresh ``FakeService`` for the duration of the block."""
    service = FakeService()
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.graceful_timeout = SHUTDOWN_GRACE_S
    config.accesslog = None
    config.loglevel = "WARNING"
    stop = trio.Event()
    body_error: Exception | None = None
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(partial(serve, _create_app(service), config, shutdown_trigger=stop.wait))
        service.url = binds[0]
        try:
            yield service
        except Exception as exc:  # re-raised below, outside the nursery, so it stays unwrapped
            body_error = exc
        finally:
            stop.set()
            # Backstop: hypercorn drains for graceful_timeout, then the lifespan ends.
            nursery.cancel_scope.deadline = trio.current_time() + 10 * SHUTDOWN_GRACE_S
    if body_error is not None:
        raise body_error


@contextmanager
def refused_url() -> Iterator[str]:
    """``http://127.0.0.1:PORT`` where a connection is refused at once: bound, not listening."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
