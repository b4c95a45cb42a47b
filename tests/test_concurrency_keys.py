"""Concurrency keys: ``concurrency: {key, limit}`` queues executions per key, in arrival order."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from runtime import Conflict, Runtime, Settings, ValidationError, open_runtime

GATE = {"id": "deploy", "concurrency": {"key": "${input.service}", "limit": 1}, "steps": [
    {"id": "ok", "type": "human-approval", "config": {"approvers": ["boss"]}}]}


def gate(limit: int = 1, **fields: Any) -> dict[str, Any]:
    return {**GATE, "concurrency": {"key": "${input.service}", "limit": limit}, **fields}


async def status(rt: Runtime, execution_id: str) -> str:
    return (await rt.fetch(execution_id)).status.value


async def until(rt: Runtime, execution_id: str, wanted: str) -> None:
    with trio.fail_after(300):
        async for execution in rt.watch(execution_id):
            if execution.status == wanted:
                return
    raise AssertionError(f"execution {execution_id} ended {await status(rt, execution_id)}, not {wanted}")


async def test_executions_over_the_limit_wait_in_arrival_order_per_key(autojump_clock: Any) -> None:
    async with open_runtime("memory") as rt:
        await rt.register_runbook(gate())
        web = [(await rt.start("deploy", {"service": "web", "n": n})).id for n in range(3)]
        db = (await rt.start("deploy", {"service": "db"})).id
        await until(rt, web[0], "awaiting_approval")
        await until(rt, db, "awaiting_approval")  # another key: not held back
        assert [await status(rt, e) for e in web[1:]] == ["queued", "queued"]
        queued = await rt.fetch(web[1])
        assert queued.concurrency_key == "web" and queued.started_at is None
        assert [e.id for e in (await rt.list_executions(status="queued")).items] == [web[2], web[1]]  # newest first
        await rt.submit_approval(web[0], "ok", approver="boss", decision="approve")
        await until(rt, web[1], "awaiting_approval")  # the first in line, not the last
        assert await status(rt, web[2]) == "queued"
        await rt.submit_approval(web[1], "ok", approver="boss", decision="approve")
        await until(rt, web[2], "awaiting_approval")


async def test_a_limit_of_two_runs_two_at_once(autojump_clock: Any) -> None:
    async with open_runtime("memory") as rt:
        await rt.register_runbook(gate(limit=2))
        ids = [(await rt.start("deploy", {"service": "web", "n": n})).id for n in range(3)]
        await until(rt, ids[1], "awaiting_approval")
        assert [await status(rt, e) for e in ids] == ["awaiting_approval", "awaiting_approval", "queued"]
        await rt.cancel(ids[1], reason="not needed")
        await until(rt, ids[2], "awaiting_approval")


@pytest.mark.parametrize("end", ["completed", "failed", "cancelled", "timed_out"])
async def test_the_slot_is_given_back_whatever_the_end(end: str, autojump_clock: Any) -> None:
    async with open_runtime("memory") as rt:
        await rt.register_runbook(gate(timeoutMs=60_000))
        first = (await rt.start("deploy", {"service": "web", "n": 1})).id
        second = (await rt.start("deploy", {"service": "web", "n": 2})).id
        await until(rt, first, "awaiting_approval")
        await trio.sleep(30)  # a queued execution's timeout has not started
        assert await status(rt, second) == "queued"
        if end in ("completed", "failed"):
            await rt.submit_approval(first, "ok", approver="boss", decision="approve" if end == "completed" else "reject")
        elif end == "cancelled":
            await rt.cancel(first, reason="stop")
        await until(rt, first, end)
        await until(rt, second, "awaiting_approval")
        await trio.sleep(45)  # 75 s after it was queued, 45 s after it started: within its timeout
        assert await status(rt, second) == "awaiting_approval"


async def test_a_queued_execution_can_be_cancelled_and_not_paused(autojump_clock: Any) -> None:
    async with open_runtime("memory") as rt:
        await rt.register_runbook(gate())
        first = (await rt.start("deploy", {"service": "web", "n": 1})).id
        ids = [(await rt.start("deploy", {"service": "web", "n": n})).id for n in (2, 3)]
        with pytest.raises(Conflict, match="queued"):
            await rt.pause(ids[0], reason="hold")
        assert (await rt.cancel(ids[0], reason="superseded")).status == "cancelled"
        await rt.submit_approval(first, "ok", approver="boss", decision="approve")
        await until(rt, ids[1], "awaiting_approval")  # the cancelled one kept no place


async def test_the_queue_survives_a_restart(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path}/queue.db"
    async with open_runtime(url) as rt:
        await rt.register_runbook(gate())
        first = (await rt.start("deploy", {"service": "web", "n": 1})).id
        ids = [(await rt.start("deploy", {"service": "web", "n": n})).id for n in (2, 3)]
        await until(rt, first, "awaiting_approval")
    async with open_runtime(url) as rt:
        assert [await status(rt, e) for e in ids] == ["queued", "queued"]
        await rt.submit_approval(first, "ok", approver="boss", decision="approve")
        await until(rt, ids[0], "awaiting_approval")
        assert await status(rt, ids[1]) == "queued"


async def test_a_slot_given_but_not_yet_taken_before_a_restart_is_taken_after_it(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path}/queue.db"
    async with open_runtime(url, settings=Settings(queue_poll_ms=3_600_000)) as rt:
        await rt.register_runbook(gate())
        first = (await rt.start("deploy", {"service": "web", "n": 1})).id
        second = (await rt.start("deploy", {"service": "web", "n": 2})).id
        await until(rt, first, "awaiting_approval")
        rt.persistence.admitted = None  # the process dies before it tells the one it gave the slot
        await rt.cancel(first, reason="stop")
        assert await status(rt, second) == "queued"
    async with open_runtime(url) as rt:  # it looks for them as it opens
        await until(rt, second, "awaiting_approval")


@pytest.mark.parametrize(("block", "path", "message"), [
    ({"key": "${input.service}", "limit": 0}, "concurrency.limit", "integer from 1"),
    ({"key": "${input.service}"}, "concurrency.limit", "required"),
    ({"key": "", "limit": 1}, "concurrency.key", "non-empty"),
    ({"key": "${input.}", "limit": 1}, "concurrency.key", "bad template"),
    ({"key": "${step1.output}", "limit": 1}, "concurrency.key", "only input, context and tenantId"),
    ({"key": "x", "limit": 1, "scope": "global"}, "concurrency.scope", "unknown field"),
    ("service", "concurrency", "must be an object"),
])
async def test_a_bad_concurrency_block_is_refused_with_its_path(block: Any, path: str, message: str) -> None:
    async with open_runtime("memory") as rt:
        with pytest.raises(ValidationError) as refused:
            await rt.register_runbook({**GATE, "concurrency": block})
        assert any(p.path == path and message in p.message for p in refused.value.problems), refused.value.problems


async def test_a_start_whose_key_cannot_be_rendered_is_refused() -> None:
    async with open_runtime("memory") as rt:
        await rt.register_runbook(gate())
        with pytest.raises(ValidationError) as refused:
            await rt.start("deploy", {"other": 1})
        assert refused.value.problems[0].path == "concurrency.key"


@pytest.mark.postgres
async def test_two_processes_on_one_database_share_the_queue_of_a_key(schema: str) -> None:
    from tests.test_cluster import node

    async with node(schema, "a") as a, node(schema, "b") as b:
        await a.register_runbook(gate())
        first = (await a.start("deploy", {"service": "web", "n": 1})).id
        second = (await b.start("deploy", {"service": "web", "n": 2})).id  # owned by b, queued behind a's
        third = (await a.start("deploy", {"service": "web", "n": 3})).id
        await until(a, first, "awaiting_approval")
        assert (await a.fetch(second)).status == "queued" and b.owns(second)
        await a.submit_approval(first, "ok", approver="boss", decision="approve")  # a gives the slot to b's
        await until(b, second, "awaiting_approval")
        assert await status(a, third) == "queued"
        await a.cancel(second, reason="stop")  # through a, applied by b, the slot goes to a's
        await until(a, third, "awaiting_approval")


@pytest.mark.postgres
async def test_starts_racing_on_two_processes_never_both_take_the_last_slot(schema: str) -> None:
    from tests.test_cluster import node

    async with node(schema, "a") as a, node(schema, "b") as b:
        await a.register_runbook(gate(limit=2))
        started: list[tuple[Runtime, str]] = []

        async def start(rt: Runtime, n: int) -> None:
            started.append((rt, (await rt.start("deploy", {"service": "web", "n": n})).id))

        async with trio.open_nursery() as nursery:
            for n in range(8):
                nursery.start_soon(start, (a, b)[n % 2], n)
        for rt, execution_id in started:  # each as its owner knows it
            if await status(rt, execution_id) != "queued":
                await until(rt, execution_id, "awaiting_approval")
        assert sorted([await status(rt, e) for rt, e in started]) == ["awaiting_approval"] * 2 + ["queued"] * 6


def remediate(key: str = "${input.host}") -> dict[str, Any]:
    """A runbook whose second step takes the host's slot: the first runs at once in every execution."""
    return {"id": "remediate", "steps": [
        {"id": "look", "type": "echo"},
        {"id": "fix", "type": "human-approval", "config": {"approvers": ["boss"]},
         "concurrency": {"key": key, "limit": 1}},
        {"id": "after", "type": "echo"}]}


async def test_a_step_with_a_key_waits_pending_for_its_slot_and_gives_it_back_when_it_ends(
        autojump_clock: Any) -> None:
    async with open_runtime("memory") as rt:
        rt.register_executor("echo", echo)
        await rt.register_runbook(remediate())
        ids = [(await rt.start("remediate", {"host": "db-1", "n": n})).id for n in range(3)]
        other = (await rt.start("remediate", {"host": "db-2"})).id
        await until(rt, other, "awaiting_approval")  # another host: its own slot
        for execution_id in ids:
            await until_step(rt, execution_id, lambda state: state.slot is not None)
        asked: dict[str, int] = {}  # when each step asked for a slot (the log's order)
        for execution_id in ids:
            logs = await rt.logs(execution_id, step_id="fix")
            asked[execution_id] = min(entry.seq for entry in logs if "waiting for a slot" in entry.message)
        order = sorted(ids, key=asked.__getitem__)
        await until(rt, order[0], "awaiting_approval")  # the first to ask
        for waiting in order[1:]:
            execution = await rt.fetch(waiting)
            assert execution.status == "running"  # the execution runs; the step waits
            assert execution.steps["look"].status == "succeeded" and execution.steps["fix"].status == "pending"
            assert execution.steps["fix"].slot is not None and execution.steps["fix"].slot.key == "db-1"
        await rt.submit_approval(order[0], "fix", approver="boss", decision="reject")  # it fails
        await until(rt, order[1], "awaiting_approval")  # the next in line
        assert (await rt.fetch(order[2])).steps["fix"].status == "pending"
        await rt.cancel(order[1], reason="stop")
        await until(rt, order[2], "awaiting_approval")
        await rt.submit_approval(order[2], "fix", approver="boss", decision="approve")
        assert (await rt.wait(order[2])).status == "completed"


async def until_step(rt: Runtime, execution_id: str, holds: Any) -> None:
    with trio.fail_after(300):
        async for execution in rt.watch(execution_id):
            if holds(execution.steps["fix"]):
                return


async def test_a_step_key_that_cannot_be_rendered_fails_the_step(autojump_clock: Any) -> None:
    async with open_runtime("memory", settings=Settings(default_max_retries=0)) as rt:
        rt.register_executor("echo", echo)
        await rt.register_runbook(remediate("${look.missing}"))
        final = await rt.wait((await rt.start("remediate", {"host": "x"})).id)
        assert final.status == "failed" and final.steps["fix"].error is not None
        assert final.steps["fix"].error.code == "template"


async def test_a_step_slot_given_before_a_restart_is_taken_after_it(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path}/steps.db"
    async with open_runtime(url, settings=Settings(queue_poll_ms=3_600_000)) as rt:
        rt.register_executor("echo", echo)
        await rt.register_runbook(remediate())
        first = (await rt.start("remediate", {"host": "db-1", "n": 1})).id
        second = (await rt.start("remediate", {"host": "db-1", "n": 2})).id
        await until(rt, first, "awaiting_approval")
        rt.persistence.admitted = None  # the process dies before it tells the step
        await rt.cancel(first, reason="stop")
        assert (await rt.fetch(second)).steps["fix"].status == "pending"
    async with open_runtime(url) as rt:
        rt.register_executor("echo", echo)
        await until(rt, second, "awaiting_approval")


async def echo(ctx: Any) -> Any:
    return {"step": ctx.step_id}


async def test_a_step_retry_queues_the_execution_for_its_key_again(autojump_clock: Any) -> None:
    async with open_runtime("memory") as rt:
        await rt.register_runbook(gate())
        first = (await rt.start("deploy", {"service": "web", "n": 1})).id
        second = (await rt.start("deploy", {"service": "web", "n": 2})).id
        await until(rt, first, "awaiting_approval")
        await rt.submit_approval(first, "ok", approver="boss", decision="reject")
        await until(rt, second, "awaiting_approval")  # the slot went to the next in line
        retried = await rt.retry_step(first, "ok")
        assert retried.status == "queued"  # behind the one that holds the slot now
        await rt.submit_approval(second, "ok", approver="boss", decision="approve")
        await until(rt, first, "awaiting_approval")


@pytest.mark.postgres
async def test_a_step_key_is_shared_by_two_processes_on_one_database(schema: str) -> None:
    from tests.test_cluster import node

    async with node(schema, "a") as a, node(schema, "b") as b:
        for rt in (a, b):
            rt.register_executor("echo", echo)
        await a.register_runbook(remediate())
        first = (await a.start("remediate", {"host": "db-1", "n": 1})).id
        await until(a, first, "awaiting_approval")
        second = (await b.start("remediate", {"host": "db-1", "n": 2})).id
        await until_step(b, second, lambda state: state.slot is not None)
        assert (await b.fetch(second)).steps["fix"].status == "pending"
        await a.submit_approval(first, "fix", approver="boss", decision="approve")
        await until(b, second, "awaiting_approval")  # a's end gave b's step the slot
