"""Recovery is the start path. Stop (or kill -9) a runtime and open the store again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from runtime import Settings, open_runtime
from runtime.store.base import Store
from runtime.store.postgres import PostgresStore
from runtime.store.sqlite import SqliteStore
from tests.conftest import DSN, drop_schema, taken_over
from tests.fake_service import Response, fake_service
from tests.recovery_child import LEASE_TTL_MS, RUNBOOK_A

pytestmark = pytest.mark.slow


class Place:
    """Where a store lives, so several runtimes (and processes) can open it in turn."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        self.path = tmp_path / "runbooks.db"
        self.schema = f"test_{uuid.uuid4().hex[:16]}"

    def store(self) -> Store:
        if self.kind == "sqlite":
            return SqliteStore(str(self.path))
        return PostgresStore(DSN, pool_max=2, schema=self.schema)

    def child_args(self) -> list[str]:
        return [str(self.path)] if self.kind == "sqlite" else [DSN, "BASE", self.schema]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Place]:
    if request.param == "postgres":
        request.getfixturevalue("postgres_dsn")
    where = Place(request.param, tmp_path)
    yield where
    if request.param == "postgres":
        drop_schema(DSN, where.schema)


ROOT = str(Path(__file__).resolve().parent.parent)


async def read_line(stream: Any) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = await stream.receive_some(1)
        if not chunk:
            break
        data += chunk
    return data.decode()


async def until(rt: Any, execution_id: str, predicate: Any) -> Any:
    with trio.fail_after(20):
        async for execution in rt.watch(execution_id):
            if predicate(execution):
                return execution
    raise AssertionError("finished before the condition held")


async def test_stop_and_reopen_resumes_waits_pauses_and_keeps_outputs(place: Place) -> None:
    async with fake_service() as svc:
        settings = Settings(call_service_base_url=svc.url)
        async with open_runtime(place.store(), settings=settings) as rt:
            await rt.register_runbook(RUNBOOK_A)
            waiting = await rt.start("recover-a", {"n": 1})
            paused = await rt.start("recover-a", {"n": 2})
            await until(rt, waiting.id, lambda e: e.status == "awaiting_approval")
            await until(rt, paused.id, lambda e: e.status == "awaiting_approval")
            await rt.pause(paused.id, reason="freeze")
            before = await rt.get(waiting.id)
        # a new runtime on the same store: recovery is the start path
        async with open_runtime(place.store(), settings=settings) as rt:
            recovered = await rt.get(waiting.id)
            assert recovered.status == "awaiting_approval"
            assert recovered.steps["first"].output == before.steps["first"].output
            assert recovered.steps["approve"].deadline_at == before.steps["approve"].deadline_at
            assert (await rt.get(paused.id)).status == "paused"
            await rt.submit_approval(waiting.id, "approve", approver="boss", decision="approve")
            final = await rt.wait(waiting.id)
            assert final.status == "completed"
            await rt.resume(paused.id)
            await rt.submit_approval(paused.id, "approve", approver="boss", decision="approve")
            assert (await rt.wait(paused.id)).status == "completed"
        assert svc.count("/first-a") == 2  # once per execution, never again after the restart
        keys = [r.headers["idempotency-key"] for r in svc.requests_to("/deploy")]
        assert sorted(keys) == sorted([f"deploy-{waiting.id}", f"deploy-{paused.id}"])


async def test_kill_dash_nine_then_recover_in_a_new_process(place: Place) -> None:
    async with fake_service() as svc:
        svc.script("/slow", Response(200, json={"slow": "hung"}, delay_s=60))
        args = place.child_args()
        if place.kind == "postgres":
            args[1] = svc.url
        else:
            args.append(svc.url)
        env = {**os.environ, "PYTHONPATH": ROOT}
        child = await trio.lowlevel.open_process([sys.executable, "-m", "tests.recovery_child", *args],
                                                 stdout=subprocess.PIPE, env=env)
        try:
            with trio.fail_after(60):
                line = await read_line(child.stdout)
            assert line.startswith("ready"), line
            _, a_id, b_id = line.split()
            await svc.wait_for("/slow", 1)
        finally:
            child.send_signal(signal.SIGKILL)
            with trio.fail_after(30):
                await child.wait()
        assert child.returncode == -signal.SIGKILL
        svc.script("/slow", Response(200, json={"slow": "fast now"}))
        settings = Settings(call_service_base_url=svc.url, lease_ttl_ms=LEASE_TTL_MS)
        async with open_runtime(place.store(), settings=settings) as rt:
            await taken_over(rt, a_id, b_id)  # postgres: once the dead child's leases expire
            await rt.submit_approval(a_id, "approve", approver="boss", decision="approve")
            final_a = await rt.wait(a_id)
            final_b = await rt.wait(b_id)
        assert final_a.status == "completed" and final_b.status == "completed"
        assert final_b.output == {"slow": "fast now"}
        assert svc.count("/first-a") == 1 and svc.count("/first-b") == 1  # exactly once
        slow_keys = {r.headers["idempotency-key"] for r in svc.requests_to("/slow")}
        assert svc.count("/slow") == 2 and slow_keys == {f"{b_id}:slow"}  # same key after the restart
        approvals = final_a.steps["approve"].approvals
        assert [(a.approver, a.decision) for a in approvals] == [("boss", "approve")]


async def test_fifty_concurrent_identical_starts_make_one_execution(place: Place) -> None:
    async with open_runtime(place.store()) as rt:
        await rt.register_runbook({"id": "same", "steps": [
            {"id": "ok", "type": "human-approval", "config": {"approvers": ["boss"]}}]})
        results: list[Any] = []

        async def start() -> None:
            results.append(await rt.start_execution("same", {"same": True}, {"tenantId": "t"}))

        async with trio.open_nursery() as nursery:
            for _ in range(50):
                nursery.start_soon(start)
        assert len({r.execution.id for r in results}) == 1
        assert sum(r.created for r in results) == 1
        await rt.cancel(results[0].execution.id, reason="done")


PROBED = {"id": "probed", "steps": [
    {"id": "probe", "type": "probe"},
    {"id": "approve", "type": "human-approval", "config": {"approvers": ["boss"]}},
    {"id": "after", "type": "probe"}]}


async def probe(ctx: Any) -> Any:
    return {"probed": ctx.step_id}


async def test_an_execution_needing_a_type_not_registered_yet_waits_for_it(place: Place) -> None:
    async with open_runtime(place.store(), executors={"probe": probe}) as rt:
        await rt.register_runbook(PROBED)
        execution = await rt.start("probed")
        await until(rt, execution.id, lambda e: e.status == "awaiting_approval")
    async with open_runtime(place.store()) as rt, trio.open_nursery() as nursery:
        answers: list[Any] = []

        async def approve() -> None:
            answers.append(await rt.submit_approval(execution.id, "approve", approver="boss", decision="approve"))

        nursery.start_soon(approve)
        def waiting() -> int:  # on PostgreSQL the runtime leaves it to a capable process meanwhile
            return rt.catalog.waiting_for_types + (rt.cluster.waiting_for_owner if rt.cluster else 0)

        with trio.fail_after(10):
            while waiting() < 1:
                await trio.testing.wait_all_tasks_blocked()
        await trio.testing.wait_all_tasks_blocked(cushion=0.05)
        assert answers == []  # held until the type is known: not failed, not refused
        assert (await rt.fetch(execution.id)).status == "awaiting_approval"
        assert waiting() == 1
        rt.register_executor("probe", probe)
        with trio.fail_after(10):
            final = await rt.wait(execution.id)
        assert final.status == "completed" and final.steps["after"].output == {"probed": "after"}
    # (the nursery waited for the approval's caller: its answer may come after the execution ended)
    assert answers[0].steps["approve"].status == "succeeded"


async def test_executors_given_to_open_runtime_are_there_before_recovery(place: Place) -> None:
    async with open_runtime(place.store(), executors={"probe": probe}) as rt:
        await rt.register_runbook(PROBED)
        execution = await rt.start("probed")
        await until(rt, execution.id, lambda e: e.status == "awaiting_approval")
    async with open_runtime(place.store(), executors={"probe": probe}) as rt:
        with trio.fail_after(10):
            await rt.submit_approval(execution.id, "approve", approver="boss", decision="approve")
            assert (await rt.wait(execution.id)).status == "completed"
