"""The local HTTP service the chaos workload's steps call: it counts calls per idempotency key.

``/flaky`` answers 500 to the first call with a key and 200 afterwards (so a step retry has
something to retry); ``/slow?ms=N`` answers after N ms (a call in flight when a fault hits);
any other path answers 200 at once. Every call is recorded with its arrival and answer times
on the harness's clock (``trio.current_time()``), so the checker can tell whether a second
call with one key is explained by a fault.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import attrs
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from quart import Response, request
from quart_trio import QuartTrio


@attrs.define
class Call:
    path: str
    key: str  # the Idempotency-Key header ('' when absent)
    arrived: float
    answered: float | None = None  # None: the caller went away before the answer
    status: int | None = None


@attrs.define
class CountingService:
    url: str = ""
    origin: float = 0.0  # the harness's time zero: call times are counted from it
    calls: list[Call] = attrs.Factory(list)
    _seen: Counter[tuple[str, str]] = attrs.Factory(Counter)

    def per_key(self, path: str) -> Counter[str]:
        return Counter(call.key for call in self.calls if call.path == path)

    async def _answer(self, path: str) -> Response:
        arrived = trio.current_time() - self.origin
        key = request.headers.get("Idempotency-Key", "")
        self._seen[path, key] += 1
        seen = self._seen[path, key]
        call = Call(path, key, arrived)
        self.calls.append(call)
        status = 500 if path == "/flaky" and seen == 1 else 200
        if path == "/slow":
            await trio.sleep(int(request.args.get("ms", "1000")) / 1000)
        call.answered, call.status = trio.current_time() - self.origin, status
        return Response(f'{{"key": "{key}", "call": {seen}}}', status=status, content_type="application/json")


@asynccontextmanager
async def counting_service() -> AsyncIterator[CountingService]:
    service = CountingService()
    app = QuartTrio("chaos_service")

    @app.route("/<path:path>", methods=["POST", "GET"])
    async def handle(path: str) -> Response:
        return await service._answer("/" + path)

    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.graceful_timeout = 0.2
    config.accesslog = None
    config.loglevel = "WARNING"
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(partial(serve, app, config, shutdown_trigger=stop.wait))
        service.url = binds[0]
        try:
            yield service
        finally:
            stop.set()
            nursery.cancel_scope.deadline = trio.current_time() + 2
