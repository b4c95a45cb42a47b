"""One durable operation at a time: how close each comes to the store's own commit.

For each store, the store's commit floor is measured first, in the same run: one row
``INSERT`` then ``COMMIT`` on a logged table (PostgreSQL over the same DSN; SQLite in WAL
mode with ``synchronous=FULL``, the engine's settings). Then, one at a time, with nothing
else running:

- ``start``: ``Runtime.start`` of a runbook whose only step waits for an event (the start
  returns once the new execution is committed and its step is parked);
- ``step``: a step of a 10-step chain of trivial custom steps (the chain's time / 10);
- ``delivery``: ``publish_event`` to a parked execution until that execution has finished;
- ``approval``: ``submit_approval`` to a parked approval step until the answer (the decision
  is committed; the execution completes).

Each figure is a median over many operations and is printed with the floor beside it and
the target: at most twice the floor plus 0.3 ms.

    python -m benchmarks.latency [--quick] [--store sqlite|postgres|memory]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio

from benchmarks.common import (
    DSN,
    Report,
    arguments,
    bench_runtime,
    chain_runbook,
    run,
    usable_stores,
)

WAIT = {"id": "wait", "steps": [{"id": "w", "type": "wait-for-event",
                                 "config": {"eventType": "go", "correlationKey": "${input.k}"}}]}
APPROVE = {"id": "approve", "steps": [{"id": "a", "type": "human-approval",
                                       "config": {"approvers": ["u"]}}]}


def sqlite_floor(count: int) -> float:
    """Median seconds of one INSERT + COMMIT in WAL mode with synchronous=FULL."""
    with tempfile.TemporaryDirectory(prefix="runbooks-floor-") as directory:
        conn = sqlite3.connect(os.path.join(directory, "floor.db"), isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT)")
        times = []
        for i in range(count):
            started = time.perf_counter()
            conn.execute("BEGIN")
            conn.execute("INSERT INTO t (body) VALUES (?)", (f"row {i}",))
            conn.execute("COMMIT")
            times.append(time.perf_counter() - started)
        conn.close()
    return statistics.median(times)


def postgres_floor(count: int) -> float:
    """Median seconds of one INSERT + COMMIT on a logged table (one round trip each)."""
    import psycopg

    schema = f"floor_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        try:
            conn.execute(f'CREATE TABLE "{schema}".t (id bigserial PRIMARY KEY, body text)')
            times = []
            for i in range(count):
                started = time.perf_counter()
                conn.execute(f'INSERT INTO "{schema}".t (body) VALUES (%s)', (f"row {i}",))
                times.append(time.perf_counter() - started)
        finally:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    return statistics.median(times)


FLOORS: dict[str, Callable[[int], float]] = {"sqlite": sqlite_floor, "postgres": postgres_floor,
                                             "memory": lambda count: 0.0}


async def median_of(count: int, operation: Callable[[int], Awaitable[Any]]) -> float:
    times = []
    for i in range(count):
        started = time.perf_counter()
        await operation(i)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def measure(report: Report, store: str, count: int) -> None:
    floor = await trio.to_thread.run_sync(FLOORS[store], count)
    target = f"<= {(2 * floor + 0.0003) * 1000:.2f} ms" if store != "memory" else None
    parameters: dict[str, Any] = {"operations": count, "commit_floor_ms": round(floor * 1000, 3)}
    report.add("commit floor", floor * 1000, "ms", {"operations": count}, store)
    async with bench_runtime(store) as rt:
        for document in (WAIT, APPROVE, chain_runbook("chain", 10)):
            await rt.register_runbook(document)
        await _warm_up(rt)
        tag = uuid.uuid4().hex[:6]
        parked = []

        async def start(i: int) -> None:
            parked.append(await rt.start("wait", {"k": f"{tag}-{i}"}))

        report.add("start (parks on an event)", await median_of(count, start) * 1000, "ms", parameters, store,
                   target)

        async def deliver(i: int) -> None:
            await rt.publish_event("go", f"{tag}-{i}", {"i": i})
            await rt.wait(parked[i].id)

        report.add("event delivered until the execution ends", await median_of(count, deliver) * 1000, "ms",
                   parameters, store, target)

        async def chain(i: int) -> None:
            await rt.wait((await rt.start("chain", {"i": i, "tag": tag})).id)

        steps = max(count // 10, 5)
        per_step = await median_of(steps, chain) / 10
        report.add("step of a 10-step chain", per_step * 1000, "ms", {**parameters, "operations": steps * 10},
                   store, target)
        approvals = [await rt.start("approve", {"i": i, "tag": tag}) for i in range(count)]

        async def approve(i: int) -> None:
            await rt.submit_approval(approvals[i].id, "a", approver="u", decision="approve")

        report.add("approval decided", await median_of(count, approve) * 1000, "ms", parameters, store, target)


async def _warm_up(rt: Any) -> None:
    for i in range(20):
        await rt.wait((await rt.start("chain", {"warm": i})).id)


async def main(report: Report, args: argparse.Namespace) -> None:
    count = 100 if args.quick else 500
    for store in usable_stores(report, args.stores):
        await measure(report, store, count)


def cli(argv: Sequence[str] | None = None) -> int:
    args = arguments(__doc__.splitlines()[0], argv, stores=("sqlite", "postgres"))
    run(main, "latency", args)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
