"""Execution starts through the embedded API (``Runtime.start``), per store.

Many callers start executions of a one-step runbook at once (distinct inputs, so no start
is deduplicated). The figure is starts acknowledged per second: a start returns once the
new execution is committed (group commit); its step runs in the background meanwhile, as
it would in production, and is waited for after the clock stops.

    python -m benchmarks.starts [--quick] [--store memory|sqlite|postgres]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from benchmarks.common import (
    Finished,
    Report,
    arguments,
    bench_runtime,
    chain_runbook,
    elapsed_since,
    in_parallel,
    mailbox_peak,
    run,
    usable_stores,
)

CALLERS = 64


async def measure(report: Report, store: str, starts: int) -> None:
    async with bench_runtime(store) as rt:
        await rt.register_runbook(chain_runbook("one", 1))
        warm = Finished(rt, 50)
        await in_parallel(50, CALLERS, lambda i: rt.start("one", {"warmup": i}))
        await warm.done.wait()
        rt.observers.clear()
        finished = Finished(rt, starts)
        started = time.perf_counter()
        await in_parallel(starts, CALLERS, lambda i: rt.start("one", {"i": i}))
        elapsed = elapsed_since(started)
        await finished.done.wait()
        report.add("starts", starts / elapsed, "starts/s",
                   {"starts": starts, "concurrent_callers": CALLERS, "seconds": round(elapsed, 3),
                    "persistence_mailbox_peak": mailbox_peak(rt)},
                   store, ">= 1000" if store == "postgres" else None)


async def main(report: Report, args: argparse.Namespace) -> None:
    starts = 1000 if args.quick else 10_000
    for store in usable_stores(report, args.stores):
        await measure(report, store, starts)


def cli(argv: Sequence[str] | None = None) -> int:
    args = arguments(__doc__.splitlines()[0], argv)
    run(main, "starts", args)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
