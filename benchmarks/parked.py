"""Parked executions: memory per execution waiting on an event, and how many one process holds.

Executions of a one-step runbook that waits for an event (its own correlation key, a long
timeout) are started until N of them are parked (their WAITING state committed). The
figure is the growth of this process's VmRSS (``/proc/self/status``) from a warm runtime
that already holds a few parked executions to N more, divided by N. The store is SQLite
by default: the memory store would count its own copy of every record as the engine's.

    python -m benchmarks.parked [--quick] [--store sqlite|postgres|memory]
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
from runtime import Runtime
from runtime.model import StepStatus

CALLERS = 128
WARM = 1000
RUNBOOK = {"id": "park", "steps": [{"id": "wait", "type": "wait-for-event", "config": {
    "eventType": "bench.go", "correlationKey": "${input.key}", "timeoutMs": 24 * 3600 * 1000}}]}


async def park(rt: Runtime, first: int, count: int) -> list[str]:
    """Start ``count`` executions and return once every one of them is parked."""
    ids: list[str] = []

    async def start(i: int) -> None:
        ids.append((await rt.start("park", {"key": f"k{first + i}"})).id)

    await in_parallel(count, CALLERS, start)
    pending = ids
    while pending:  # the first turn of each execution parks its step and commits that
        await trio.sleep(0.05)
        pending = [eid for eid in pending if rt.get(eid).steps["wait"].status is not StepStatus.WAITING]
    return ids


async def measure(report: Report, store: str, count: int) -> None:
    async with bench_runtime(store) as rt:
        await rt.register_runbook(RUNBOOK)
        await park(rt, 0, WARM)
        before = settled_rss_kib()
        started = time.perf_counter()
        await park(rt, WARM, count)
        seconds = elapsed_since(started)
        after = settled_rss_kib()
        parked = rt.router.waiting
        if parked != WARM + count or rt.open_executions != WARM + count:
            raise RuntimeError(f"{parked} waiting, {rt.open_executions} open; expected {WARM + count}")
        parameters = {"parked": count, "rss_before_kib": before, "rss_after_kib": after,
                      "seconds_to_park": round(seconds, 2)}
        report.add("parked.memory_per_execution", (after - before) / count, "KiB", parameters, store, "<= 5")
        report.add("parked.count", parked, "executions", parameters, store, ">= 100000")
        report.note(f"{store}: closing the runtime with {parked} parked executions")


async def main(report: Report, args: argparse.Namespace) -> None:
    count = 5000 if args.quick else 100_000
    for store in usable_stores(report, args.stores):
        await measure(report, store, count)


def cli(argv: Sequence[str] | None = None) -> int:
    args = arguments(__doc__.splitlines()[0], argv, stores=("sqlite",))
    run(main, "parked", args)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
