"""One durable operation at a time: how close each comes to the store's own commit.

For each store, one at a time, with nothing else running (before each operation the
runtime is quiet: every task blocked, nothing committing, nothing queued to commit):

- ``start``: ``Runtime.start`` of a runbook whose only step waits for an event (the start
  returns once the new execution is committed; its step then parks on its own); measured
  again back to back, without waiting for quiet: then each start also waits for the
  commit of the previous execution's park (two commits per start);
- ``step``: a step of a 10-step chain of trivial custom steps (the chain's time / 10);
- ``delivery``: ``publish_event`` to a parked execution until that execution has finished
  (the publish commits, then the execution commits the step's outcome: two commits);
- ``approval``: ``submit_approval`` to a parked approval step until the answer (the decision
  is committed; the execution completes).

The store's commit floor is measured beside each operation, in the same moment: right before
every operation, one row ``INSERT`` then ``COMMIT`` on a logged table (PostgreSQL over the
same DSN; SQLite in WAL mode with ``synchronous=FULL``, the engine's settings, in a file of
its own), so a machine whose speed drifts moves both alike. Each figure is a median and is
printed with its floor, the target (at most twice the floor plus 0.3 ms), and what the
operation spent: commits per operation, milliseconds inside the store's ``commit`` per
operation, and the rest (the engine's own time: thread hops and Python).

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

import attrs
import trio
import trio.testing

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


class Floor:
    """One bare commit of the store, on demand: ``INSERT`` one row, ``COMMIT``."""

    def __init__(self, store: str) -> None:
        self.store = store
        self._directory: tempfile.TemporaryDirectory[str] | None = None
        self._conn: Any = None
        self._schema = f"floor_{uuid.uuid4().hex[:12]}"

    def open(self) -> None:
        if self.store == "sqlite":
            self._directory = tempfile.TemporaryDirectory(prefix="runbooks-floor-")
            self._conn = sqlite3.connect(os.path.join(self._directory.name, "floor.db"), isolation_level=None,
                                         check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT)")
        elif self.store == "postgres":
            import psycopg

            self._conn = psycopg.connect(DSN, autocommit=True)
            self._conn.execute(f'CREATE SCHEMA "{self._schema}"')
            self._conn.execute(f'CREATE TABLE "{self._schema}".t (id bigserial PRIMARY KEY, body text)')

    def close(self) -> None:
        if self.store == "postgres" and self._conn is not None:
            self._conn.execute(f'DROP SCHEMA "{self._schema}" CASCADE')
        if self._conn is not None:
            self._conn.close()
        if self._directory is not None:
            self._directory.cleanup()

    def one(self) -> float:
        """Seconds of one INSERT + COMMIT (timed inside the thread that runs it)."""
        started = time.perf_counter()
        if self.store == "sqlite":
            self._conn.execute("BEGIN")
            self._conn.execute("INSERT INTO t (body) VALUES ('row')")
            self._conn.execute("COMMIT")
        elif self.store == "postgres":
            self._conn.execute(f'INSERT INTO "{self._schema}".t (body) VALUES (%s)', ("row",))
        return time.perf_counter() - started


class Commits:
    """What the persistence actor committed: batches and seconds inside the store's commit."""

    def __init__(self, rt: Any) -> None:
        self.batches = 0
        self.seconds = 0.0
        self._rt = rt
        before = rt.persistence.observer

        def observe(changes: int, seconds: float) -> None:
            self.batches += 1
            self.seconds += seconds
            if before is not None:
                before(changes, seconds)

        rt.persistence.observer = observe

    async def quiet(self) -> None:
        """Until every task is blocked and nothing commits or waits to be committed."""
        while True:
            await trio.testing.wait_all_tasks_blocked(cushion=0.0002)
            if self._rt.persistence.idle:
                return
            await trio.sleep(0.0002)


@attrs.define
class Sample:
    seconds: list[float] = attrs.Factory(list)
    floors: list[float] = attrs.Factory(list)
    batches: int = 0
    commit_seconds: float = 0.0


async def sample(floor: Floor, commits: Commits, count: int, operation: Callable[[int], Awaitable[Any]], *,
                 quiet: bool = True) -> Sample:
    """``operation(i)`` for i < count, one at a time from a quiet runtime (unless not ``quiet``:
    then each follows the last at once, whatever it left running), each beside a floor."""
    result = Sample()
    for i in range(count):
        if quiet:
            await commits.quiet()
        result.floors.append(await trio.to_thread.run_sync(floor.one))
        batches, seconds = commits.batches, commits.seconds
        started = time.perf_counter()
        await operation(i)
        result.seconds.append(time.perf_counter() - started)
        result.batches += commits.batches - batches
        result.commit_seconds += commits.seconds - seconds
    return result


def add(report: Report, name: str, result: Sample, store: str, per: int = 1, *, breakdown: bool = True) -> None:
    """The median per operation (``per``: operations in one sample), beside its floor; with
    ``breakdown``, where its time went (not for operations that overlap the one before)."""
    floor = statistics.median(result.floors)
    operations = len(result.seconds) * per
    parameters: dict[str, Any] = {"operations": operations, "commit_floor_ms": round(floor * 1000, 3),
                                  "commits_per_operation": round(result.batches / operations, 2)}
    if breakdown:
        rest = (sum(result.seconds) - result.commit_seconds) * 1000 / operations
        parameters |= {"ms_in_commit_per_operation": round(result.commit_seconds * 1000 / operations, 3),
                       "ms_rest_per_operation": round(rest, 3)}
    target = f"<= {(2 * floor + 0.0003) * 1000:.2f} ms" if store != "memory" else None
    report.add(name, statistics.median(result.seconds) / per * 1000, "ms", parameters, store, target)


async def measure(report: Report, store: str, count: int) -> None:
    floor = Floor(store)
    await trio.to_thread.run_sync(floor.open)
    try:
        async with bench_runtime(store) as rt:
            await _measure(report, store, count, rt, floor, Commits(rt))
    finally:
        await trio.to_thread.run_sync(floor.close)


async def _measure(report: Report, store: str, count: int, rt: Any, floor: Floor, commits: Commits) -> None:
    for document in (WAIT, APPROVE, chain_runbook("chain", 10)):
        await rt.register_runbook(document)
    await _warm_up(rt)
    tag = uuid.uuid4().hex[:6]
    parked = []

    async def start(i: int) -> None:
        parked.append(await rt.start("wait", {"k": f"{tag}-{i}"}))

    add(report, "start (parks on an event)", await sample(floor, commits, count, start), store)
    more = len(parked)
    add(report, "start, back to back (after the last one's park)",
        await sample(floor, commits, count, lambda i: start(more + i), quiet=False), store, breakdown=False)

    async def deliver(i: int) -> None:
        await rt.publish_event("go", f"{tag}-{i}", {"i": i})
        await rt.wait(parked[i].id)

    add(report, "event delivered until the execution ends", await sample(floor, commits, count, deliver), store)

    async def chain(i: int) -> None:
        await rt.wait((await rt.start("chain", {"i": i, "tag": tag})).id)

    add(report, "step of a 10-step chain", await sample(floor, commits, max(count // 10, 5), chain), store, per=10)
    approvals = [await rt.start("approve", {"i": i, "tag": tag}) for i in range(count)]

    async def approve(i: int) -> None:
        await rt.submit_approval(approvals[i].id, "a", approver="u", decision="approve")

    add(report, "approval decided", await sample(floor, commits, count, approve), store)


async def _warm_up(rt: Any) -> None:
    for i in range(20):
        await rt.wait((await rt.start("chain", {"warm": i})).id)


async def main(report: Report, args: argparse.Namespace) -> None:
    count = 100 if args.quick else 500
    for store in usable_stores(report, args.stores):
        await measure(report, store, count)


def cli(argv: Sequence[str] | None = None) -> int:
    args = arguments(__doc__.splitlines()[0], argv, stores=("sqlite", "postgres"))
    run(main, "latency", args, quick_s=90.0)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
