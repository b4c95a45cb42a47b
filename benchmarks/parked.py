"""Parked executions: memory per execution waiting on an event, and how many one process holds.

Executions of a one-step runbook that waits for an event (its own correlation key, a long
timeout) are started until N of them are parked: their WAITING state is committed and
their actor has left (nothing runs for them; what stays is an id, the deadline in the
runtime's timers and the subscription: in the event router, or with PostgreSQL a row of
the database's waits). The figure is the growth of
this process's VmRSS (``/proc/self/status``) from a warm runtime that already holds a few
parked executions to N more, divided by N. The memory store is reported too, but it keeps
its own copy of every record in the process, so its figure counts the data as well.

    python -m benchmarks.parked [--quick | --full] [--store sqlite|postgres|memory]

``--full`` also parks 1,000,000 executions in one process on SQLite.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import trio

from benchmarks.common import (
    Report,
    arguments,
    bench_runtime,
    elapsed_since,
    in_parallel,
    run,
    settled_rss_kib,
    usable_stores,
)
from runtime import Runtime, Settings

CALLERS = 128
WARM = 1000
MILLION = 1_000_000
RUNBOOK = {"id": "park", "steps": [{"id": "wait", "type": "wait-for-event", "config": {
    "eventType": "bench.go", "correlationKey": "${input.key}", "timeoutMs": 24 * 3600 * 1000}}]}
# a small snapshot cache: the figure is what a parked execution costs, not the cache
SETTINGS = Settings(finished_cache_size=1000)


async def park(rt: Runtime, first: int, count: int) -> None:
    """Start ``count`` executions and return once every one of them is parked."""
    async def start(i: int) -> None:
        await rt.start("park", {"key": f"k{first + i}"})

    await in_parallel(count, CALLERS, start)
    with trio.fail_after(600):
        while parked(rt) < first + count or rt.directory.live:  # noqa: ASYNC110 (a counter, read 20 times a second)
            await trio.sleep(0.05)  # each execution's first turn parks its step and commits that


def parked(rt: Runtime) -> int:
    """Executions this process runs whose actor has left (their waits are in the event router,
    or with PostgreSQL in the database)."""
    return rt.directory.count - rt.directory.live


async def measure(report: Report, store: str, count: int) -> None:
    async with bench_runtime(store, SETTINGS) as rt:
        await rt.register_runbook(RUNBOOK)
        await park(rt, 0, WARM)
        before = settled_rss_kib()
        started = time.perf_counter()
        await park(rt, WARM, count)
        seconds = elapsed_since(started)
        after = settled_rss_kib()
        holding = parked(rt)
        if holding != WARM + count or rt.open_executions != WARM + count or rt.directory.live:
            raise RuntimeError(f"{holding} parked, {rt.open_executions} open, {rt.directory.live} live; "
                               f"expected {WARM + count} parked")
        parameters = {"parked": count, "rss_before_kib": before, "rss_after_kib": after,
                      "seconds_to_park": round(seconds, 2), "starts_per_s": round(count / seconds)}
        target = "<= 3" if store != "memory" else None
        report.add("parked.memory_per_execution", (after - before) / count, "KiB", parameters, store, target)
        report.add("parked.count", holding, "executions", parameters, store,
                   ">= 1000000" if count >= MILLION else ">= 100000")
        report.note(f"{store}: closing the runtime with {holding} parked executions")


async def main(report: Report, args: argparse.Namespace) -> None:
    count = 5000 if args.quick else 100_000
    for store in usable_stores(report, args.stores):
        await measure(report, store, count)
    if args.full:
        await measure(report, "sqlite", MILLION)


def cli(argv: Sequence[str] | None = None) -> int:
    args = arguments(__doc__.splitlines()[0], argv, stores=("sqlite", "postgres", "memory"), full=True)
    run(main, "parked", args, full_s=7200.0 if args.full else 900.0)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
