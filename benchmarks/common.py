"""What every benchmark shares: its command line, figures (JSON lines and a table), the
machine's facts, and runtimes on a fresh store.

A figure is printed as one JSON line the moment it is measured, ``{name, value, unit,
parameters, store, commit}`` (plus ``target``), and again in a table at the end. Every
benchmark uses the real clock and stops by itself: its body runs under a deadline.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import pathlib
import platform
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from runtime import Runtime, Settings, StepContext, open_runtime
from runtime.store import MemoryStore, PostgresStore, SqliteStore
from runtime.store.base import Store

ROOT = pathlib.Path(__file__).resolve().parent.parent
STORES = ("memory", "sqlite", "postgres")
DSN = os.environ.get("RUNBOOKS_BENCH_DSN") or os.environ.get(
    "RUNBOOKS_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/test")


@attrs.frozen
class Figure:
    name: str
    value: float
    unit: str
    parameters: dict[str, Any]
    store: str | None
    target: str | None = None

    def json(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "unit": self.unit, "parameters": self.parameters,
                "store": self.store, "commit": commit_id(), "target": self.target}


class Report:
    """Collects figures: each is printed as a JSON line at once, all as a table at the end."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.figures: list[Figure] = []

    def add(self, name: str, value: float, unit: str, parameters: dict[str, Any], store: str | None,
            target: str | None = None) -> Figure:
        figure = Figure(name, _round(value), unit, parameters, store, target)
        self.figures.append(figure)
        print(json.dumps(figure.json()), flush=True)
        return figure

    def note(self, text: str) -> None:
        print(f"# {text}", file=sys.stderr, flush=True)

    def table(self) -> str:
        rows = [("figure", "store", "value", "unit", "target")]
        rows += [(f.name, f.store or "-", _show(f.value), f.unit, f.target or "") for f in self.figures]
        widths = [max(len(row[i]) for row in rows) for i in range(5)]
        lines = [f"== {self.title} ({machine_line()})"]
        for index, row in enumerate(rows):
            lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
            if index == 0:
                lines.append("  ".join("-" * width for width in widths))
        return "\n".join(lines)


def _round(value: float) -> float:
    if value == 0 or not math.isfinite(value):
        return value
    digits = max(0, 3 - math.floor(math.log10(abs(value))))
    return round(value, digits)


def _show(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


# ------------------------------------------------------------------ command line and running

def arguments(description: str, argv: Sequence[str] | None, *, stores: Sequence[str] = STORES,
              full: bool = False, more: Callable[[argparse.ArgumentParser], object] | None = None,
              ) -> argparse.Namespace:
    """``more``: adds a benchmark's own options to the parser."""
    parser = argparse.ArgumentParser(description=description)
    if more is not None:
        more(parser)
    parser.add_argument("--quick", action="store_true", help="small counts, under 30 s")
    if full:
        parser.add_argument("--full", action="store_true", help="the largest counts too (long)")
    parser.add_argument("--store", action="append", choices=STORES, dest="stores",
                        help=f"only this store (repeatable; default: {', '.join(stores)})")
    args = parser.parse_args(argv)
    args.stores = args.stores or list(stores)
    return args


def run(main: Callable[[Report, argparse.Namespace], Awaitable[None]], title: str,
        args: argparse.Namespace, *, quick_s: float = 28.0, full_s: float = 900.0) -> Report:
    """Run ``main`` under a deadline (quick or full), then print the table."""
    report = Report(title)
    budget = quick_s if args.quick else full_s

    async def bounded() -> None:
        with trio.fail_after(budget):
            await main(report, args)

    try:
        trio.run(bounded)
    finally:
        print(report.table(), flush=True)
    return report


def usable_stores(report: Report, stores: Iterable[str]) -> Iterator[str]:
    """The stores asked for, less PostgreSQL when no server answers (noted in the report)."""
    for store in stores:
        if store == "postgres" and not postgres_available():
            report.note("postgres: not reachable, skipped")
            continue
        yield store


def postgres_available() -> bool:
    import psycopg

    try:
        with psycopg.connect(DSN, connect_timeout=3):
            return True
    except psycopg.OperationalError:
        return False


# ------------------------------------------------------------------ facts

_COMMIT: list[str] = []


def commit_id() -> str:
    """``git rev-parse --short HEAD``, read from .git without running git."""
    if not _COMMIT:
        _COMMIT.append(_read_head(ROOT / ".git"))
    return _COMMIT[0]


def _read_head(git: pathlib.Path) -> str:
    try:
        if git.is_file():  # a worktree: ".git" names its git directory, which names the shared one
            git = (git.parent / git.read_text().strip().removeprefix("gitdir: ")).resolve()
        common = (git / (git / "commondir").read_text().strip()).resolve() if (git / "commondir").exists() else git
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head[:7]
        ref = head[5:]
        for directory in (git, common):
            if (directory / ref).exists():
                return (directory / ref).read_text().strip()[:7]
        for line in (common / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0][:7]
    except OSError:
        pass
    return "unknown"


def machine_line() -> str:
    return f"{os.cpu_count()} cores, Python {platform.python_version()}, commit {commit_id()}"


def rss_kib() -> int:
    """This process's resident set (VmRSS of /proc/self/status), in KiB."""
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def settled_rss_kib() -> int:
    gc.collect()
    return rss_kib()


def percentile(values: Sequence[float], p: float) -> float:
    """The nearest-rank percentile ``p`` (0-100) of ``values``."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


# ------------------------------------------------------------------ runtimes on a fresh store

@asynccontextmanager
async def fresh_store(kind: str) -> AsyncIterator[Store]:
    """A new, empty store: a temp SQLite file, or a PostgreSQL schema dropped afterwards."""
    if kind == "memory":
        yield MemoryStore()
    elif kind == "sqlite":
        with tempfile.TemporaryDirectory(prefix="runbooks-bench-") as directory:
            yield SqliteStore(os.path.join(directory, "bench.db"))
    elif kind == "postgres":
        schema = f"bench_{uuid.uuid4().hex[:12]}"
        try:
            yield PostgresStore(DSN, schema=schema)  # the default pool, as "postgresql://..." opens
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(_drop_schema, schema)
    else:
        raise ValueError(f"unknown store {kind!r}")


def _drop_schema(schema: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@asynccontextmanager
async def bench_runtime(kind: str, settings: Settings | None = None) -> AsyncIterator[Runtime]:
    """A runtime on a fresh store of ``kind`` with the ``noop`` step type registered."""
    async with fresh_store(kind) as store, open_runtime(store, settings=settings) as rt:
        rt.register_executor("noop", noop)
        yield rt


async def noop(ctx: StepContext) -> Any:
    """The trivial custom step: no I/O, no checkpoint, a small output."""
    return ctx.attempt


def chain_runbook(runbook_id: str, steps: int, step_type: str = "noop") -> dict[str, Any]:
    return {"id": runbook_id, "steps": [
        {"id": f"s{i}", "type": step_type, **({"dependsOn": [f"s{i - 1}"]} if i else {})} for i in range(steps)]}


def fanout_runbook(runbook_id: str, steps: int, step_type: str = "noop") -> dict[str, Any]:
    """One root, ``steps - 2`` parallel steps after it, and one join after all of them."""
    middle = [f"m{i}" for i in range(steps - 2)]
    return {"id": runbook_id, "maxConcurrentSteps": steps, "steps": [
        {"id": "root", "type": step_type},
        *({"id": m, "type": step_type, "dependsOn": ["root"]} for m in middle),
        {"id": "join", "type": step_type, "dependsOn": middle},
    ]}


class Finished:
    """Counts finished executions through ``Runtime.observers`` (no watcher per execution)."""

    def __init__(self, rt: Runtime, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.statuses: dict[str, int] = {}
        self.done = trio.Event()
        rt.observers.append(self._observe)

    def _observe(self, what: str, data: Any) -> None:
        if what != "execution.finished":
            return
        self.count += 1
        self.statuses[data.status.value] = self.statuses.get(data.status.value, 0) + 1
        if self.count >= self.expected:
            self.done.set()


async def in_parallel(count: int, concurrency: int, job: Callable[[int], Awaitable[None]]) -> None:
    """``job(0) .. job(count - 1)``, at most ``concurrency`` at a time."""
    next_index = iter(range(count))

    async def worker() -> None:
        for index in next_index:
            await job(index)

    async with trio.open_nursery() as workers:
        for _ in range(min(concurrency, count)):
            workers.start_soon(worker)


def elapsed_since(started: float) -> float:
    return time.perf_counter() - started


def mailbox_peak(rt: Runtime) -> int:
    """The persistence mailbox's ``peak_buffer_used`` (trio >= 0.34), else -1."""
    stats = rt.persistence.mailbox_statistics()
    return int(getattr(stats, "peak_buffer_used", -1))
