"""human-approval: N of M, rejection, authorization, duplicates, timeouts (hours, on
the MockClock), output, awaiting_approval, audit and evidence, retry as a fresh round."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from runtime import Conflict, Forbidden, NotFound, Runtime, Settings, ValidationError, open_runtime
from runtime.model.wire import format_time, sha256_hex
from tests.conftest import Recorder

HOUR = 3600


def approval(config: dict[str, Any] | None = None, *after: dict[str, Any], rid: str = "ap",
             key: str = "approvalConfig", **step: Any) -> dict[str, Any]:
    config = {"approvers": ["alice", "bob", "carol"], **(config or {})}
    return {"id": rid, "steps": [{"id": "approve", "type": "human-approval", key: config, **step},
                                 *(after or ({"id": "deploy", "type": "echo"},))]}


async def start(rt: Runtime, doc: dict[str, Any], **kwargs: Any) -> Any:
    await rt.register_runbook(doc)
    ex = await rt.start(doc["id"], **kwargs)
    return await until(rt, ex.id, lambda e: e.steps["approve"].status == "awaiting_approval")


async def until(rt: Runtime, execution_id: str, predicate: Any) -> Any:
    async for execution in rt.watch(execution_id):
        if predicate(execution):
            return execution
    raise AssertionError("execution finished before the condition held")


async def test_single_approval_succeeds_and_the_execution_continues(rt: Runtime, recorder: Recorder, autojump_clock: Any) -> None:
    ex = await start(rt, approval(key="config"))  # `config` works as well as `approvalConfig`
    assert ex.status == "awaiting_approval"
    await trio.sleep(90)
    after = await rt.submit_approval(ex.id, "approve", approver="bob", decision="approve", comment="ship it")
    assert after.steps["approve"].status == "succeeded"
    final = await rt.wait(ex.id)
    assert final.status == "completed"
    assert recorder.order() == ["deploy"]
    output = final.steps["approve"].output
    digest = ex.steps["approve"].approval_request.digest
    assert output == {"approved": True, "autoApproved": False, "approvals": [
        {"approver": "bob", "decision": "approve", "comment": "ship it", "at": output["approvals"][0]["at"],
         "digest": digest}]}
    at = final.steps["approve"].approvals[0].at
    assert output["approvals"][0]["at"] == format_time(at)
    assert (at - final.started_at).total_seconds() == pytest.approx(90)


async def test_n_of_m_needs_distinct_approvers(rt: Runtime, autojump_clock: Any) -> None:
    ex = await start(rt, approval({"minApprovals": 2}))
    await rt.submit_approval(ex.id, "approve", approver="alice", decision="approve")
    current = await rt.get(ex.id)
    assert current.steps["approve"].status == "awaiting_approval"
    assert current.status == "awaiting_approval"
    with pytest.raises(Conflict):
        await rt.submit_approval(ex.id, "approve", approver="alice", decision="approve")
    with pytest.raises(Conflict):  # a changed mind is a second decision too
        await rt.submit_approval(ex.id, "approve", approver="alice", decision="reject")
    current = await rt.get(ex.id)
    assert [a.approver for a in current.steps["approve"].approvals] == ["alice"]  # not counted
    assert current.steps["approve"].status == "awaiting_approval"
    await rt.submit_approval(ex.id, "approve", approver="carol", decision="approve")
    final = await rt.wait(ex.id)
    assert final.status == "completed"
    assert [(a["approver"], a["decision"]) for a in final.steps["approve"].output["approvals"]] == [
        ("alice", "approve"), ("carol", "approve")]


async def test_approver_not_in_the_list_is_forbidden(rt: Runtime, autojump_clock: Any) -> None:
    ex = await start(rt, approval())
    with pytest.raises(Forbidden):
        await rt.submit_approval(ex.id, "approve", approver="mallory", decision="approve")
    assert (await rt.get(ex.id)).steps["approve"].approvals == ()
    assert not any(a.action == "approval.decided" for a in await rt.audit(ex.id))


async def test_bad_decision_unknown_step_and_non_approval_step(rt: Runtime, autojump_clock: Any) -> None:
    ex = await start(rt, approval())
    with pytest.raises(ValidationError):
        await rt.submit_approval(ex.id, "approve", approver="alice", decision="maybe")
    with pytest.raises(NotFound):
        await rt.submit_approval(ex.id, "nope", approver="alice", decision="approve")
    with pytest.raises(Conflict):
        await rt.submit_approval(ex.id, "deploy", approver="alice", decision="approve")
    assert (await rt.get(ex.id)).steps["approve"].status == "awaiting_approval"


async def test_one_rejection_ends_the_step_at_once_and_fails_the_execution(rt: Runtime, recorder: Recorder, autojump_clock: Any) -> None:
    ex = await start(rt, approval({"minApprovals": 3}))
    await rt.submit_approval(ex.id, "approve", approver="alice", decision="approve")
    await rt.submit_approval(ex.id, "approve", approver="bob", decision="reject", comment="not during the freeze")
    final = await rt.wait(ex.id)
    step = final.steps["approve"]
    assert step.status == "rejected"
    assert (step.error.code, step.error.retryable) == ("rejected", False)
    assert step.output["approved"] is False
    assert [a["approver"] for a in step.output["approvals"]] == ["alice", "bob"]
    assert final.status == "failed"
    assert final.error.code == "rejected" and final.error.step_id == "approve"
    assert final.steps["deploy"].status == "pending"
    assert recorder.calls == []
    with pytest.raises(Conflict):  # too late for carol
        await rt.submit_approval(ex.id, "approve", approver="carol", decision="approve")


async def test_rejection_with_continue_on_error_lets_dependents_run(rt: Runtime, recorder: Recorder, autojump_clock: Any) -> None:
    ex = await start(rt, approval(continueOnError=True))
    await rt.submit_approval(ex.id, "approve", approver="carol", decision="reject")
    final = await rt.wait(ex.id)
    assert final.status == "completed"
    assert final.steps["approve"].status == "rejected"
    assert recorder.order() == ["deploy"]


# ---- timeouts (MockClock, virtual hours) --------------------------------------------------------


async def test_timeout_fail_is_the_default(rt: Runtime, autojump_clock: Any) -> None:
    ex = await start(rt, approval({"timeoutMs": 4 * HOUR * 1000}))
    assert ex.steps["approve"].deadline_at == ex.started_at + (ex.steps["approve"].deadline_at - ex.started_at)
    assert (ex.steps["approve"].deadline_at - ex.steps["approve"].started_at).total_seconds() == 4 * HOUR
    final = await rt.wait(ex.id)
    assert trio.current_time() == 4 * HOUR
    step = final.steps["approve"]
    assert step.status == "failed"
    assert (step.error.code, step.error.retryable) == ("timeout", False)
    assert final.status == "failed" and final.error.code == "timeout"
    assert (step.completed_at - step.started_at).total_seconds() == 4 * HOUR


async def test_timeout_approve_succeeds_with_auto_approved(rt: Runtime, recorder: Recorder, autojump_clock: Any) -> None:
    ex = await start(rt, approval({"timeoutMs": 2 * HOUR * 1000, "timeoutAction": "approve", "minApprovals": 2}))
    await trio.sleep(HOUR)
    await rt.submit_approval(ex.id, "approve", approver="alice", decision="approve")
    final = await rt.wait(ex.id)
    assert trio.current_time() == 2 * HOUR
    step = final.steps["approve"]
    assert step.status == "succeeded"
    assert step.output["approved"] is True and step.output["autoApproved"] is True
    assert [a["approver"] for a in step.output["approvals"]] == ["alice"]
    assert final.status == "completed" and recorder.order() == ["deploy"]
    assert any(a.action == "approval.timed_out" for a in await rt.audit(ex.id))


async def test_timeout_reject_rejects(rt: Runtime, autojump_clock: Any) -> None:
    ex = await start(rt, approval({"timeoutMs": 8 * HOUR * 1000, "timeoutAction": "reject"}))
    final = await rt.wait(ex.id)
    assert trio.current_time() == 8 * HOUR
    assert final.steps["approve"].status == "rejected"
    assert final.steps["approve"].error.code == "rejected"
    assert final.steps["approve"].output == {"approved": False, "approvals": [], "autoApproved": False}
    assert final.status == "failed"


async def test_a_decision_before_the_deadline_wins(rt: Runtime, autojump_clock: Any) -> None:
    ex = await start(rt, approval({"timeoutMs": HOUR * 1000}))
    await trio.sleep(HOUR - 1)
    await rt.submit_approval(ex.id, "approve", approver="alice", decision="approve")
    final = await rt.wait(ex.id)
    assert final.status == "completed"
    assert trio.current_time() == HOUR - 1
    await trio.sleep(2 * HOUR)
    assert (await rt.get(ex.id)).steps["approve"].status == "succeeded"


async def test_without_timeout_an_approval_waits_indefinitely(rt: Runtime, autojump_clock: Any) -> None:
    ex = await start(rt, approval())
    await trio.sleep(30 * 24 * HOUR)
    assert (await rt.get(ex.id)).status == "awaiting_approval"
    assert (await rt.get(ex.id)).steps["approve"].deadline_at is None
    await rt.cancel(ex.id, reason="abandoned")


# ---- status, message, audit, evidence ----------------------------------------------------------


async def test_execution_is_awaiting_approval_only_when_every_step_in_progress_is_an_approval(rt: Runtime, autojump_clock: Any) -> None:
    doc = {"id": "mix", "steps": [
        {"id": "approve", "type": "human-approval", "dependsOn": [], "config": {"approvers": ["alice"]}},
        {"id": "work", "type": "echo", "dependsOn": [], "config": {"sleep": 60}},
        {"id": "event", "type": "wait-for-event", "dependsOn": ["work"],
         "config": {"eventType": "build.done", "correlationKey": "b-1"}},
    ]}
    await rt.register_runbook(doc)
    ex = await rt.start("mix")
    current = await until(rt, ex.id, lambda e: e.steps["work"].status == "running"
                          and e.steps["approve"].status == "awaiting_approval")
    assert current.status == "running"  # a task step is running as well
    current = await until(rt, ex.id, lambda e: e.steps["event"].status == "waiting")
    assert current.status == "running"  # an event wait keeps the execution running
    await rt.publish_event("build.done", "b-1")
    current = await rt.get(ex.id)
    assert current.steps["event"].status == "succeeded"
    assert current.status == "awaiting_approval"  # only the approval is left
    await rt.submit_approval(ex.id, "approve", approver="alice", decision="approve")
    assert (await rt.wait(ex.id)).status == "completed"
    changes = [a.action for a in await rt.audit(ex.id) if a.action.startswith("execution.")]
    assert "execution.awaiting_approval" in changes


async def test_message_and_approvers_are_templated(rt: Runtime, autojump_clock: Any) -> None:
    doc = approval({"approvers": "${input.owners}",
                    "message": "Deploy ${input.service} v${input.version} ({executionId})?"})
    ex = await start(rt, doc, input={"owners": ["dana"], "service": "api", "version": 7})
    requested = [e for e in await rt.logs(ex.id, step_id="approve") if e.message == "approval requested"]
    assert requested[0].data == {"approvers": ["dana"], "message": f"Deploy api v7 ({ex.id})?",
                                 "digest": ex.steps["approve"].approval_request.digest}
    with pytest.raises(Forbidden):
        await rt.submit_approval(ex.id, "approve", approver="alice", decision="approve")
    await rt.submit_approval(ex.id, "approve", approver="dana", decision="approve")
    assert (await rt.wait(ex.id)).status == "completed"


async def test_approvers_template_giving_one_id_matches_exactly(rt: Runtime, autojump_clock: Any) -> None:
    ex = await start(rt, approval({"approvers": "${input.owner}"}), input={"owner": "alice"})
    for impostor in ("ali", "lice", "a", ""):
        with pytest.raises(Forbidden):
            await rt.submit_approval(ex.id, "approve", approver=impostor, decision="approve")
    await rt.submit_approval(ex.id, "approve", approver="alice", decision="approve")
    assert (await rt.wait(ex.id)).status == "completed"


async def test_message_template_error_fails_the_step(rt: Runtime, autojump_clock: Any) -> None:
    await rt.register_runbook(approval({"message": "about ${input.missing}"}))
    ex = await rt.start("ap", input={})
    final = await rt.wait(ex.id)
    assert final.steps["approve"].status == "failed"
    assert final.steps["approve"].error.code == "template"


async def test_every_decision_is_audited_and_evidence(rt: Runtime, autojump_clock: Any) -> None:
    ex = await start(rt, approval({"minApprovals": 2}), context={"legalBasis": "change CHG-1"})
    await rt.submit_approval(ex.id, "approve", approver="alice", decision="approve", comment="looks good")
    with pytest.raises(Conflict):
        await rt.submit_approval(ex.id, "approve", approver="alice", decision="approve")
    await trio.sleep(5)
    await rt.submit_approval(ex.id, "approve", approver="bob", decision="reject", comment="no rollback plan")
    await rt.wait(ex.id)
    decided = [a for a in await rt.audit(ex.id) if a.action == "approval.decided"]
    digest = ex.steps["approve"].approval_request.digest
    assert [(a.actor, a.step_id, a.data["decision"], a.reason, a.legal_basis, a.data["digest"]) for a in decided] == [
        ("alice", "approve", "approve", "looks good", "change CHG-1", digest),
        ("bob", "approve", "reject", "no rollback plan", "change CHG-1", digest),
    ]
    items = [e for e in await rt.evidence(ex.id) if e.kind == "approval_decision"]
    assert [e.data for e in items] == [
        {"approver": "alice", "decision": "approve", "comment": "looks good", "digest": digest},
        {"approver": "bob", "decision": "reject", "comment": "no rollback plan", "digest": digest},
    ]
    assert all(e.step_id == "approve" and e.sha256 == sha256_hex(e.data) for e in items)
    assert len({e.id for e in items}) == 2


async def test_approval_start_and_end_are_logged(rt: Runtime, autojump_clock: Any) -> None:
    ex = await start(rt, approval())
    await rt.submit_approval(ex.id, "approve", approver="alice", decision="approve")
    await rt.wait(ex.id)
    messages = [e.message for e in await rt.logs(ex.id, step_id="approve")]
    assert messages[0] == "step started" and messages[-1] == "step succeeded"


# ---- retry: a fresh round ------------------------------------------------------------------------


@pytest.fixture(params=["memory", "sqlite"])
async def any_store(request: pytest.FixtureRequest, tmp_path: pathlib.Path, recorder: Recorder) -> AsyncIterator[Runtime]:
    store = "memory" if request.param == "memory" else f"sqlite:///{tmp_path / 'rb.db'}"
    async with open_runtime(store, settings=Settings(default_max_retries=0)) as runtime:
        runtime.register_executor("echo", recorder.echo)
        yield runtime


async def test_retrying_a_rejected_approval_starts_a_fresh_round(any_store: Runtime, recorder: Recorder, autojump_clock: Any) -> None:
    rt = any_store
    ex = await start(rt, approval({"minApprovals": 2}))
    await rt.submit_approval(ex.id, "approve", approver="alice", decision="approve")
    await rt.submit_approval(ex.id, "approve", approver="bob", decision="reject")
    failed = await rt.wait(ex.id)
    assert failed.status == "failed"
    retried = await rt.retry_step(ex.id, "approve", actor="ops")
    assert retried.status == "running"
    current = await until(rt, ex.id, lambda e: e.steps["approve"].status == "awaiting_approval")
    assert current.steps["approve"].approvals == ()  # earlier decisions no longer count
    assert current.status == "awaiting_approval"
    assert current.steps["approve"].attempts == 2
    # the same people decide again, at the same (virtual) instant as the first round
    await rt.submit_approval(ex.id, "approve", approver="bob", decision="approve")
    assert (await rt.get(ex.id)).steps["approve"].status == "awaiting_approval"  # 1 of 2: alice's earlier approval is gone
    await rt.submit_approval(ex.id, "approve", approver="alice", decision="approve")
    final = await rt.wait(ex.id)
    assert final.status == "completed"
    assert [a["approver"] for a in final.steps["approve"].output["approvals"]] == ["bob", "alice"]
    assert recorder.order() == ["deploy"]
    decided = [(a.actor, a.data["decision"]) for a in await rt.audit(ex.id) if a.action == "approval.decided"]
    assert decided == [("alice", "approve"), ("bob", "reject"), ("bob", "approve"), ("alice", "approve")]
    assert len([e for e in await rt.evidence(ex.id) if e.kind == "approval_decision"]) == 4


# ---- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["config", "approvalConfig"])
async def test_approval_without_approvers_is_refused(rt: Runtime, key: str) -> None:
    doc = {"id": "na", "steps": [{"id": "approve", "type": "human-approval", key: {"minApprovals": 1}}]}
    with pytest.raises(ValidationError) as info:
        await rt.register_runbook(doc)
    assert [p.path for p in info.value.problems] == [f"steps[0].{key}.approvers"]
    empty = {"id": "na", "steps": [{"id": "approve", "type": "human-approval", key: {"approvers": []}}]}
    assert [p.path for p in rt.validate_runbook(empty)] == [f"steps[0].{key}.approvers"]


async def test_approval_config_problems_are_reported_together(rt: Runtime) -> None:
    doc = approval({"approvers": ["alice"], "minApprovals": 2, "timeoutMs": -5, "timeoutAction": "escalate",
                    "message": 42})
    found = {p.path for p in rt.validate_runbook(doc)}
    assert found == {f"steps[0].approvalConfig.{k}" for k in ("minApprovals", "timeoutMs", "timeoutAction", "message")}
