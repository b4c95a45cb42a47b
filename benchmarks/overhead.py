"""Step overhead: the engine's time per step of a sequential chain, memory store.

One execution at a time runs a chain of trivial custom steps (no I/O, no checkpoint), so
nothing overlaps: the wall time per step is the engine's own latency for a step (schedule,
spawn, outcome message, commit, publish, next step). The figure is the marginal time of a
step, (T(long chain) - T(short chain)) / (difference in steps), which leaves out what a
start and a completion cost; the plain per-step average of the long chain is reported too.

    python -m benchmarks.overhead [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from benchmarks.common import Report, arguments, bench_runtime, chain_runbook, run
from runtime import Runtime

SHORT, LONG = 10, 110


async def chain_seconds(rt: Runtime, runbook_id: str, executions: int) -> float:
    """The median wall time of one execution of the chain, run one after another."""
    times = []
    for i in range(executions):
        started = time.perf_counter()
        execution = await rt.start(runbook_id, {"i": i})
        final = await rt.wait(execution.id)
        times.append(time.perf_counter() - started)
        if final.status.value != "completed":
            raise RuntimeError(f"execution {final.id} is {final.status.value}")
    times.sort()
    return times[len(times) // 2]


async def main(report: Report, args: argparse.Namespace) -> None:
    executions = 30 if args.quick else 200
    async with bench_runtime("memory") as rt:
        for steps in (SHORT, LONG):
            await rt.register_runbook(chain_runbook(f"chain-{steps}", steps))
            await chain_seconds(rt, f"chain-{steps}", 5)  # warm-up
        short = await chain_seconds(rt, f"chain-{SHORT}", executions)
        long = await chain_seconds(rt, f"chain-{LONG}", executions)
    parameters = {"executions": executions, "short_chain": SHORT, "long_chain": LONG,
                  "short_ms": round(short * 1000, 3), "long_ms": round(long * 1000, 3)}
    report.add("overhead.step", (long - short) / (LONG - SHORT) * 1e6, "us/step", parameters, "memory", "<= 150")
    report.add("overhead.step_average", long / LONG * 1e6, "us/step", parameters, "memory")


def cli(argv: Sequence[str] | None = None) -> int:
    args = arguments(__doc__.splitlines()[0], argv, stores=("memory",))
    run(main, "overhead", args)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
