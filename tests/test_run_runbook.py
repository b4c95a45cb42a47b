"""run-runbook: a child execution per step attempt; success with its output, failure,
cancellation both ways, pause, depth, restarts that never start a second child."""

from __future__ import annotations

import pathlib
from typing import Any

import attrs
import pytest
import trio

from runtime import Runtime, Settings, ValidationError, open_runtime
from runtime.kinds.run_runbook import MAX_DEPTH
from tests.conftest import Recorder

CHILD = {"id": "child", "inputSchema": {"type": "object", "required": ["n"]},
         "output": "${work}",
         "steps": [{"id": "work", "type": "echo", "config": {"value": {"doubled": "${input.n}"}}}]}


def parent(child: str = "child", **config: Any) -> dict[str, Any]:
    return {"id": "parent", "steps": [
        {"id": "prep", "type": "echo", "config": {"value": 21}},
        {"id": "sub", "type": "run-runbook",
         "config": {"runbookId": child, "input": {"n": "${prep}"}, **config}},
        {"id": "after", "type": "echo", "config": {"value": "${sub.doubled}"}},
    ]}


async def children_of(rt: Runtime, parent_id: str) -> list[Any]:
    page = await rt.list_executions(limit=100)
    return [e for e in page.items if e.parent_execution_id == parent_id]


async def started_child(rt: Runtime, parent_id: str) -> str:
    """The id of the parent's child, once it has started (its start follows the parent's commit)."""
    started = trio.Event()

    def observer(what: str, data: Any) -> None:
        if what == "execution.started" and data.parent_execution_id == parent_id:
            started.set()

    rt.observers.append(observer)
    try:
        with trio.fail_after(30):
            while not await children_of(rt, parent_id):
                await started.wait()
    finally:
        rt.observers.remove(observer)
    [child] = await children_of(rt, parent_id)
    return str(child.id)


async def until(rt: Runtime, execution_id: str, predicate: Any) -> Any:
    with trio.fail_after(30):
        async for execution in rt.watch(execution_id):
            if predicate(execution):
                return execution
    raise AssertionError("finished before the condition held")


async def test_the_step_succeeds_with_the_childs_output(rt: Runtime) -> None:
    await rt.register_runbook(CHILD)
    await rt.register_runbook(parent())
    ex = await rt.start("parent", context={"tenantId": "t1", "userId": "ann", "legalBasis": "ops"})
    final = await rt.wait(ex.id, tenant_id="t1")
    assert final.status == "completed", final.error
    assert final.steps["sub"].output == {"doubled": 21}
    assert final.steps["after"].output == 21
    [child] = await children_of(rt, ex.id)
    assert final.steps["sub"].child_execution_id == child.id
    assert (child.parent_execution_id, child.parent_step_id, child.tenant_id) == (ex.id, "sub", "t1")
    assert child.context["legalBasis"] == "ops" and child.input == {"n": 21}
    audit = await rt.audit(child.id)
    assert audit[0].actor == f"execution:{ex.id}"


async def test_a_failed_child_fails_the_step_with_its_error(rt: Runtime) -> None:
    await rt.register_runbook({"id": "child", "steps": [{"id": "w", "type": "echo", "config": {"fail": "disk full"}}]})
    await rt.register_runbook(parent())
    final = await rt.wait((await rt.start("parent")).id)
    error = final.steps["sub"].error
    assert final.status == "failed" and error.code == "child_failed" and not error.retryable
    assert "failed" in error.message and "disk full" in error.message
    assert final.steps["after"].status == "pending"


async def test_a_child_that_cannot_start_fails_the_step(rt: Runtime) -> None:
    await rt.register_runbook(parent(child="missing"))
    final = await rt.wait((await rt.start("parent")).id)
    assert final.steps["sub"].error.code == "child_failed"
    assert "'missing'" in final.steps["sub"].error.message


async def test_cancelling_the_parent_cancels_the_child_and_pause_does_not_pause_it(rt: Runtime) -> None:
    await rt.register_runbook({"id": "child", "steps": [
        {"id": "hold", "type": "human-approval", "config": {"approvers": ["boss"]}}]})
    await rt.register_runbook(parent())
    ex = await rt.start("parent")
    child_id = await started_child(rt, ex.id)
    child = await until(rt, child_id, lambda e: e.status == "awaiting_approval")
    paused = await rt.pause(ex.id, "look")
    assert paused.status == "paused"
    assert (await rt.fetch(child.id)).status == "awaiting_approval"  # not paused with it
    await rt.cancel(ex.id, "not needed", actor="ops")
    done = await rt.wait(child.id)
    assert done.status == "cancelled"
    assert (await rt.fetch(ex.id)).steps["sub"].status == "cancelled"


async def test_a_child_that_ends_while_the_parent_is_paused_is_kept(rt: Runtime) -> None:
    ex, child_id = await parent_with_held_child(rt)
    await rt.pause(ex.id, "look")
    await rt.submit_approval(child_id, "hold", approver="boss", decision="approve")
    kept = await until(rt, ex.id, lambda e: e.steps["sub"].status == "succeeded")
    assert kept.status == "paused" and kept.steps["sub"].output["approved"] is True
    assert kept.steps["after"].status == "pending"  # nothing starts while paused


async def test_a_cancelled_child_fails_the_step(rt: Runtime) -> None:
    ex, child_id = await parent_with_held_child(rt)
    await rt.cancel(child_id, "wrong child")
    final = await rt.wait(ex.id)
    assert final.steps["sub"].error.code == "child_failed"
    assert "cancelled" in final.steps["sub"].error.message and "wrong child" in final.steps["sub"].error.message


async def test_a_chain_deeper_than_the_limit_fails_with_depth_limit(rt: Runtime) -> None:
    await rt.register_runbook({"id": "again", "steps": [
        {"id": "deeper", "type": "run-runbook", "config": {"runbookId": "again"}}]})
    root = await rt.start("again")
    final = await rt.wait(root.id)
    assert final.status == "failed"
    page = await rt.list_executions(limit=100)
    by_depth = sorted(page.items, key=lambda e: e.depth)
    assert [e.depth for e in by_depth] == list(range(MAX_DEPTH + 1))
    deepest = by_depth[-1]
    assert deepest.steps["deeper"].error.code == "depth_limit"
    assert deepest.steps["deeper"].child_execution_id is None  # it started no child, so it names none
    assert final.steps["deeper"].error.code == "child_failed"
    assert all(e.steps["deeper"].child_execution_id in {c.id for c in by_depth} for e in by_depth[:-1])


async def test_a_child_that_could_not_start_is_not_named_by_the_step(rt: Runtime) -> None:
    await rt.register_runbook(parent(child="no-such-runbook"))
    final = await rt.wait((await rt.start("parent")).id)
    assert final.steps["sub"].error.code == "child_failed" and "could not start" in final.steps["sub"].error.message
    assert final.steps["sub"].child_execution_id is None
    assert await children_of(rt, final.id) == []


async def test_a_secret_cannot_be_passed_to_a_child(rt: Runtime) -> None:
    with pytest.raises(ValidationError, match="cannot be passed to a child"):
        await rt.register_runbook(parent(input={"token": "${secret.X}"}))


async def parent_with_held_child(rt: Runtime) -> tuple[Any, str]:
    """A parent whose child waits for boss's approval: (the parent, the child's id)."""
    await rt.register_runbook({"id": "child", "steps": [
        {"id": "hold", "type": "human-approval", "config": {"approvers": ["boss"]}}]})
    await rt.register_runbook(parent())
    ex = await rt.start("parent")
    child_id = await started_child(rt, ex.id)
    await until(rt, child_id, lambda e: e.status == "awaiting_approval")
    return ex, child_id


async def test_a_restart_of_the_parent_does_not_start_a_second_child(tmp_path: pathlib.Path) -> None:
    url = f"sqlite:///{tmp_path / 'rb.db'}"
    recorder = Recorder()
    async with open_runtime(url, settings=Settings(default_max_retries=0), executors={"echo": recorder.echo}) as rt:
        ex, child_id = await parent_with_held_child(rt)
    async with open_runtime(url, settings=Settings(default_max_retries=0), executors={"echo": recorder.echo}) as rt:
        await rt.submit_approval(child_id, "hold", approver="boss", decision="approve")
        final = await rt.wait(ex.id)
        assert [c.id for c in await children_of(rt, ex.id)] == [child_id]
        assert final.steps["sub"].status == "succeeded"
        assert final.steps["sub"].child_execution_id == child_id


async def test_the_child_ended_while_its_parent_was_down(tmp_path: pathlib.Path) -> None:
    """The child's end reaches a parent that was not running: it asks again when it resumes."""
    url = f"sqlite:///{tmp_path / 'rb.db'}"
    recorder = Recorder()
    async with open_runtime(url, executors={"echo": recorder.echo}) as rt:
        ex, child_id = await parent_with_held_child(rt)
        rt.children.finished = lambda child: None  # type: ignore[method-assign]  # the message is lost
        await rt.submit_approval(child_id, "hold", approver="boss", decision="approve")
        await rt.wait(child_id)
        assert (await rt.fetch(ex.id)).steps["sub"].status == "running"
    async with open_runtime(url, executors={"echo": recorder.echo}) as rt:
        final = await rt.wait(ex.id)
        assert final.steps["sub"].status == "succeeded" and len(await children_of(rt, ex.id)) == 1


def drop_first_child_cancel(rt: Runtime) -> None:
    """The parent's cancel of its child is lost, as when the process stops between the parent's
    commit and the child's (the cancel is handed over after the commit)."""
    kept = rt.children._host

    async def lose_once(execution_id: str, reason: str, actor: str) -> None:
        rt.children._host = kept

    rt.children._host = attrs.evolve(kept, cancel=lose_once)


async def test_a_child_whose_parent_was_cancelled_before_its_cancel_was_committed_is_cancelled_at_restart(
        tmp_path: pathlib.Path) -> None:
    url = f"sqlite:///{tmp_path / 'rb.db'}"
    recorder = Recorder()
    async with open_runtime(url, executors={"echo": recorder.echo}) as rt:
        ex, child_id = await parent_with_held_child(rt)
        drop_first_child_cancel(rt)
        assert (await rt.cancel(ex.id, reason="not today")).status == "cancelled"
        assert (await rt.fetch(child_id)).status == "awaiting_approval"
    async with open_runtime(url, executors={"echo": recorder.echo}) as rt:
        child = await until(rt, child_id, lambda e: e.status.finished)
        assert child.status == "cancelled"
        assert child.error is not None and child.error.message == f"parent execution {ex.id} ended"
