"""Parked executions hold no actor: a message or a deadline brings one back from committed state."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest
import trio
import trio.testing

from runtime import Conflict, Runtime, Settings, open_runtime
from tests.conftest import Recorder

HOUR = 3600
APPROVAL = {"id": "gate", "steps": [
    {"id": "approve", "type": "human-approval", "config": {"approvers": ["ann"], "timeoutMs": 4 * HOUR * 1000}},
    {"id": "after", "type": "echo"}]}
WAIT = {"id": "wait", "steps": [
    {"id": "ev", "type": "wait-for-event", "config": {"eventType": "go", "correlationKey": "${input.key}"}},
    {"id": "after", "type": "echo"}]}


async def parked(rt: Runtime, execution_id: str) -> Any:
    """Wait until the execution has no live actor, then return its state."""
    async for state in rt.watch(execution_id):
        if state.steps.get("approve", state.steps.get("ev")).status.in_progress:
            break
    await trio.testing.wait_all_tasks_blocked()  # its actor has left by then
    assert rt.directory.snapshot(execution_id) is None
    return await rt.fetch(execution_id)


async def test_an_execution_waiting_for_a_decision_holds_no_actor(rt: Runtime, recorder: Recorder,
                                                                   autojump_clock: Any) -> None:
    await rt.register_runbook(APPROVAL)
    executions = [await rt.start("gate", {"n": i}) for i in range(20)]
    for execution in executions:
        await parked(rt, execution.id)
    assert rt.directory.live == 0 and rt.open_executions == 20
    assert all(rt.owns(e.id) for e in executions)
    done = await rt.submit_approval(executions[0].id, "approve", approver="ann", decision="approve")
    assert done.steps["approve"].status == "succeeded"  # the answer is the committed execution
    assert (await rt.wait(executions[0].id)).status == "completed"
    assert rt.open_executions == 19 and recorder.order() == ["after"]


async def test_a_parked_deadline_fires_with_no_actor_running(rt: Runtime, autojump_clock: Any) -> None:
    await rt.register_runbook(APPROVAL)
    execution = await rt.start("gate")
    await parked(rt, execution.id)
    started = trio.current_time()
    final = await rt.wait(execution.id)
    assert final.status == "failed" and final.steps["approve"].error.code == "timeout"
    assert trio.current_time() - started == pytest.approx(4 * HOUR)


async def test_an_event_reaches_a_parked_execution(rt: Runtime, recorder: Recorder, autojump_clock: Any) -> None:
    await rt.register_runbook(WAIT)
    execution = await rt.start("wait", {"key": "k1"})
    await parked(rt, execution.id)
    result = await rt.publish_event("go", "k1", {"ok": 1})
    assert result.delivered == 1 and not result.retained
    assert (await rt.wait(execution.id)).status == "completed"


async def test_a_paused_execution_parks_and_resume_brings_it_back(rt: Runtime, recorder: Recorder,
                                                                   autojump_clock: Any) -> None:
    await rt.register_runbook({"id": "two", "steps": [{"id": "a", "type": "echo", "config": {"sleep": 5}},
                                                      {"id": "b", "type": "echo"}]})
    execution = await rt.start("two")
    await trio.sleep(1)
    await rt.pause(execution.id, reason="hold")
    async for state in rt.watch(execution.id):
        if state.status == "paused":
            break
    await trio.sleep(0.1)
    assert rt.directory.live == 0 and rt.open_executions == 1
    resumed = await rt.resume(execution.id)
    assert resumed.status == "running"
    assert (await rt.wait(execution.id)).status == "completed" and recorder.order() == ["a", "b"]


async def test_two_concurrent_retries_run_the_step_once_more(rt: Runtime, recorder: Recorder,
                                                              autojump_clock: Any) -> None:
    recorder.fail_times["flaky"] = 1  # fails its first attempt (no retries by default here)
    await rt.register_runbook({"id": "r", "steps": [{"id": "flaky", "type": "echo"}]})
    execution = await rt.start("r")
    assert (await rt.wait(execution.id)).status == "failed"
    outcomes: list[Any] = []

    async def retry() -> None:
        try:
            outcomes.append(await rt.retry_step(execution.id, "flaky"))
        except Conflict as exc:
            outcomes.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(retry)
        nursery.start_soon(retry)
    assert sorted(type(o).__name__ for o in outcomes) == ["Conflict", "Execution"]
    assert (await rt.wait(execution.id)).status == "completed"
    assert recorder.order() == ["flaky", "flaky"]  # twice in all: never three times


async def test_get_answers_recent_executions_from_memory_and_older_ones_from_the_store(
        tmp_path: pathlib.Path, autojump_clock: Any) -> None:
    store = f"sqlite:///{tmp_path / 'g.db'}"
    settings = Settings(finished_cache_size=2)
    async with open_runtime(store, settings=settings, executors={"echo": Recorder().echo}) as rt:
        await rt.register_runbook({"id": "one", "steps": [{"id": "a", "type": "echo"}]})
        ids = [(await rt.start("one", {"i": i})).id for i in range(4)]
        for execution_id in ids:
            await rt.wait(execution_id)
        assert rt.hub.recent(ids[-1]) is not None and rt.hub.recent(ids[0]) is None
        assert (await rt.get(ids[-1])).status == "completed"  # recent: in memory
        assert (await rt.get(ids[0])).status == "completed"  # fell out of the cache: read from the store
