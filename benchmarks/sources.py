"""Event sources: bus messages to released steps, a signed webhook's latency, and the cost of
the bridge to asyncio that the NATS client needs. PostgreSQL by default.

- ``sources.redis`` / ``sources.jetstream``: N executions each wait for an event with their
  own key; N messages are put on the bus first; the clock runs from the moment the source
  has connected (and starts fetching) until every execution has finished (each message published once: its
  receipt committed with its event, then acknowledged). Target: at least what
  ``POST /api/v1/events`` reaches on the same store (``sources.rest_publish``: the same
  parked executions, 16 requests at once from a process of their own, until every one has
  finished; the clock includes the sender's start, about 0.35 s). ``sources.publish`` is ``Runtime.publish_event`` the same way (64 callers, no
  HTTP): the higher bar of an embedded program. ``cpu_ms``: this process's CPU time per event.
- ``sources.webhook_p99``: GitHub-signed webhooks at 200 requests/s over real HTTP
  (hypercorn on 127.0.0.1), each releasing a waiting step; the 99th percentile of the time
  to the answer (which comes after the commit). The requests come from a process of their
  own (``benchmarks.paced``), so the sender's work is not counted as the server's;
  ``server_cpu_ms`` is this process's CPU time per request. ``sources.events_p99``: the
  same with ``POST /api/v1/events`` (no signature, no receipt), for comparison.
  ``sources.webhook_rate_p99_under_100ms``: the highest of the rates tried (``--rates``,
  each for the same time) at which the webhook's p99 stayed under 100 ms.
- ``sources.bridge``: one crossing from Trio to the asyncio thread and back, with nothing to
  do on the other side.

    python -m benchmarks.sources [--quick] [--store postgres|sqlite|memory] [--rates 25,50,100,150,200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

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
RATES = (25, 50, 100, 150, 200)  # the rates tried: which keeps the webhook's p99 under 100 ms


async def released(rt: Runtime, count: int, source: dict[str, Any]) -> tuple[float, float]:
    """Seconds from the source's start until ``count`` parked executions have finished, and
    this process's CPU milliseconds per event meanwhile."""
    finished = Finished(rt, count)
    async with open_sources(rt, None, config=parse_sources({"sources": [source]})) as sources:
        while sources.status.get(source["id"]) != "running":  # noqa: ASYNC110 (connected: it fetches from now on)
            await trio.sleep(0.001)
        started, cpu = time.perf_counter(), time.process_time()
        with trio.move_on_after(120):
            await finished.done.wait()
        return elapsed_since(started), (time.process_time() - cpu) / count * 1000


async def measure_publish(report: Report, store: str, count: int) -> None:
    async with bench_runtime(store) as rt:
        await rt.register_runbook(RUNBOOK)
        await park(rt, 0, count)
        finished = Finished(rt, count)
        started, cpu = time.perf_counter(), time.process_time()
        await in_parallel(count, 64, lambda i: _publish(rt, i))
        await finished.done.wait()
        cpu_ms = round((time.process_time() - cpu) / count * 1000, 3)
        report.add("sources.publish", count / elapsed_since(started), "events/s", {"events": count, "cpu_ms": cpu_ms},
                   store)


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
        seconds, cpu_ms = await released(rt, count, {"id": "r", "kind": "redis-stream", "url": REDIS_URL, "stream": stream,
                                             "group": "bench", "maxInFlight": 256, "event": EVENT})
        await redis.delete([stream])
        report.add("sources.redis", count / seconds, "events/s",
                   {"messages": count, "maxInFlight": 256, "cpu_ms": round(cpu_ms, 3)}, store, ">= sources.rest_publish")


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
            seconds, cpu_ms = await released(rt, count, {
                "id": "n", "kind": "nats-jetstream", "url": NATS_URL, "stream": name, "subject": f"{name.lower()}.>",
                "durable": "bench", "maxInFlight": 256, "event": EVENT})
        report.add("sources.jetstream", count / seconds, "events/s",
                   {"messages": count, "maxInFlight": 256, "cpu_ms": round(cpu_ms, 3)}, store, ">= sources.rest_publish")
    finally:
        await shared_loop().call(js.delete_stream(name))
        await shared_loop().call(nc.close())


async def _fill(js: Any, subject: str, count: int) -> None:
    acks = [await js.publish_async(subject, json.dumps({"key": f"k{i}"}).encode()) for i in range(count)]
    await asyncio.gather(*acks)


async def measure_webhook(report: Report, store: str, seconds: float, rates: Sequence[float]) -> None:
    """The server here, its senders in a process of their own (``benchmarks.paced``): each
    rate of ``rates`` for ``seconds``, webhooks then ``POST /api/v1/events`` at ``RATE``."""
    config = {"sources": [{"id": "gh", "kind": "webhook", "signature": {"preset": "github"},
                           "secrets": ["${secret.BENCH}"], "event": EVENT}]}
    settings = Settings(secrets_env={"RUNBOOKS_SECRET_BENCH": SECRET})
    runs = [("hook", rate) for rate in rates] + [("event", float(RATE))]
    total = sum(int(rate * seconds) for _, rate in runs)
    async with bench_runtime(store, settings) as rt, open_sources(rt, None, config=parse_sources(config)) as sources:
        await rt.register_runbook(RUNBOOK)
        await park(rt, 0, total)
        async with served(create_app(rt, Config(storage_backend="memory"), sources=sources)) as url:
            offset, under_100ms = 0, 0.0
            for kind, rate in runs:
                count = int(rate * seconds)
                cpu = time.process_time()
                latencies = await _paced(url, kind, count, rate, offset)
                cpu_ms = (time.process_time() - cpu) / count * 1000
                offset += count
                p99 = percentile(latencies, 99) * 1000
                if kind == "hook" and p99 < 100:
                    under_100ms = max(under_100ms, rate)
                if rate == RATE:
                    report.add("sources.webhook_p99" if kind == "hook" else "sources.events_p99", p99, "ms",
                               {"requests": count, "rate_per_s": rate, "p50_ms": round(percentile(latencies, 50) * 1000, 2),
                                "max_ms": round(max(latencies) * 1000, 2), "server_cpu_ms": round(cpu_ms, 2)}, store)
                else:
                    report.note(f"{store} webhooks at {rate:.0f}/s: p50 {percentile(latencies, 50) * 1000:.1f} ms, "
                                f"p99 {p99:.1f} ms, server CPU {cpu_ms:.2f} ms a request")
        report.add("sources.webhook_rate_p99_under_100ms", under_100ms, "requests/s",
                   {"rates": list(rates), "seconds_each": seconds}, store)


@asynccontextmanager
async def served(app: Any) -> AsyncIterator[str]:
    """``app`` served by hypercorn on a free port of 127.0.0.1: its URL."""
    hyper = HyperConfig()
    hyper.bind, hyper.accesslog = ["127.0.0.1:0"], None
    async with trio.open_nursery() as nursery:
        stop = trio.Event()
        binds = await nursery.start(partial(serve, app, hyper, shutdown_trigger=stop.wait))  # type: ignore[arg-type]
        yield str(binds[0])
        stop.set()


REST_CONCURRENT = 16  # (at 64 the sender's own HTTP client took 6 s of CPU for 1,000 requests: it set the pace)


async def measure_rest_publish(report: Report, store: str, count: int) -> None:
    """``POST /api/v1/events`` as fast as the answers come (``REST_CONCURRENT`` at once, from
    a process of their own) to ``count`` parked executions, until every one has finished."""
    async with bench_runtime(store) as rt:
        await rt.register_runbook(RUNBOOK)
        await park(rt, 0, count)
        async with served(create_app(rt, Config(storage_backend="memory"))) as url:
            finished = Finished(rt, count)
            started, cpu = time.perf_counter(), time.process_time()
            await _paced(url, "event", count, 0.0, 0, REST_CONCURRENT)
            await finished.done.wait()
            cpu_ms = round((time.process_time() - cpu) / count * 1000, 3)
            report.add("sources.rest_publish", count / elapsed_since(started), "events/s",
                       {"events": count, "concurrent": REST_CONCURRENT, "server_cpu_ms": cpu_ms}, store)


async def _paced(url: str, kind: str, count: int, rate: float, offset: int, concurrent: int = 64) -> list[float]:
    """Latencies of ``count`` requests at ``rate`` a second (0: as fast as the answers come,
    ``concurrent`` at once), sent by another process."""
    done = await trio.run_process([sys.executable, "-m", "benchmarks.paced", url, kind, str(count), str(rate),
                                   str(offset), str(concurrent)], capture_stdout=True)
    latencies: list[float] = json.loads(done.stdout)
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
        await measure_rest_publish(report, store, count)
        await measure_redis(report, store, count)
        await measure_jetstream(report, store, count)
        await measure_webhook(report, store, 2.0 if args.quick else 10.0, args.rates)


def cli(argv: Sequence[str] | None = None) -> int:
    def rates(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--rates", type=lambda text: [float(r) for r in text.split(",")], default=list(RATES),
                            help=f"webhook rates to try, per second (default: {','.join(map(str, RATES))})")

    args = arguments(__doc__.splitlines()[0], argv, stores=("postgres",), more=rates)
    run(main, "sources", args, quick_s=120.0)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
