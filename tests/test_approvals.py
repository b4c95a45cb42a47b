"""``Runtime.pending_approvals``: the approval steps waiting for one user's decision."""

from __future__ import annotations

from typing import Any

from runtime import Runtime, ValidationError
from tests.test_step_approval import until

RUNBOOK = {
    "id": "two-gates",
    "steps": [
        {"id": "prepare", "type": "echo", "config": {"value": {"build": "b-7"}}},
        {"id": "security", "type": "human-approval", "dependsOn": ["prepare"],
         "config": {"approvers": ["${input.owner}", "sec.lead"], "minApprovals": 2,
                    "message": "Ship ${prepare.build} for ${input.owner}?", "timeoutMs": 60000}},
        {"id": "release", "type": "human-approval", "dependsOn": ["prepare"],
         "config": {"approvers": ["rm.jane"]}},
    ],
}


async def _waiting(rt: Runtime, owner: str = "alice", tenant: str = "t1") -> Any:
    execution = await rt.start("two-gates", {"owner": owner}, {"tenantId": tenant, "userId": "u"}, force=True)
    return await until(rt, execution.id, lambda e: e.status == "awaiting_approval")


async def test_lists_the_steps_a_user_may_decide_with_rendered_config(rt: Runtime) -> None:
    await rt.register_runbook(RUNBOOK)
    first = await _waiting(rt)
    second = await _waiting(rt, owner="bob")
    other_tenant = await _waiting(rt, tenant="t2")

    page = await rt.pending_approvals("sec.lead", tenant_id="t1")
    assert [(item.execution_id, item.step_id) for item in page.items] == [
        (second.id, "security"), (first.id, "security")]  # newest execution first
    assert page.next_cursor is None
    item = page.items[1]
    assert item.message == "Ship b-7 for alice?"
    assert item.approvers == ("alice", "sec.lead")
    assert (item.min_approvals, item.approvals, item.approvals_needed) == (2, (), 2)
    assert item.runbook_id == "two-gates" and item.started_at is not None and item.deadline_at is not None

    assert [i.execution_id for i in (await rt.pending_approvals("alice", tenant_id="t1")).items] == [first.id]
    assert [i.step_id for i in (await rt.pending_approvals("rm.jane", tenant_id="t1")).items] == [
        "release", "release"]
    assert (await rt.pending_approvals("mallory", tenant_id="t1")).items == []
    assert [i.execution_id for i in (await rt.pending_approvals("sec.lead", tenant_id="t2")).items] == [
        other_tenant.id]


async def test_a_decision_removes_the_step_from_that_users_list_and_counts(rt: Runtime) -> None:
    await rt.register_runbook(RUNBOOK)
    execution = await _waiting(rt)
    await rt.submit_approval(execution.id, "security", approver="alice", decision="approve", tenant_id="t1")
    assert (await rt.pending_approvals("alice", tenant_id="t1")).items == []
    [item] = (await rt.pending_approvals("sec.lead", tenant_id="t1")).items
    assert [a.approver for a in item.approvals] == ["alice"]
    assert item.approvals_needed == 1

    await rt.submit_approval(execution.id, "release", approver="rm.jane", decision="reject", tenant_id="t1")
    await rt.wait(execution.id)
    assert (await rt.pending_approvals("sec.lead", tenant_id="t1")).items == []  # finished: nothing waits


async def test_pages_by_execution(rt: Runtime) -> None:
    await rt.register_runbook(RUNBOOK)
    started = [await _waiting(rt, owner=f"o{n}") for n in range(3)]
    first = await rt.pending_approvals("rm.jane", tenant_id="t1", limit=2)
    assert [i.execution_id for i in first.items] == [started[2].id, started[1].id]
    assert first.next_cursor is not None
    rest = await rt.pending_approvals("rm.jane", tenant_id="t1", limit=2, cursor=first.next_cursor)
    assert ([i.execution_id for i in rest.items], rest.next_cursor) == ([started[0].id], None)
    try:
        await rt.pending_approvals("rm.jane", tenant_id="t1", limit=0)
    except ValidationError as exc:
        assert exc.problems[0].path == "limit"
    else:
        raise AssertionError("limit 0 was accepted")


async def test_a_role_entry_lists_the_step_for_every_holder_of_the_role(rt: Runtime) -> None:
    await rt.register_runbook({"id": "on-call", "steps": [
        {"id": "gate", "type": "human-approval", "config": {"approvers": ["role:soc-lead"], "minApprovals": 2}}]})
    execution = await rt.start("on-call", {}, {"tenantId": "t1", "userId": "u"})
    await until(rt, execution.id, lambda e: e.status == "awaiting_approval")
    [item] = (await rt.pending_approvals("dana", tenant_id="t1", roles=["soc-lead"])).items
    assert (item.execution_id, item.step_id) == (execution.id, "gate")
    assert (await rt.pending_approvals("dana", tenant_id="t1", roles=["viewer"])).items == []
    assert (await rt.pending_approvals("dana", tenant_id="t1")).items == []
    await rt.submit_approval(execution.id, "gate", approver="dana", decision="approve", tenant_id="t1",
                             roles=["soc-lead"])
    assert (await rt.pending_approvals("dana", tenant_id="t1", roles=["soc-lead"])).items == []  # decided
    assert len((await rt.pending_approvals("eve", tenant_id="t1", roles=["soc-lead"])).items) == 1


async def test_the_arguments_are_checked(rt: Runtime) -> None:
    try:
        await rt.pending_approvals(7, tenant_id="t1", roles="soc-lead")  # type: ignore[arg-type]
    except ValidationError as exc:
        assert {p.path for p in exc.problems} == {"user", "roles"}
    else:
        raise AssertionError("a number as user and a string of roles were accepted")
