"""What the audit chain costs: steps/s and starts/s with the chain, against the same tree
writing the same audit entries unchained, as before the ledger (``benchmarks/unchained.py``).

- ``chain_cost.steps``: 10-step chains, 50 at once (``benchmarks.steps``), on SQLite and
  PostgreSQL, one process.
- ``chain_cost.starts``: starts of a one-step runbook, 64 callers (``benchmarks.starts``).
- ``chain_cost.cluster``: steps/s with 2 processes on one PostgreSQL database, one tenant
  (``benchmarks.cluster``): every commit of the tenant takes its chain's head in turn.
  ``chain_cost.cluster-tenants``: the same with each process starting in a tenant of its
  own (their chains are apart).

Each figure is measured in a child process of its own (``--one KIND STORE MODE``), the two
modes alternating round by round; the figure is the median of the rounds, and ``cost`` how
much worse the chained median is (negative: better, within the noise). For steps, the CPU
time of the process per step is compared too: less noisy than the rate on a busy machine.

    python -m benchmarks.chain_cost [--quick] [--rounds N] [--store sqlite|postgres] [--only steps|starts|cluster|cluster-tenants]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Sequence

from benchmarks import cluster, starts, steps
from benchmarks.common import ROOT, Report, arguments, run, usable_stores
from benchmarks.unchained import UNCHAINED, unchain_if_asked

KINDS = ("steps", "starts", "cluster", "cluster-tenants")
MODES = ("chained", "unchained")
UNITS = {"steps": "steps/s", "starts": "starts/s", "cluster": "steps/s", "cluster-tenants": "steps/s"}


async def one(kind: str, store: str, quick: bool) -> str:
    """One figure, in this process (chained, unless ``UNCHAINED`` is set), as a JSON line:
    ``value``, and for steps the process's CPU per step."""
    report = Report(f"{kind} {store}")
    if kind == "steps":
        await steps.measure(report, store, "chain", 200 if quick else 1000)
    elif kind == "starts":
        await starts.measure(report, store, 1000 if quick else 5000)
    elif kind == "cluster":
        await cluster.measure_steps(report, 300 if quick else 1500, (2,))
    else:
        await cluster.measure_steps(report, 300 if quick else 1500, (2,), "chains-own-tenant")
    figure = report.figures[-1]
    return json.dumps({"value": figure.value, "cpu_us": figure.parameters.get("cpu_us_per_step")})


def measure_in_child(kind: str, store: str, mode: str, quick: bool) -> dict[str, float | None]:
    env = dict(os.environ)
    env.pop(UNCHAINED, None)
    if mode == "unchained":
        env[UNCHAINED] = "1"
    command = [sys.executable, "-m", "benchmarks.chain_cost", "--one", kind, store, "quick" if quick else "full"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} ({mode}) failed: {done.stderr[-2000:]}")
    found: dict[str, float | None] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


async def main(report: Report, args: argparse.Namespace) -> None:
    rounds = 1 if args.quick else args.rounds
    for store in usable_stores(report, args.stores):
        for kind in args.only or KINDS:
            if kind.startswith("cluster") and store != "postgres":
                continue
            figures: dict[str, list[dict[str, float | None]]] = {mode: [] for mode in MODES}
            for index in range(rounds):
                for mode in MODES if index % 2 == 0 else MODES[::-1]:
                    figures[mode].append(measure_in_child(kind, store, mode, args.quick))
            add_figures(report, kind, store, figures, "value", UNITS[kind], 1)
            if kind == "steps":
                add_figures(report, f"{kind}.cpu", store, figures, "cpu_us", "us CPU/step", -1)


def add_figures(report: Report, name: str, store: str, figures: dict[str, list[dict[str, float | None]]], key: str,
                unit: str, sign: int) -> None:
    """Each mode's median, and the cost: how much worse chained is (``sign`` 1: a rate, where
    less is worse; -1: a cost, where more is worse)."""
    rounds = len(figures["chained"])
    medians = {}
    for mode in MODES:
        values = [float(figure[key] or 0) for figure in figures[mode]]
        medians[mode] = statistics.median(values)
        report.add(f"chain_cost.{name}.{mode}", medians[mode], unit, {"rounds": rounds, "each": values}, store)
    worse = sign * (1 - medians["chained"] / medians["unchained"]) * 100
    report.add(f"chain_cost.{name}.cost", worse, "% worse", {"rounds": rounds}, store, "< 5")


def cli(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--one"]:
        import trio

        kind, store, size = argv[1:4]
        unchain_if_asked()
        print(trio.run(one, kind, store, size == "quick"), flush=True)
        return 0

    def more(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--rounds", type=int, default=3, help="rounds per mode (alternating)")
        parser.add_argument("--only", action="append", choices=KINDS, help="only this figure (repeatable)")

    args = arguments(__doc__.splitlines()[0], argv, stores=("sqlite", "postgres"), more=more)
    run(main, "chain_cost", args, quick_s=300.0, full_s=3600.0)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
