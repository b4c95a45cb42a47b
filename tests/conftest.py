"""Shared fixtures: a runtime on the memory store, and small custom executors."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest
import trio
from psycopg import sql

from runtime import Runtime, Settings, StepFailed, open_runtime
from runtime.io.context import StepContext

DSN = os.environ.get("RUNBOOKS_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    """The PostgreSQL test server; skipped when unreachable, except under CI=true (a failure)."""
    try:
        with psycopg.connect(DSN, connect_timeout=3):
            pass
    except psycopg.OperationalError as exc:
        message = f"PostgreSQL at {DSN} cannot be reached: {exc}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return DSN


def drop_schema(dsn: str, name: str) -> None:
    """Drop a test's PostgreSQL schema and everything in it."""
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture
def schema(postgres_dsn: str) -> Iterator[str]:
    """A fresh PostgreSQL schema name for the test (created by the store that uses it), dropped after."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    yield name
    drop_schema(postgres_dsn, name)


class Recorder:
    """Custom executors that record what ran, when, and how many ran at once."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, float]] = []  # (step id, attempt, trio time)
        self.running = 0
        self.max_running = 0
        self.fail_times: dict[str, int] = {}

    async def echo(self, ctx: StepContext) -> Any:
        self._enter(ctx)
        try:
            delay = ctx.config.get("sleep", 0)
            if delay:
                await trio.sleep(delay)
            if self.fail_times.get(ctx.step_id, 0) >= ctx.attempt:
                raise StepFailed(f"planned failure {ctx.attempt}", retryable=True)
            if ctx.config.get("fail"):
                raise StepFailed(str(ctx.config["fail"]), retryable=False)
            return ctx.config.get("value", {"step": ctx.step_id})
        finally:
            self.running -= 1

    def _enter(self, ctx: StepContext) -> None:
        self.calls.append((ctx.step_id, ctx.attempt, trio.current_time()))
        self.running += 1
        self.max_running = max(self.max_running, self.running)

    def order(self) -> list[str]:
        return [step for step, _, _ in self.calls]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def rt(recorder: Recorder) -> AsyncIterator[Runtime]:
    async with open_runtime("memory", settings=Settings(default_max_retries=0)) as runtime:
        runtime.register_executor("echo", recorder.echo)
        yield runtime


def chain(*ids: str, **step_fields: Any) -> dict[str, Any]:
    """A runbook of echo steps in document order."""
    return {"id": "chain", "steps": [{"id": i, "type": "echo", **step_fields} for i in ids]}


async def taken_over(rt: Runtime, *execution_ids: str, within_s: float = 20) -> None:
    """Wait until ``rt`` runs the executions (PostgreSQL leases expire in real time: bounded)."""
    pending = {e for e in execution_ids if not rt.owns(e)}
    done = trio.Event()

    def observer(what: str, data: Any) -> None:
        if what == "execution.taken_over":
            pending.discard(data)
            if not pending:
                done.set()

    rt.observers.append(observer)
    try:
        if pending:
            with trio.fail_after(within_s):
                await done.wait()
    finally:
        rt.observers.remove(observer)
