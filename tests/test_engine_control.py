"""Control operations: pause/resume, cancel, global timeout, retry step, replay, 409s."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from runtime import Conflict, NotFound, Runtime
from tests.conftest import Recorder


async def started(rt: Runtime, doc: dict[str, Any], **start: Any) -> Any:
    await rt.register_runbook(doc)
    return await rt.start(doc["id"], **start)


async def until(rt: Runtime, execution_id: str, predicate: Any) -> Any:
    async for execution in rt.watch(execution_id):
        if predicate(execution):
            return execution
    raise AssertionError("execution finished before the condition held")


SLOW3 = {"id": "slow3", "steps": [{"id": f"s{i}", "type": "echo", "config": {"sleep": 10}} for i in range(3)]}


async def test_pause_waits_for_steps_in_flight_then_resume_continues(rt: Runtime, recorder: Recorder, autojump_clock: Any) -> None:
    ex = await started(rt, SLOW3)
    await until(rt, ex.id, lambda e: e.steps["s0"].status == "running")
    await trio.sleep(2)
    paused = await rt.pause(ex.id, reason="change freeze", actor="alice")
    assert paused.status == "pausing"  # s0 is still running
    current = await until(rt, ex.id, lambda e: e.status == "paused")
    assert current.steps["s0"].status == "succeeded"
    assert current.steps["s1"].status == "pending"  # nothing new started
    await trio.sleep(1000)
    assert (await rt.get(ex.id)).steps["s1"].status == "pending"
    await rt.resume(ex.id, actor="alice")
    final = await rt.wait(ex.id)
    assert final.status == "completed"
    assert final.paused_duration_ms == 1000 * 1000 + 8000  # from pause request to resume
    actions = [(a.action, a.actor, a.reason) for a in await rt.audit(ex.id)]
    assert ("execution.pause", "alice", "change freeze") in actions
    assert ("execution.resume", "alice", None) in actions


async def test_pause_with_nothing_in_flight_is_paused_at_once(rt: Runtime, autojump_clock: Any) -> None:
    doc = {"id": "appr", "steps": [{"id": "ok", "type": "human-approval", "config": {"approvers": ["bob"]}},
                                   {"id": "after", "type": "echo"}]}
    ex = await started(rt, doc)
    await until(rt, ex.id, lambda e: e.status == "awaiting_approval")
    assert (await rt.pause(ex.id)).status == "paused"
    # a wait goes on while paused, and its result is kept
    await rt.submit_approval(ex.id, "ok", approver="bob", decision="approve")
    current = await rt.get(ex.id)
    assert current.status == "paused"
    assert current.steps["ok"].status == "succeeded"
    assert current.steps["after"].status == "pending"
    await rt.resume(ex.id)
    assert (await rt.wait(ex.id)).status == "completed"


async def test_global_timeout_excludes_paused_time(rt: Runtime, autojump_clock: Any) -> None:
    doc = {"id": "gt", "timeoutMs": 3_600_000, "steps": [
        {"id": "wait", "type": "human-approval", "config": {"approvers": ["bob"]}}]}
    ex = await started(rt, doc)
    await trio.sleep(600)
    await rt.pause(ex.id)
    await trio.sleep(7200)  # two paused hours do not count
    assert (await rt.get(ex.id)).status == "paused"
    await rt.resume(ex.id)
    final = await rt.wait(ex.id)
    assert final.status == "timed_out"
    assert final.error.code == "timeout"
    assert final.paused_duration_ms == 7_200_000
    assert trio.current_time() == pytest.approx(3600 + 7200)
    assert final.steps["wait"].status == "cancelled"


async def test_cancel_aborts_steps_in_flight_at_once(rt: Runtime, recorder: Recorder, autojump_clock: Any) -> None:
    ex = await started(rt, SLOW3)
    await until(rt, ex.id, lambda e: e.steps["s0"].status == "running")
    before = trio.current_time()
    cancelled = await rt.cancel(ex.id, reason="wrong target", actor="carol")
    assert cancelled.status == "cancelled"
    assert cancelled.steps["s0"].status == "cancelled"
    assert cancelled.steps["s1"].status == "pending"
    assert trio.current_time() == before  # no waiting for the step
    await trio.testing.wait_all_tasks_blocked()
    assert recorder.running == 0  # the step task is gone
    audit = [a for a in await rt.audit(ex.id) if a.action == "execution.cancelled"]
    assert audit[0].actor == "carol" and audit[0].reason == "wrong target"


async def test_cancel_requires_a_reason(rt: Runtime, autojump_clock: Any) -> None:
    from runtime import ValidationError

    ex = await started(rt, SLOW3)
    with pytest.raises(ValidationError):
        await rt.cancel(ex.id, reason="")


async def test_control_that_does_not_fit_the_state_is_a_conflict(rt: Runtime, autojump_clock: Any) -> None:
    ex = await started(rt, SLOW3)
    await until(rt, ex.id, lambda e: e.status == "running")
    with pytest.raises(Conflict):
        await rt.resume(ex.id)  # running, not paused
    with pytest.raises(Conflict):
        await rt.retry_step(ex.id, "s0")  # not failed
    final = await rt.wait(ex.id)
    for operation in (rt.pause(ex.id), rt.resume(ex.id), rt.cancel(ex.id, reason="late")):
        with pytest.raises(Conflict):
            await operation
    assert await rt.get(ex.id) == final  # nothing changed
    with pytest.raises(NotFound):
        await rt.pause("no-such-execution")


async def test_retry_step_reruns_the_failed_step_and_downstream(rt: Runtime, recorder: Recorder, autojump_clock: Any) -> None:
    recorder.fail_times["b"] = 1  # fails its first attempt only
    doc = {"id": "retry", "steps": [
        {"id": "a", "type": "echo"},
        {"id": "b", "type": "echo", "retryPolicy": {"maxRetries": 0}},
        {"id": "c", "type": "echo"},
        {"id": "side", "type": "echo", "dependsOn": [], "config": {"sleep": 50}},
    ]}
    ex = await started(rt, doc)
    failed = await rt.wait(ex.id)
    assert failed.status == "failed"
    assert failed.steps["side"].status == "cancelled"
    assert failed.steps["c"].status == "pending"
    retried = await rt.retry_step(ex.id, "b", actor="dave")
    assert retried.status == "running"
    final = await rt.wait(ex.id)
    assert final.status == "completed"
    assert [s for s in recorder.order() if s == "a"] == ["a"]  # succeeded steps do not run again
    assert recorder.order().count("b") == 2
    assert final.steps["side"].status == "succeeded"
    assert any(a.action == "step.retry" and a.actor == "dave" for a in await rt.audit(ex.id))


async def test_replay_starts_a_new_execution_of_the_same_version(rt: Runtime, autojump_clock: Any) -> None:
    doc = {"id": "rp", "steps": [{"id": "a", "type": "echo", "config": {"value": "${input.x}"}}]}
    ex = await started(rt, doc, input={"x": 1}, context={"tenantId": "t1", "legalBasis": "contract"})
    await rt.wait(ex.id)
    await rt.register_runbook({**doc, "steps": [{"id": "a", "type": "echo", "config": {"value": "v2"}}]})
    replay = await rt.replay(ex.id)
    assert replay.id != ex.id and replay.replay_of == ex.id
    assert replay.runbook_version == 1
    assert replay.context["legalBasis"] == "contract" and replay.tenant_id == "t1"
    assert (await rt.wait(replay.id)).output == 1


async def test_execution_pins_the_version_it_started_on(rt: Runtime, autojump_clock: Any) -> None:
    v1 = {"id": "pin", "steps": [{"id": "a", "type": "echo", "config": {"sleep": 5, "value": "v1"}}]}
    ex = await started(rt, v1)
    v2 = await rt.register_runbook({**v1, "steps": [{"id": "a", "type": "echo", "config": {"value": "v2"}}]})
    assert v2.version == 2
    assert (await rt.wait(ex.id)).output == "v1"
    latest = await rt.start("pin")
    assert latest.runbook_version == 2
