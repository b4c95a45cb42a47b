"""Step throughput: many executions of trivial custom steps, run at once, per store.

Two shapes of 10 steps: ``chain`` (each step depends on the one before) and ``fanout``
(one root, 8 parallel steps, one join). ``CONCURRENT`` (50) executions run at once: each
caller starts one, waits for its end and starts the next. The figure is every step of
every execution divided by the wall time from the first start to the last finish (so
starts and completions are included). Durable stores acknowledge each step only once its
outcome is committed (group commit). ``cpu_us_per_step`` is the process's CPU time (every
thread: the SQLite store writes in threads) over the same span, divided by the steps.

    python -m benchmarks.steps [--quick] [--store memory|sqlite|postgres]
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
    fanout_runbook,
    in_parallel,
    mailbox_peak,
    run,
    usable_stores,
)

STEPS = 10
CONCURRENT = 50
TARGETS = {"memory": ">= 20000", "sqlite": ">= 5000", "postgres": ">= 3000"}
SHAPES = {"chain": chain_runbook, "fanout": fanout_runbook}


async def measure(report: Report, store: str, shape: str, executions: int) -> None:
    async with bench_runtime(store) as rt:
        await rt.register_runbook(SHAPES[shape](shape, STEPS))
        warm = Finished(rt, 20)
        await in_parallel(20, 20, lambda i: rt.start(shape, {"warmup": i}))
        await warm.done.wait()
        rt.observers.clear()
        finished = Finished(rt, executions)
        batches = rt.persistence.stats.batches
        started, cpu = time.perf_counter(), time.process_time()
        async def one(i: int) -> None:
            await rt.wait((await rt.start(shape, {"i": i})).id)

        await in_parallel(executions, CONCURRENT, one)
        await finished.done.wait()
        elapsed = elapsed_since(started)
        cpu = time.process_time() - cpu
        if finished.statuses != {"completed": executions}:
            raise RuntimeError(f"not every execution completed: {finished.statuses}")
        steps = executions * STEPS
        batches = rt.persistence.stats.batches - batches
        report.add(f"steps.{shape}", steps / elapsed, "steps/s",
                   {"executions": executions, "concurrent": CONCURRENT, "steps_per_execution": STEPS, "seconds": round(elapsed, 3),
                    "commit_batches": batches, "persistence_mailbox_peak": mailbox_peak(rt),
                    "cpu_us_per_step": round(cpu / steps * 1e6, 1)},
                   store, TARGETS[store])


async def main(report: Report, args: argparse.Namespace) -> None:
    executions = 200 if args.quick else 1000
    for store in usable_stores(report, args.stores):
        for shape in SHAPES:
            await measure(report, store, shape, executions)


def cli(argv: Sequence[str] | None = None) -> int:
    args = arguments(__doc__.splitlines()[0], argv)
    run(main, "steps", args)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
