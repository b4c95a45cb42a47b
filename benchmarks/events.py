"""Event deliveries to parked executions (``Runtime.publish_event``), PostgreSQL by default.

N executions each wait for an event with their own correlation key. Then many callers
publish one event per execution at once, and the clock stops when every execution has
finished (with one process, ``publish_event`` returns once the step's outcome is
committed; on PostgreSQL, where any process may own the waiter, once the event is handed
to it as a committed command). The figure is deliveries per second over all N (an event
that finds no waiter is retained, counted in ``not_delivered``, and not in the figure).

    python -m benchmarks.events [--quick] [--store postgres|sqlite|memory]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import trio

from benchmarks.common import (
    Finished,
    Report,
    arguments,
    bench_runtime,
    elapsed_since,
    in_parallel,
    mailbox_peak,
    run,
    usable_stores,
)
from benchmarks.parked import RUNBOOK, park

CALLERS = 64


async def measure(report: Report, store: str, count: int) -> None:
    async with bench_runtime(store) as rt:
        await rt.register_runbook(RUNBOOK)
        await park(rt, 0, count)
        finished = Finished(rt, count)
        missed: list[int] = []

        async def publish(i: int) -> None:
            result = await rt.publish_event("bench.go", f"k{i}", {"i": i})
            if result.delivered != 1:
                missed.append(i)

        started = time.perf_counter()
        await in_parallel(count, CALLERS, publish)
        with trio.move_on_after(60):  # an event retained (not delivered) is taken when its step waits again
            await finished.done.wait()
        seconds = elapsed_since(started)
        if missed:
            report.note(f"{store}: {len(missed)} of {count} events found no waiter (retained instead); "
                        f"executions: {finished.statuses}")
        report.add("events.deliveries", (count - len(missed)) / seconds, "deliveries/s",
                   {"events": count, "not_delivered": len(missed), "concurrent_publishers": CALLERS,
                    "seconds": round(seconds, 3), "finished": finished.statuses,
                    "persistence_mailbox_peak": mailbox_peak(rt)},
                   store, ">= 5000" if store == "postgres" else None)


async def main(report: Report, args: argparse.Namespace) -> None:
    count = 1000 if args.quick else 10_000
    for store in usable_stores(report, args.stores):
        await measure(report, store, count)


def cli(argv: Sequence[str] | None = None) -> int:
    args = arguments(__doc__.splitlines()[0], argv, stores=("postgres",))
    run(main, "events", args)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
