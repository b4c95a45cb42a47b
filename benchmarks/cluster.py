"""Several processes on one PostgreSQL database: throughput, forwarding, takeover.

- ``cluster.steps``: durable steps/s of 10-step chains with 1, 2 and 3 processes on one
  database (each process runs 50 executions at once, each caller waiting for its
  execution's end); on this 2-core machine the point is no collapse, not linear scaling.
- ``cluster.forward``: latency of an approval sent to process B for an execution process A
  owns (B writes a command, A applies it and records the outcome, B reads it): p50, p99.
- ``cluster.takeover``: time from ``kill -9`` of the owner to the first step run by the new
  owner, for a restart under the same instance id and for another process after the TTL.

The other processes are children running this module (``python -m benchmarks.cluster
--node ...``); the figures are measured in the parent.

    python -m benchmarks.cluster [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio

from benchmarks.common import (
    DSN,
    ROOT,
    Report,
    chain_runbook,
    noop,
    percentile,
    postgres_available,
    run,
)
from benchmarks.unchained import unchain_if_asked
from runtime import Runtime, Settings, open_runtime
from runtime.store import PostgresStore

STEPS = 10
CONCURRENT = 50
TTL_MS = 2000
GATE = {"id": "gate", "steps": [{"id": "ok", "type": "human-approval", "config": {"approvers": ["boss"]}}]}
HOLD = {"id": "hold", "steps": [{"id": "held", "type": "hold"}]}


def settings(instance: str) -> Settings:
    return Settings(instance_id=instance, lease_ttl_ms=TTL_MS, forward_wait_ms=10_000)


@asynccontextmanager
async def node(schema: str, instance: str) -> AsyncIterator[Runtime]:
    async with open_runtime(PostgresStore(DSN, schema=schema), settings=settings(instance),
                            executors={"noop": noop, "hold": hold}) as rt:
        yield rt


async def hold(ctx: Any) -> Any:
    """A step that tells the parent it runs (a line on stderr of the process), then waits."""
    print(f"held {time.time()} {os.getpid()}", file=sys.stderr, flush=True)
    await trio.sleep_forever()


# ------------------------------------------------------------------ children


async def child(schema: str, instance: str, job: str, count: int) -> None:
    async with node(schema, instance) as rt:
        if job == "chains":
            await chains(rt, count)
        elif job == "chains-own-tenant":
            await chains(rt, count, tenant=instance)
        elif job == "gates":
            ids = [(await rt.start("gate", {"n": i})).id for i in range(count)]
            print(json.dumps(ids), flush=True)
            await trio.sleep_forever()
        elif job == "hold":
            execution = await rt.start("hold", {"at": time.time()})
            print(json.dumps([execution.id]), flush=True)
            await trio.sleep_forever()
        else:
            await trio.sleep_forever()  # a node that only takes over


async def chains(rt: Runtime, count: int, tenant: str | None = None) -> None:
    context = {"tenantId": tenant} if tenant is not None else None

    async def one(i: int) -> None:
        await rt.wait((await rt.start("chain", {"i": i, "p": os.getpid()}, context)).id)

    done = iter(range(count))
    started = time.perf_counter()
    async with trio.open_nursery() as callers:
        for _ in range(CONCURRENT):
            async def caller() -> None:
                for i in done:
                    await one(i)
            callers.start_soon(caller)
    print(json.dumps({"steps": count * STEPS, "seconds": time.perf_counter() - started}), flush=True)


def spawn(schema: str, instance: str, job: str, count: int = 0) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "benchmarks.cluster", "--node", schema, instance, job, str(count)]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


async def line_of(process: subprocess.Popen[str], stream: Any, prefix: str = "") -> str:
    while True:
        line: str = await trio.to_thread.run_sync(stream.readline)
        if not line:
            raise RuntimeError(f"child {process.pid} ended: {process.stderr.read() if process.stderr else ''}")
        if line.startswith(prefix):
            return line


# ------------------------------------------------------------------ figures


async def measure_steps(report: Report, executions: int, counts: Sequence[int] = (1, 2, 3),
                        job: str = "chains") -> None:
    """``job``: ``chains`` (every process starts in one tenant), or ``chains-own-tenant``
    (each process in a tenant of its own)."""
    for processes in counts:
        schema = new_schema()
        async with node(schema, "setup") as rt:
            await rt.register_runbook(chain_runbook("chain", STEPS))
        children = [spawn(schema, f"p{n}", job, executions // processes) for n in range(processes)]
        try:
            results = [json.loads(await line_of(child, child.stdout)) for child in children]
        finally:
            stop(children)
            drop_schema(schema)
        seconds = max(result["seconds"] for result in results)
        steps = sum(result["steps"] for result in results)
        report.add(f"cluster.steps.{processes}", steps / seconds, "steps/s",
                   {"processes": processes, "executions": executions, "concurrent_per_process": CONCURRENT,
                    "seconds": round(seconds, 3)}, "postgres", "no collapse" if processes > 1 else None)


async def measure_forward(report: Report, count: int) -> None:
    schema = new_schema()
    async with node(schema, "b") as b:
        await b.register_runbook(GATE)
        owner = spawn(schema, "a", "gates", count)
        try:
            ids = json.loads(await line_of(owner, owner.stdout))
            latencies = []
            for execution_id in ids:
                started = time.perf_counter()
                done = await b.submit_approval(execution_id, "ok", approver="boss", decision="approve")
                latencies.append((time.perf_counter() - started) * 1000)
                assert done.steps["ok"].status.value == "succeeded"
        finally:
            stop([owner])
    drop_schema(schema)
    parameters = {"approvals": count, "p50_ms": round(percentile(latencies, 50), 2)}
    report.add("cluster.forward.p50", percentile(latencies, 50), "ms", parameters, "postgres")
    report.add("cluster.forward.p99", percentile(latencies, 99), "ms", parameters, "postgres")


async def measure_takeover(report: Report) -> None:
    for how in ("same id", "other id"):
        schema = new_schema()
        async with node(schema, "setup") as rt:
            await rt.register_runbook(HOLD)
        owner = spawn(schema, "a", "hold")
        survivor = spawn(schema, "b", "idle") if how == "other id" else None
        try:
            await line_of(owner, owner.stdout)
            await line_of(owner, owner.stderr, "held")
            os.kill(owner.pid, signal.SIGKILL)
            killed = time.time()
            owner.wait()
            new = spawn(schema, "a", "idle") if how == "same id" else survivor
            assert new is not None
            ran = float((await line_of(new, new.stderr, "held")).split()[1])
            if how == "same id":
                stop([new])
        finally:
            stop([p for p in (owner, survivor) if p is not None])
            drop_schema(schema)
        report.add(f"cluster.takeover.{how.replace(' ', '_')}", ran - killed, "s",
                   {"lease_ttl_ms": TTL_MS, "includes": "process start" if how == "same id" else "the TTL"},
                   "postgres", "< 1 s after start" if how == "same id" else f"~{TTL_MS / 1000} s")


def stop(children: list[subprocess.Popen[str]]) -> None:
    for process in children:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in children:
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def new_schema() -> str:
    return f"bench_{uuid.uuid4().hex[:12]}"


def drop_schema(schema: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


async def main(report: Report, args: argparse.Namespace) -> None:
    if not postgres_available():
        report.note("postgres: not reachable, skipped")
        return
    await measure_steps(report, 300 if args.quick else 1500)
    await measure_forward(report, 50 if args.quick else 500)
    await measure_takeover(report)


def cli(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--node"]:
        schema, instance, job, count = argv[1:5]
        unchain_if_asked()
        trio.run(child, schema, instance, job, int(count))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts")
    run(main, "cluster", parser.parse_args(argv), quick_s=120.0)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
