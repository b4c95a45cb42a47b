"""Paced POSTs from a process of their own, so that the sender's work is not the server's:
``count`` requests at ``rate`` a second whatever the answers' pace (a rate of 0: as fast as
the answers come, CONCURRENT at once: 64 unless given), each one's latency (time to the answer) printed as one JSON
list. ``hook``: GitHub-signed webhooks to
``/api/v1/hooks/gh``; ``event``: ``POST /api/v1/events``. Request ``i`` names key
``k<offset + i>`` (delivery ``d-<offset + i>``).

    python -m benchmarks.paced URL hook|event COUNT RATE OFFSET [CONCURRENT]
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sys
import time
from collections.abc import Sequence

import httpx
import trio

SECRET = "bench-secret"


def hook(i: int) -> tuple[str, bytes, dict[str, str]]:
    body = json.dumps({"key": f"k{i}"}).encode()
    return "/api/v1/hooks/gh", body, {
        "X-Hub-Signature-256": "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest(),
        "X-GitHub-Delivery": f"d-{i}", "Content-Type": "application/json"}


def event(i: int) -> tuple[str, bytes, dict[str, str]]:
    body = json.dumps({"type": "bench.go", "correlationKey": f"k{i}", "payload": {}}).encode()
    return "/api/v1/events", body, {"Content-Type": "application/json"}


async def paced(url: str, kind: str, count: int, rate: float, offset: int, concurrent: int = 64) -> list[float]:
    request = hook if kind == "hook" else event
    latencies: list[float] = []
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=64)) as client:
        async def one(i: int) -> None:
            path, body, headers = request(offset + i)
            started = time.perf_counter()
            answer = await client.post(path, content=body, headers=headers)
            latencies.append(time.perf_counter() - started)
            assert answer.status_code == 202, answer.text

        if rate <= 0:  # as fast as the answers come, ``concurrent`` at once
            pending = iter(range(count))

            async def sender() -> None:
                for i in pending:
                    await one(i)

            async with trio.open_nursery() as nursery:
                for _ in range(concurrent):
                    nursery.start_soon(sender)
            return latencies
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            for i in range(count):
                await trio.sleep_until(start + i / rate)
                nursery.start_soon(one, i)
    return latencies


def cli(argv: Sequence[str] | None = None) -> int:
    url, kind, count, rate, offset, *concurrent = argv if argv is not None else sys.argv[1:]
    print(json.dumps(trio.run(paced, url, kind, int(count), float(rate), int(offset), *map(int, concurrent))))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
