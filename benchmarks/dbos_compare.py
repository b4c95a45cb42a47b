"""Optional: the same two shapes on DBOS Transact and on this engine, in one run, for a ratio.

DBOS Transact (the ``dbos`` package) is not a dependency of this project. This script runs
its side in a Python that has it: ``--dbos-python PATH``, else ``RUNBOOKS_DBOS_PYTHON``,
else this interpreter; when none can import it, it says so and measures nothing.

Both sides use the same PostgreSQL (``RUNBOOKS_BENCH_DSN``, as every benchmark; DBOS gets
a schema of its own, dropped afterwards) and the same shapes as ``benchmarks.steps`` and
``benchmarks.events``:

- ``chain``: 10-step chains of trivial steps, 50 executions (workflows) at once, each
  caller waiting for the end of its own; steps per second.
- ``events``: N executions each waiting for a message of their own, then 64 publishers
  send one each; deliveries per second until every execution has finished (DBOS:
  ``DBOS.recv`` / ``DBOS.send``, its durable messages to a workflow).

Each durable step, on both, is committed before the next begins. The sides alternate
(this engine, DBOS, this engine, DBOS...), ``--rounds`` times (median reported).

    python -m benchmarks.dbos_compare [--quick] [--rounds N] [--dbos-python PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any

STEPS = 10
CONCURRENT = 50
PUBLISHERS = 64
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"


# ------------------------------------------------------------------ DBOS's side (its own interpreter)
def dbos_side(shape: str, count: int, dsn: str) -> float:
    """Run one shape on DBOS Transact; steps/s (chain) or deliveries/s (events)."""
    import asyncio

    import sqlalchemy
    from dbos import DBOS

    schema = f"dbos_bench_{uuid.uuid4().hex[:8]}"
    url = dsn.replace("postgresql://", "postgresql+psycopg://", 1) if dsn.startswith("postgresql://") else dsn
    DBOS(config={"name": "runbooks-compare", "system_database_url": url, "dbos_system_schema": schema,
                 "sys_db_pool_size": 20, "log_level": "WARNING"})

    @DBOS.step()
    async def step(value: int) -> int:
        return value + 1

    @DBOS.workflow()
    async def chain(n: int) -> int:
        value = n
        for _ in range(STEPS):  # each step's input is the output of the one before
            value = await step(value)
        return value

    @DBOS.workflow()
    async def waiter(n: int) -> Any:
        return await DBOS.recv_async("bench.go", timeout_seconds=300)

    async def chains() -> float:
        limit = asyncio.Semaphore(CONCURRENT)

        async def one(n: int) -> None:
            async with limit:
                await (await DBOS.start_workflow_async(chain, n)).get_result()

        await asyncio.gather(*(one(n) for n in range(20)))  # warm up, as benchmarks.steps does
        started = time.perf_counter()
        await asyncio.gather(*(one(n) for n in range(count)))
        return count * STEPS / (time.perf_counter() - started)

    async def events() -> float:
        limit = asyncio.Semaphore(PUBLISHERS)

        async def park(n: int) -> Any:
            async with limit:
                return await DBOS.start_workflow_async(waiter, n)

        handles = await asyncio.gather(*(park(n) for n in range(count)))
        await asyncio.sleep(max(2.0, count / 1000))  # every workflow parked in recv

        async def publish(n: int) -> None:
            async with limit:
                await DBOS.send_async(handles[n].workflow_id, {"i": n}, "bench.go")

        started = time.perf_counter()
        await asyncio.gather(*(publish(n) for n in range(count)))
        results = await asyncio.gather(*(handle.get_result() for handle in handles))
        seconds = time.perf_counter() - started
        if any(result is None for result in results):
            raise RuntimeError("a DBOS workflow timed out without its message")
        return count / seconds

    async def main() -> float:
        DBOS.launch()
        return await (chains() if shape == "chain" else events())

    try:
        return asyncio.run(main())
    finally:
        DBOS.destroy()
        engine = sqlalchemy.create_engine(url)
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()


# ------------------------------------------------------------------ this engine's side
def engine_side(shape: str, count: int) -> float:
    import trio

    from benchmarks import events, steps
    from benchmarks.common import Report

    report = Report("dbos_compare")
    if shape == "chain":
        trio.run(steps.measure, report, "postgres", "chain", count)
    else:
        trio.run(events.measure, report, "postgres", count)
    return report.figures[-1].value


def dbos_python(asked: str | None) -> str | None:
    """An interpreter that imports ``dbos``, or None."""
    for candidate in (asked, os.environ.get("RUNBOOKS_DBOS_PYTHON"), sys.executable):
        if candidate and subprocess.run([candidate, "-c", "import dbos"], capture_output=True).returncode == 0:
            return candidate
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of the two sides (median)")
    parser.add_argument("--dbos-python", help="a Python that has the dbos package")
    parser.add_argument("--dbos-side", choices=("chain", "events"), help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    dsn = os.environ.get("RUNBOOKS_BENCH_DSN") or os.environ.get("RUNBOOKS_TEST_DSN", DEFAULT_DSN)
    if args.dbos_side:  # (the child: one measurement of DBOS's side, as one JSON line)
        print(json.dumps({"value": dbos_side(args.dbos_side, args.count, dsn)}), flush=True)
        return 0
    python = dbos_python(args.dbos_python)
    if python is None:
        print("dbos_compare: skipped, no Python here imports the dbos package (DBOS Transact is not a "
              "dependency; e.g. python3 -m venv /tmp/dbos-venv && /tmp/dbos-venv/bin/pip install dbos, "
              "then --dbos-python /tmp/dbos-venv/bin/python)", file=sys.stderr)
        return 0
    counts = {"chain": 200 if args.quick else 1000, "events": 1000 if args.quick else 10_000}
    figures: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for shape, count in counts.items():
            figures.setdefault(("runbooks", shape), []).append(engine_side(shape, count))
            child = subprocess.run([python, "-m", "benchmarks.dbos_compare", "--dbos-side", shape, "--count",
                                    str(count)], capture_output=True, text=True, check=False,
                                   cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            if child.returncode != 0:
                print(child.stderr, file=sys.stderr)
                raise SystemExit(f"dbos_compare: the DBOS side failed ({shape})")
            figures.setdefault(("dbos", shape), []).append(json.loads(child.stdout.strip().splitlines()[-1])["value"])
            print(json.dumps({"shape": shape, "runbooks": figures["runbooks", shape][-1],
                              "dbos": figures["dbos", shape][-1], "load": os.getloadavg()}), flush=True)
    units = {"chain": "steps/s (10-step chains, 50 at once)", "events": "deliveries/s (64 publishers)"}
    for shape, count in counts.items():
        ours, theirs = statistics.median(figures["runbooks", shape]), statistics.median(figures["dbos", shape])
        print(f"{shape} ({count}): runbooks {ours:,.0f} / DBOS {theirs:,.0f} {units[shape]}: "
              f"ratio {ours / theirs:.2f} (median of {args.rounds})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
