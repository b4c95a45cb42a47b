"""Cancel latency: from the ``Runtime.cancel`` call to the running step cancelled, per store.

Each sample starts an execution whose step blocks (``trio.sleep_forever``), waits until the
executor runs, then calls ``cancel``. A sample ends when both have happened: the executor
has seen ``trio.Cancelled`` and ``cancel`` has returned (the cancellation is committed).
Samples run one after another, next to ``BACKGROUND`` other blocked executions.

    python -m benchmarks.cancel [--quick] [--store memory|sqlite|postgres]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any

import trio

from benchmarks.common import (
    Report,
    arguments,
    bench_runtime,
    chain_runbook,
    percentile,
    run,
    usable_stores,
)
from runtime import Conflict, Runtime, StepContext

BACKGROUND = 100


class Blocker:
    """A step that runs until it is cancelled, recording when it started and was cancelled."""

    def __init__(self) -> None:
        self.running: dict[str, trio.Event] = {}
        self.cancelled: dict[str, trio.Event] = {}
        self.cancelled_at: dict[str, float] = {}

    def entered(self, execution_id: str) -> trio.Event:
        return self.running.setdefault(execution_id, trio.Event())

    async def __call__(self, ctx: StepContext) -> Any:
        self.entered(ctx.execution_id).set()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            self.cancelled_at[ctx.execution_id] = time.perf_counter()
            self.cancelled.setdefault(ctx.execution_id, trio.Event()).set()
            raise


async def sample(rt: Runtime, blocker: Blocker, i: int) -> tuple[float, float] | None:
    """(cancel call to step cancelled and committed, cancel call to return), in seconds;
    None if the cancel was refused (the execution is not running here any more)."""
    execution = await rt.start("block", {"i": i})
    await blocker.entered(execution.id).wait()
    called = time.perf_counter()
    try:
        await rt.cancel(execution.id, "benchmark")
    except Conflict:
        return None
    returned = time.perf_counter()
    with trio.fail_after(5):
        await blocker.cancelled.setdefault(execution.id, trio.Event()).wait()
    del blocker.running[execution.id], blocker.cancelled[execution.id]
    return max(returned, blocker.cancelled_at.pop(execution.id)) - called, returned - called


async def measure(report: Report, store: str, samples: int) -> None:
    blocker = Blocker()
    async with bench_runtime(store) as rt:
        rt.register_executor("block", blocker.__call__)
        await rt.register_runbook(chain_runbook("block", 1, "block"))
        for i in range(BACKGROUND):
            await blocker.entered((await rt.start("block", {"background": i})).id).wait()
        for i in range(20):  # warm-up
            await sample(rt, blocker, -1 - i)
        tried = [await sample(rt, blocker, i) for i in range(samples)]
        results = [result for result in tried if result is not None]
        if len(results) < samples:
            report.note(f"{store}: {samples - len(results)} cancels refused (Conflict): left out")
        cancelled = [total * 1000 for total, _ in results]
        returned = [call * 1000 for _, call in results]
        parameters = {"samples": len(results), "refused": samples - len(results), "background_executions": BACKGROUND,
                      "cancel_call_p50_ms": round(percentile(returned, 50), 3),
                      "cancel_call_p99_ms": round(percentile(returned, 99), 3),
                      "max_ms": round(max(cancelled), 3)}
        report.add("cancel.latency_p50", percentile(cancelled, 50), "ms", parameters, store)
        report.add("cancel.latency_p99", percentile(cancelled, 99), "ms", parameters, store, "<= 5")
        rt.observers.clear()


async def main(report: Report, args: argparse.Namespace) -> None:
    samples = 200 if args.quick else 2000
    for store in usable_stores(report, args.stores):
        await measure(report, store, samples)


def cli(argv: Sequence[str] | None = None) -> int:
    args = arguments(__doc__.splitlines()[0], argv)
    run(main, "cancel", args)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
