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
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
import psycopg
import pytest
import trio
from psycopg import sql

from runtime import NotFound, Runtime, Settings, open_runtime
from runtime.model import Execution, ExecutionStatus
from runtime.model.records import ROOT_FULL, Change, FanoutCaps
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


class Starts:
    """Counts the executions a runtime starts (an observer)."""

    def __init__(self, rt: Runtime) -> None:
        self.count = 0
        self._changed = trio.Event()
        rt.observers.append(self)

    def __call__(self, what: str, data: Any) -> None:
        if what == "execution.started":
            self.count += 1
            self._changed.set()
            self._changed = trio.Event()

    async def reach(self, count: int) -> None:
        with trio.fail_after(60):
            while self.count < count:
                await self._changed.wait()


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
        starts = Starts(rt)
        root = await rt.start("fork")
        await starts.reach(15)
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


# ---------------------------------------------------------------- several processes on one database


@asynccontextmanager
async def cluster_node(schema: str, instance: str) -> AsyncIterator[Runtime]:
    settings = Settings(instance_id=instance, lease_ttl_ms=900, forward_wait_ms=3000)
    async with open_runtime(PostgresStore(DSN, pool_max=3, schema=schema), settings=settings) as rt:
        yield rt


@pytest.mark.postgres
async def test_a_cancel_through_a_process_that_does_not_own_the_root_stops_the_tree(schema: str) -> None:
    async with cluster_node(schema, "a") as a, cluster_node(schema, "b") as b:
        await a.register_runbook(FORK)
        starts = Starts(a)
        root = await a.start("fork")
        await starts.reach(15)
        told = await b.cancel(root.id, "runaway", actor="ops")  # forwarded to a, answered once committed there
        at_cancel = {e.id for e in await tree(b, root.id)}
        executions = await until_finished(b, root.id)
    assert told.id == root.id and told.status.value == "cancelled"
    assert {e.id for e in executions} == at_cancel and len(at_cancel) < 1 + 1000


async def rest_tree(client: httpx.AsyncClient, node: Node, root_id: str) -> list[dict[str, Any]]:
    """The tree of ``root_id`` as another process's REST API lists it."""
    found, cursor = [], None
    while True:
        params = {"runbookId": "fork", "limit": "500", **({"cursor": cursor} if cursor else {})}
        page = (await client.get(f"{node.url}/api/v1/executions", params=params)).json()
        found += [e for e in page["items"] if root_id in (e["id"], e["rootExecutionId"])]
        if not (cursor := page["nextCursor"]):
            return found


@pytest.mark.postgres
@pytest.mark.slow
async def test_the_owner_killed_mid_growth_the_survivor_ends_the_tree_at_exactly_the_cap(
        schema: str, tmp_path: pathlib.Path) -> None:
    cap = 100
    async with nodes(schema, "http://127.0.0.1:9", tmp_path, LEASE_TTL_MS=1000, MAX_DESCENDANTS=cap) as group, \
            httpx.AsyncClient(timeout=20) as client:
        a, b = [await group.start(name) for name in ("a", "b")]
        assert (await client.post(f"{a.url}/api/v1/runbooks", json=FORK)).status_code == 201
        answer = await client.post(f"{a.url}/api/v1/executions", json={"runbookId": "fork"})
        assert answer.status_code == 201  # what the client was told: started, on a
        root_id = answer.json()["id"]
        with trio.fail_after(30):
            while True:  # (another process: polled)
                if len(await rest_tree(client, b, root_id)) >= 20:
                    break
                await trio.sleep(0.02)
        a.kill()  # kill -9 while the tree grows: b takes it over once a's lease lapses
        at_kill = len(await rest_tree(client, b, root_id))
        with trio.fail_after(90):
            while True:
                executions = await rest_tree(client, b, root_id)
                if all(e["status"] in ("completed", "failed", "cancelled") for e in executions):
                    break
                await trio.sleep(0.1)
        root = (await client.get(f"{b.url}/api/v1/executions/{root_id}")).json()
    assert at_kill < 1 + cap and len(executions) == 1 + cap  # counted in the database, by both processes
    assert root["status"] == "completed" and root["rootExecutionId"] is None
    errors = {s["error"]["code"] for e in executions for s in e["steps"].values() if s["error"]}
    assert errors == {"fanout_limit"}


@pytest.mark.postgres
def test_two_processes_wanting_the_last_place_under_a_root_take_turns(schema: str) -> None:
    """Store level: two stores (as two processes) commit a child of one root at the same time
    while the root has one place left; a third connection holds the root's row so that both
    transactions are in flight together. Exactly one child is admitted."""
    stores = [PostgresStore(DSN, pool_max=1, schema=schema, pool_min=0) for _ in range(2)]
    for store in stores:
        store.open()
    try:
        caps = FanoutCaps(per_root=3, per_tenant=100)
        stores[0].commit([Change(new_execution=execution("root"))])
        stores[0].commit([child_start(f"early-{n}", caps) for n in range(2)])  # 2 of the 3 places
        results: dict[str, Any] = {}
        with holding_row(schema, "root"):
            threads = [threading.Thread(target=lambda s=store, n=n: results.update(
                {n: s.commit([child_start(n, caps)])[0]})) for n, store in zip(("x", "y"), stores, strict=True)]
            for thread in threads:
                thread.start()
            time.sleep(0.3)  # both wait on the root's row (a bounded wait, not a measurement)
        for thread in threads:
            thread.join(30)
        admitted = sorted(n for n, result in results.items() if result.refused is None)
        refused = [result.refused for result in results.values() if result.refused is not None]
        assert len(admitted) == 1 and refused == [ROOT_FULL]
        assert stores[1].get_execution({"x": "y", "y": "x"}[admitted[0]]) is None  # taken out again
    finally:
        for store in stores:
            store.close()


def execution(execution_id: str, root: str | None = None) -> Execution:
    return Execution(execution_id, "fork", 1, "t1", ExecutionStatus.RUNNING, datetime(2025, 1, 1, tzinfo=UTC), {},
                     input_hash=execution_id, root_execution_id=root, parent_execution_id=root,
                     parent_step_id="again-0" if root else None, depth=1 if root else 0)


def child_start(execution_id: str, caps: FanoutCaps) -> Change:
    return Change(new_execution=execution(execution_id, "root"), fanout=caps)


@contextmanager
def holding_row(schema: str, execution_id: str) -> Iterator[None]:
    with psycopg.connect(DSN) as conn, conn.transaction():
        conn.execute(sql.SQL("SELECT 1 FROM {}.executions WHERE id = %s FOR UPDATE").format(sql.Identifier(schema)),
                     (execution_id,))
        yield
