"""Event sources: bus messages to released steps, a signed webhook's latency, and the cost of
the bridge to asyncio that the NATS client needs. PostgreSQL by default.

- ``sources.redis`` / ``sources.jetstream``: N executions each wait for an event with their
  own key; N messages are put on the bus first; the clock runs from the moment the source
  starts consuming until every execution has finished (each message published once: its
  receipt committed with its event, then acknowledged). Target: at least what
  ``Runtime.publish_event`` reaches on the same store (``sources.publish``, measured here
  the same way, 64 callers).
- ``sources.webhook_p99``: GitHub-signed webhooks at 200 requests/s over real HTTP
  (hypercorn on 127.0.0.1), each releasing a waiting step; the 99th percentile of the time
  to the answer (which comes after the commit). ``sources.events_p99``: the same with
  ``POST /api/v1/events`` (no signature, no receipt), for comparison.
- ``sources.bridge``: one crossing from Trio to the asyncio thread and back, with nothing to
  do on the other side.

    python -m benchmarks.sources [--quick] [--store postgres|sqlite|memory]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import sys
import time
import uuid
from collections.abc import Sequence
from functools import partial
from typing import Any

import httpx
import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.trio import serve

from benchmarks.common import (
    Finished,
    Report,
    arguments,
    bench_runtime,
    elapsed_since,
    in_parallel,
    percentile,
    run,
    usable_stores,
)
from benchmarks.parked import RUNBOOK, park
from gateway import Config, create_app
from runtime import Runtime
from runtime.shell.settings import Settings
from runtime.sources.asyncio_thread import shared_loop
from runtime.sources.config import parse_sources
from runtime.sources.manager import open_sources

REDIS_URL, NATS_URL = "redis://127.0.0.1:6379/0", "nats://127.0.0.1:4222"
EVENT = {"type": "bench.go", "key": "${body.key}"}
SECRET = "bench-secret"
RATE = 200  # webhook requests per second


async def released(rt: Runtime, count: int, source: dict[str, Any]) -> float:
    """Seconds from the source's start until ``count`` parked executions have finished."""
    finished = Finished(rt, count)
    started = time.perf_counter()
    async with open_sources(rt, None, config=parse_sources({"sources": [source]})):
        with trio.move_on_after(120):
            await finished.done.wait()
    return elapsed_since(started)


async def measure_publish(report: Report, store: str, count: int) -> None:
    async with bench_runtime(store) as rt:
        await rt.register_runbook(RUNBOOK)
        await park(rt, 0, count)
        finished = Finished(rt, count)
        started = time.perf_counter()
        await in_parallel(count, 64, lambda i: _publish(rt, i))
        await finished.done.wait()
        report.add("sources.publish", count / elapsed_since(started), "events/s", {"events": count}, store)


async def _publish(rt: Runtime, i: int) -> None:
    await rt.publish_event("bench.go", f"k{i}", {"key": f"k{i}"})


async def measure_redis(report: Report, store: str, count: int) -> None:
    import coredis

    stream = f"bench-{uuid.uuid4().hex[:8]}"
    async with bench_runtime(store) as rt, coredis.Redis.from_url(REDIS_URL, decode_responses=True) as redis:
        await rt.register_runbook(RUNBOOK)
        await park(rt, 0, count)
        for first in range(0, count, 200):  # (pipelines of 200: one round trip each)
            async with redis.pipeline(transaction=False) as pipe:
                for i in range(first, min(first + 200, count)):
                    pipe.xadd(stream, {"body": json.dumps({"key": f"k{i}"})})
        seconds = await released(rt, count, {"id": "r", "kind": "redis-stream", "url": REDIS_URL, "stream": stream,
                                             "group": "bench", "maxInFlight": 256, "event": EVENT})
        await redis.delete([stream])
        report.add("sources.redis", count / seconds, "events/s", {"messages": count, "maxInFlight": 256}, store,
                   ">= sources.publish")


async def measure_jetstream(report: Report, store: str, count: int) -> None:
    import nats

    name = f"B{uuid.uuid4().hex[:8]}"
    nc = await shared_loop().call(nats.connect(NATS_URL))
    js = nc.jetstream()
    try:
        await shared_loop().call(js.add_stream(name=name, subjects=[f"{name.lower()}.>"]))
        await shared_loop().call(_fill(js, f"{name.lower()}.go", count))
        async with bench_runtime(store) as rt:
            await rt.register_runbook(RUNBOOK)
            await park(rt, 0, count)
            seconds = await released(rt, count, {
                "id": "n", "kind": "nats-jetstream", "url": NATS_URL, "stream": name, "subject": f"{name.lower()}.>",
                "durable": "bench", "maxInFlight": 256, "event": EVENT})
        report.add("sources.jetstream", count / seconds, "events/s", {"messages": count, "maxInFlight": 256}, store,
                   ">= sources.publish")
    finally:
        await shared_loop().call(js.delete_stream(name))
        await shared_loop().call(nc.close())


async def _fill(js: Any, subject: str, count: int) -> None:
    acks = [await js.publish_async(subject, json.dumps({"key": f"k{i}"}).encode()) for i in range(count)]
    await asyncio.gather(*acks)


async def measure_webhook(report: Report, store: str, seconds: float) -> None:
    count = int(RATE * seconds)
    config = {"sources": [{"id": "gh", "kind": "webhook", "signature": {"preset": "github"},
                           "secrets": ["${secret.BENCH}"], "event": EVENT}]}
    settings = Settings(secrets_env={"RUNBOOKS_SECRET_BENCH": SECRET})
    async with bench_runtime(store, settings) as rt, open_sources(rt, None, config=parse_sources(config)) as sources:
        await rt.register_runbook(RUNBOOK)
        await park(rt, 0, count)
        app = create_app(rt, Config(storage_backend="memory"), sources=sources)
        hyper = HyperConfig()
        hyper.bind, hyper.accesslog = ["127.0.0.1:0"], None
        async with trio.open_nursery() as nursery:
            stop = trio.Event()
            binds = await nursery.start(partial(serve, app, hyper, shutdown_trigger=stop.wait))  # type: ignore[arg-type]
            hooks = await _paced(binds[0], count, _hook)
            await park(rt, count, count)
            events = await _paced(binds[0], count, partial(_event, count))
            stop.set()
        for name, latencies in (("sources.webhook_p99", hooks), ("sources.events_p99", events)):
            report.add(name, percentile(latencies, 99) * 1000, "ms",
                       {"requests": count, "rate_per_s": RATE, "p50_ms": round(percentile(latencies, 50) * 1000, 2),
                        "max_ms": round(max(latencies) * 1000, 2)}, store)


def _hook(i: int) -> tuple[str, bytes, dict[str, str]]:
    body = json.dumps({"key": f"k{i}"}).encode()
    return "/api/v1/hooks/gh", body, {
        "X-Hub-Signature-256": "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest(),
        "X-GitHub-Delivery": f"d-{i}", "Content-Type": "application/json"}


def _event(offset: int, i: int) -> tuple[str, bytes, dict[str, str]]:
    body = json.dumps({"type": "bench.go", "correlationKey": f"k{offset + i}", "payload": {}}).encode()
    return "/api/v1/events", body, {"Content-Type": "application/json"}


async def _paced(url: str, count: int, request: Any) -> list[float]:
    """``count`` requests at ``RATE`` a second, whatever the answers' pace; each one's latency."""
    latencies: list[float] = []
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=httpx.Limits(max_connections=256)) as client:
        async def one(i: int) -> None:
            path, body, headers = request(i)
            started = time.perf_counter()
            answer = await client.post(path, content=body, headers=headers)
            latencies.append(time.perf_counter() - started)
            assert answer.status_code == 202, answer.text

        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            for i in range(count):
                await trio.sleep_until(start + i / RATE)
                nursery.start_soon(one, i)
    return latencies


async def measure_bridge(report: Report, crossings: int) -> None:
    async def nothing() -> None:
        return None

    loop = shared_loop()
    started = time.perf_counter()
    for _ in range(crossings):
        await loop.call(nothing())
    report.add("sources.bridge", elapsed_since(started) / crossings * 1e6, "us/crossing",
               {"crossings": crossings}, None)


async def main(report: Report, args: argparse.Namespace) -> None:
    count = 1000 if args.quick else 10_000
    await measure_bridge(report, 2000 if args.quick else 20_000)
    for store in usable_stores(report, args.stores):
        await measure_publish(report, store, count)
        await measure_redis(report, store, count)
        await measure_jetstream(report, store, count)
        await measure_webhook(report, store, 2.0 if args.quick else 10.0)


def cli(argv: Sequence[str] | None = None) -> int:
    args = arguments(__doc__.splitlines()[0], argv, stores=("postgres",))
    run(main, "sources", args, quick_s=120.0)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
