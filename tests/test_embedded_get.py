"""``await rt.get(id)`` finds an execution wherever it is: in memory (without a store read),
parked, finished and long out of the cache, after a restart, on another process; ``NotFound``
only for an execution the tenant does not have."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import Any

import pytest
import trio
import trio.testing

from runtime import NotFound, Runtime, Settings, open_runtime
from tests.conftest import DSN

APPROVAL = {"id": "gate", "steps": [{"id": "approve", "type": "human-approval", "config": {"approvers": ["ann"]}}]}
QUICK = {"id": "quick", "steps": [{"id": "a", "type": "echo", "config": {"value": 1}}]}


HELD = {"id": "held", "steps": [{"id": "hold", "type": "hold"}]}
RELEASE = trio.Event()


async def echo(ctx: Any) -> Any:
    return ctx.config.get("value")


async def hold(ctx: Any) -> Any:
    await RELEASE.wait()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'get.db'}"
        return
    schema = request.getfixturevalue("schema")
    yield f"{DSN}?schema={schema}"


def opened(url: str, **settings: Any) -> Any:
    return open_runtime(url, settings=Settings(instance_id="one", **settings), executors={"echo": echo, "hold": hold})


def counting_reads(rt: Runtime) -> list[str]:
    """The execution ids the store is asked for from now on."""
    asked: list[str] = []
    read = rt.store.get_execution

    def counted(execution_id: str) -> Any:
        asked.append(execution_id)
        return read(execution_id)

    rt.store.get_execution = counted  # type: ignore[method-assign]
    return asked


async def test_get_finds_parked_finished_and_evicted_executions(store_url: str) -> None:
    async with opened(store_url, finished_cache_size=1) as rt:
        await rt.register_runbook(APPROVAL)
        await rt.register_runbook(QUICK)
        await rt.register_runbook(HELD)
        running = await rt.start("held", {})
        waiting = await rt.start("gate", {}, {"tenantId": "t1"})
        done = [(await rt.start("quick", {"i": i}, {"tenantId": "t1"})).id for i in range(3)]
        for execution_id in done:
            await rt.wait(execution_id)
        await trio.testing.wait_all_tasks_blocked()
        asked = counting_reads(rt)
        assert (await rt.get(running.id)).steps["hold"].status == "running"  # live here: from memory
        assert asked == []
        assert (await rt.get(done[0])).status == "completed"  # out of the cache: read from the store
        assert (await rt.get(done[0], tenant_id="t1")).output == 1  # (it said NotFound before)
        assert asked == [done[0], done[0]]
        assert (await rt.get(waiting.id)).status == "awaiting_approval"  # parked
        fetched = await rt.fetch(done[1])
        assert await rt.get(done[1]) == fetched  # right after fetch too
        with pytest.raises(NotFound):
            await rt.get(done[0], tenant_id="t2")  # another tenant's: as if absent
        with pytest.raises(NotFound):
            await rt.get("no-such-execution")
        await rt.cancel(running.id, reason="done")


async def test_get_finds_executions_after_a_restart(store_url: str) -> None:
    async with opened(store_url) as rt:
        await rt.register_runbook(APPROVAL)
        await rt.register_runbook(QUICK)
        waiting = await rt.start("gate", {})
        finished = await rt.wait((await rt.start("quick", {})).id)
    async with opened(store_url) as rt:
        assert (await rt.get(finished.id)).status == "completed"
        assert (await rt.get(finished.id)).output == finished.output
        assert (await rt.get(waiting.id)).steps["approve"].status == "awaiting_approval"
        with pytest.raises(NotFound):
            await rt.get("no-such-execution")


@pytest.mark.postgres
async def test_get_on_a_process_that_does_not_own_the_execution(schema: str) -> None:
    url = f"{DSN}?schema={schema}"
    async with open_runtime(url, settings=Settings(instance_id="a")) as a, \
            open_runtime(url, settings=Settings(instance_id="b")) as b:
        await a.register_runbook(APPROVAL)
        ex = await a.start("gate", {})
        assert a.owns(ex.id) and not b.owns(ex.id)
        async for state in a.watch(ex.id):
            if state.status == "awaiting_approval":
                break
        found = await b.get(ex.id)  # read from the database, though b does not run it
        assert found.status == "awaiting_approval" and found.steps["approve"].status == "awaiting_approval"

