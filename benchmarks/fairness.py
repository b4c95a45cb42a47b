"""Fairness: one tenant's start-to-first-step latency, idle and while another tenant floods.

Tenant ``b`` starts one execution at a time (a 10-step chain of trivial steps) and the
figure is the time from its ``start`` call to its first step beginning: p50 and p99 over
``SAMPLES`` starts. First with nothing else running (idle), then while tenant ``a`` keeps
``FLOOD`` executions of the same chain running at once (each one that ends is replaced, so
``a`` always has about ``FLOOD`` runnable executions, ten times as many steps ahead). Both
with the engine's round-robin turns (``fair_turns``, its default) and, for comparison,
with turns so many that none is ever waited for. The target: ``b``'s p99 under the flood
within 3x of idle.

    python -m benchmarks.fairness [--quick] [--store memory|sqlite|postgres]
"""

from __future__ import annotations

import argparse
import sys
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
from runtime import Runtime, Settings, StepContext

STEPS = 10
NO_TURNS = 1_000_000  # more turns than anything ever waits for: first come, first served


class FirstSteps:
    """When the first step of each execution began (trio time), and a bell rung for each."""

    def __init__(self) -> None:
        self.began: dict[str, float] = {}
        self.bell = trio.Event()

    def mark(self, execution_id: str) -> None:
        self.began.setdefault(execution_id, trio.current_time())
        self.bell.set()
        self.bell = trio.Event()

    async def of(self, execution_id: str) -> float:
        while execution_id not in self.began:
            await self.bell.wait()
        return self.began[execution_id]


async def first_step_latencies(rt: Runtime, phase: str, samples: int, firsts: FirstSteps) -> list[float]:
    latencies = []
    for n in range(samples):
        asked = trio.current_time()
        execution = await rt.start("chain", {"phase": phase, "n": n}, {"tenantId": "b"})
        latencies.append(await firsts.of(execution.id) - asked)
    return latencies


async def measure(report: Report, store: str, turns: int | None, flood: int, samples: int) -> None:
    settings = Settings() if turns is None else Settings(fair_turns=turns)
    firsts = FirstSteps()

    async def first(ctx: StepContext) -> Any:
        if ctx.step_id == "s0":
            firsts.mark(ctx.execution_id)
        return ctx.attempt

    async with bench_runtime(store, settings) as rt:
        rt.register_executor("mark", first)
        await rt.register_runbook(chain_runbook("chain", STEPS, "mark"))
        label = "default turns" if turns is None else "no turns"
        idle = await first_step_latencies(rt, "idle", samples, firsts)
        flooding = trio.Event()

        async def keep_flooding(nursery: trio.Nursery, lane: int) -> None:
            n = 0
            while True:
                execution = await rt.start("chain", {"lane": lane, "n": n}, {"tenantId": "a"})
                n += 1
                if n == 1 and lane == flood - 1:
                    flooding.set()
                await rt.wait(execution.id)

        async with trio.open_nursery() as nursery:
            for lane in range(flood):
                nursery.start_soon(keep_flooding, nursery, lane)
            await flooding.wait()
            await trio.sleep(0.5)  # the flood under way
            loaded = await first_step_latencies(rt, "flooded", samples, firsts)
            nursery.cancel_scope.cancel()
        parameters = {"flood_executions": flood, "steps_per_execution": STEPS, "samples": samples,
                      "fair_turns": settings.fair_turns}
        for name, values in (("idle", idle), ("flooded", loaded)):
            report.add(f"fairness.{name}.p50 ({label})", percentile(values, 50) * 1000, "ms", parameters, store)
            report.add(f"fairness.{name}.p99 ({label})", percentile(values, 99) * 1000, "ms", parameters, store)
        ratio = percentile(loaded, 99) / max(percentile(idle, 99), 1e-9)
        report.add(f"fairness.p99_ratio ({label})", ratio, "x", parameters, store,
                   "<= 3" if turns is None else None)


async def main(report: Report, args: argparse.Namespace) -> None:
    flood, samples = (300, 40) if args.quick else (2000, 200)
    for store in usable_stores(report, args.stores):
        for turns in (None, NO_TURNS):
            await measure(report, store, turns, flood, samples)


def cli(argv: Sequence[str] | None = None) -> int:
    args = arguments(__doc__.splitlines()[0], argv, stores=("sqlite", "postgres"))
    run(main, "fairness", args, quick_s=120.0)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
