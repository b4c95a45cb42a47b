"""Approvals an auditor can trust, in the engine (memory store, MockClock): what a waiting step
shows and the digest that binds a decision to it (computed again when it changes), stale
digests refused, four eyes, delegation, escalation (adding approvers and notifying them
before the timeout still applies), and delegation and escalation across a restart (SQLite)."""

from __future__ import annotations

import hashlib
import json
import pathlib
from typing import Any

import httpx
import pytest
import trio

from runtime import (
    Conflict,
    Forbidden,
    Runtime,
    SeparationOfDuties,
    Settings,
    StaleDigest,
    ValidationError,
    open_runtime,
)

HOUR = 3600
CHANGE = {"id": "change", "steps": [
    {"id": "plan", "type": "echo", "config": {"value": {"diff": "+1 -0"}}},
    {"id": "approve", "type": "human-approval", "dependsOn": ["plan"],
     "config": {"approvers": ["alice", "bob", "carol"], "message": "Apply ${plan.diff}?"}},
    {"id": "apply", "type": "echo", "dependsOn": ["approve"]}]}


def sorted_json_sha256(value: Any) -> str:
    """RFC 8785 for data of ASCII keys, strings and small integers: sorted keys, no spaces."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def approval_doc(config: dict[str, Any], rid: str = "ap", *more: dict[str, Any]) -> dict[str, Any]:
    return {"id": rid, "steps": [{"id": "approve", "type": "human-approval", "config": config}, *more]}


async def waiting(rt: Runtime, execution_id: str, step: str = "approve") -> Any:
    async for execution in rt.watch(execution_id):
        if execution.steps[step].status == "awaiting_approval":
            return execution
    raise AssertionError("finished before the step waited")


async def started(rt: Runtime, doc: dict[str, Any], **kwargs: Any) -> Any:
    await rt.register_runbook(doc)
    ex = await rt.start(doc["id"], **kwargs)
    return await waiting(rt, ex.id)


# ---------------------------------------------------------------------------- bound to what was shown

async def test_a_waiting_approval_shows_what_it_covers_and_its_digest(rt: Runtime, autojump_clock: Any) -> None:
    runbook = await rt.register_runbook(CHANGE)
    assert runbook.content_sha256 == sorted_json_sha256(CHANGE)
    ex = await rt.start("change", input={"ticket": "CHG-7"}, context={"userId": "sam"})
    ex = await waiting(rt, ex.id)
    request = ex.steps["approve"].approval_request
    assert request.shown == {"message": "Apply +1 -0?", "input": {"ticket": "CHG-7"},
                             "outputs": {"plan": {"diff": "+1 -0"}},
                             "runbook": {"id": "change", "version": 1, "contentSha256": runbook.content_sha256}}
    assert request.digest == sorted_json_sha256(request.shown)
    [evidence] = [e for e in await rt.evidence(ex.id) if e.kind == "approval_request"]
    assert evidence.data == {"digest": request.digest, "shown": request.shown}
    [requested] = [a for a in await rt.audit(ex.id) if a.action == "approval.requested"]
    assert requested.data == {"digest": request.digest, "previousDigest": None,
                              "evidence": {"id": evidence.id, "sha256": evidence.sha256}}  # (for the ledger's export)

    with pytest.raises(StaleDigest) as stale:
        await rt.submit_approval(ex.id, "approve", approver="alice", decision="approve", digest="0" * 64)
    assert request.digest in str(stale.value) and stale.value.current_digest == request.digest
    assert (await rt.get(ex.id)).steps["approve"].approvals == ()  # refused: nothing counted
    with pytest.raises(ValidationError):
        await rt.submit_approval(ex.id, "approve", approver="alice", decision="approve", digest="ABC")
    after = await rt.submit_approval(ex.id, "approve", approver="alice", decision="approve", digest=request.digest)
    assert after.steps["approve"].status == "succeeded"
    assert after.steps["approve"].output["approvals"][0]["digest"] == request.digest


async def test_a_decision_without_digest_is_taken_on_what_is_shown_now(rt: Runtime, autojump_clock: Any) -> None:
    ex = await started(rt, CHANGE)
    after = await rt.submit_approval(ex.id, "approve", approver="bob", decision="reject", comment="no")
    [decision] = after.steps["approve"].approvals
    assert decision.digest == ex.steps["approve"].approval_request.digest
    [decided] = [a for a in await rt.audit(ex.id) if a.action == "approval.decided"]
    assert decided.data["digest"] == decision.digest


async def test_when_what_it_shows_changes_the_digest_is_new_and_earlier_votes_no_longer_count(
        rt: Runtime, autojump_clock: Any) -> None:
    doc = {"id": "probe", "steps": [
        {"id": "approve", "type": "human-approval",
         "config": {"approvers": ["alice", "bob"], "minApprovals": 2, "show": ["probe"]}},
        {"id": "probe", "type": "wait-for-event", "dependsOn": [],
         "config": {"eventType": "probe.done", "correlationKey": "p1"}},
        {"id": "other", "type": "echo", "dependsOn": []}]}
    ex = await started(rt, doc)
    first = ex.steps["approve"].approval_request
    assert first.shown["outputs"] == {"probe": None}  # named by show, not finished yet
    await rt.submit_approval(ex.id, "approve", approver="alice", decision="approve", digest=first.digest)
    assert (await rt.get(ex.id)).steps["other"].status == "succeeded"
    assert (await rt.get(ex.id)).steps["approve"].approval_request.digest == first.digest  # 'other' is not shown

    await rt.publish_event("probe.done", "p1", {"healthy": False})
    now = (await rt.get(ex.id)).steps["approve"]
    second = now.approval_request
    assert second.digest != first.digest and second.shown["outputs"]["probe"]["payload"] == {"healthy": False}
    assert now.status == "awaiting_approval"
    with pytest.raises(StaleDigest):  # bob reviewed the first request: refused
        await rt.submit_approval(ex.id, "approve", approver="bob", decision="approve", digest=first.digest)
    await rt.submit_approval(ex.id, "approve", approver="bob", decision="approve", digest=second.digest)
    assert (await rt.get(ex.id)).steps["approve"].status == "awaiting_approval"  # alice's vote was on the first
    final = await rt.submit_approval(ex.id, "approve", approver="alice", decision="approve", digest=second.digest)
    assert final.steps["approve"].status == "succeeded"
    assert [(a["approver"], a["digest"]) for a in final.steps["approve"].output["approvals"]] == [
        ("alice", first.digest), ("bob", second.digest), ("alice", second.digest)]
    requested = [{k: v for k, v in a.data.items() if k != "evidence"}
                 for a in await rt.audit(ex.id) if a.action == "approval.requested"]
    assert requested == [{"digest": first.digest, "previousDigest": None},
                         {"digest": second.digest, "previousDigest": first.digest}]


# ---------------------------------------------------------------------------- four eyes

async def test_the_starter_and_who_decided_already_may_not_decide(rt: Runtime, autojump_clock: Any) -> None:
    doc = approval_doc({"approvers": ["sam", "alice", "bob"], "minApprovals": 2, "separationOfDuties": True})
    ex = await started(rt, doc, context={"userId": "sam"})
    with pytest.raises(SeparationOfDuties, match="separation of duties: 'sam' started this execution"):
        await rt.submit_approval(ex.id, "approve", approver="sam", decision="approve")
    assert [i.step_id for i in (await rt.pending_approvals("sam")).items] == []
    await rt.submit_approval(ex.id, "approve", approver="alice", decision="approve")
    with pytest.raises(SeparationOfDuties, match="'alice' has already decided"):
        await rt.submit_approval(ex.id, "approve", approver="alice", decision="approve")
    final = await rt.submit_approval(ex.id, "approve", approver="bob", decision="approve")
    assert final.steps["approve"].status == "succeeded"


async def test_without_four_eyes_the_starter_may_decide_and_a_second_decision_is_a_conflict(
        rt: Runtime, autojump_clock: Any) -> None:
    ex = await started(rt, approval_doc({"approvers": ["sam", "alice"], "minApprovals": 2}), context={"userId": "sam"})
    await rt.submit_approval(ex.id, "approve", approver="sam", decision="approve")
    with pytest.raises(Conflict):
        await rt.submit_approval(ex.id, "approve", approver="sam", decision="approve")


async def test_the_setting_requires_four_eyes_on_every_step_even_one_that_says_false() -> None:
    settings = Settings(default_max_retries=0, require_separation_of_duties=True)
    async with open_runtime("memory", settings=settings) as rt:
        doc = approval_doc({"approvers": ["sam", "trigger:nightly"], "separationOfDuties": False})
        ex = await started(rt, doc, context={"userId": "sam"})
        with pytest.raises(SeparationOfDuties):
            await rt.submit_approval(ex.id, "approve", approver="sam", decision="approve")
        by_trigger = await rt.start("ap", context={"trigger": {"kind": "schedule", "id": "nightly"}}, force=True)
        await waiting(rt, by_trigger.id)
        with pytest.raises(SeparationOfDuties, match="'trigger:nightly' started"):
            await rt.submit_approval(by_trigger.id, "approve", approver="trigger:nightly", decision="approve")


# ---------------------------------------------------------------------------- delegation

DELEGABLE = {"id": "dg", "steps": [
    {"id": "approve", "type": "human-approval",
     "config": {"approvers": ["alice", "bob", "carol"], "minApprovals": 2, "allowDelegation": True}},
    {"id": "plain", "type": "human-approval", "dependsOn": [], "config": {"approvers": ["alice"]}}]}


async def test_a_delegate_decides_once_and_the_delegator_no_longer(rt: Runtime, autojump_clock: Any) -> None:
    ex = await started(rt, DELEGABLE)
    with pytest.raises(Forbidden, match="does not allow delegation"):
        await rt.delegate_approval(ex.id, "plain", delegator="alice", to="dave", reason="away")
    with pytest.raises(Forbidden, match="not an approver"):
        await rt.delegate_approval(ex.id, "approve", delegator="mallory", to="mallory2", reason="mine now")
    with pytest.raises(ValidationError):
        await rt.delegate_approval(ex.id, "approve", delegator="alice", to="alice", reason="me")
    handed = await rt.delegate_approval(ex.id, "approve", delegator="alice", to="dave", reason="on leave")
    assert [(d.delegator, d.to, d.reason) for d in handed.steps["approve"].delegations] == [("alice", "dave", "on leave")]
    [audit] = [a for a in await rt.audit(ex.id) if a.action == "approval.delegated"]
    assert (audit.actor, audit.step_id, audit.reason, audit.data["to"]) == ("alice", "approve", "on leave", "dave")
    with pytest.raises(Forbidden, match="'alice' delegated their vote"):
        await rt.submit_approval(ex.id, "approve", approver="alice", decision="approve")
    with pytest.raises(Forbidden, match="'alice' delegated their vote"):
        await rt.delegate_approval(ex.id, "approve", delegator="alice", to="erin", reason="again")
    # bob hands his vote to carol, who is an approver herself: her vote counts once
    await rt.delegate_approval(ex.id, "approve", delegator="bob", to="carol", reason="same team")
    after = await rt.submit_approval(ex.id, "approve", approver="carol", decision="approve")
    assert after.steps["approve"].status == "awaiting_approval"
    with pytest.raises(Conflict):
        await rt.submit_approval(ex.id, "approve", approver="carol", decision="approve")
    assert [i.step_id for i in (await rt.pending_approvals("dave")).items] == ["approve"]
    assert [i.step_id for i in (await rt.pending_approvals("alice")).items] == ["plain"]
    final = await rt.submit_approval(ex.id, "approve", approver="dave", decision="approve")
    assert final.steps["approve"].status == "succeeded"


async def test_a_vote_handed_to_a_role_admits_its_holders(rt: Runtime, autojump_clock: Any) -> None:
    ex = await started(rt, DELEGABLE)
    await rt.delegate_approval(ex.id, "approve", delegator="alice", to="role:oncall", reason="paged")
    with pytest.raises(Forbidden):
        await rt.submit_approval(ex.id, "approve", approver="erin", decision="approve", roles=["viewer"])
    await rt.submit_approval(ex.id, "approve", approver="erin", decision="approve", roles=["oncall"])
    final = await rt.submit_approval(ex.id, "approve", approver="bob", decision="approve")
    assert final.steps["approve"].status == "succeeded"


# ---------------------------------------------------------------------------- escalation

def escalating(**config: Any) -> dict[str, Any]:
    return approval_doc({
        "approvers": ["alice"], "timeoutMs": 3 * HOUR * 1000, "notify": {"url": "http://hooks.test/team"},
        "escalation": [{"afterMs": HOUR * 1000, "approvers": ["bob"]},
                       {"afterMs": 2 * HOUR * 1000, "approvers": ["role:director"],
                        "notify": {"url": "http://hooks.test/directors"}}], **config})


class Hooks:
    """Notifications received, through an httpx MockTransport."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.received.append((request.url.path, json.loads(request.content)))
        return httpx.Response(204)


async def test_escalation_adds_and_notifies_approvers_and_the_timeout_still_applies(autojump_clock: Any) -> None:
    hooks = Hooks()
    async with httpx.AsyncClient(transport=httpx.MockTransport(hooks)) as http, \
            open_runtime("memory", settings=Settings(default_max_retries=0), http=http) as rt:
        ex = await started(rt, escalating())
        await trio.sleep(1)
        assert [(path, body["approvers"]) for path, body in hooks.received] == [("/team", ["alice"])]
        with pytest.raises(Forbidden):
            await rt.submit_approval(ex.id, "approve", approver="bob", decision="approve")
        await trio.sleep(HOUR)
        assert (await rt.get(ex.id)).steps["approve"].escalations == 1
        assert hooks.received[1][0] == "/team"
        assert (hooks.received[1][1]["approvers"], hooks.received[1][1]["escalation"]) == (["bob"], 1)
        assert [i.step_id for i in (await rt.pending_approvals("bob")).items] == ["approve"]
        await trio.sleep(HOUR)
        assert [(path, body.get("escalation")) for path, body in hooks.received[2:]] == [("/directors", 2)]
        escalated = [a.data for a in await rt.audit(ex.id) if a.action == "approval.escalated"]
        assert escalated == [{"stage": 1, "approvers": ["bob"], "afterMs": HOUR * 1000},
                             {"stage": 2, "approvers": ["role:director"], "afterMs": 2 * HOUR * 1000}]
        final = await rt.wait(ex.id)  # nobody decided: the step's own timeout at 3 hours
        assert final.steps["approve"].error.code == "timeout"
        assert (final.completed_at - final.started_at).total_seconds() == pytest.approx(3 * HOUR, abs=1)
        notified = [a.data for a in await rt.audit(ex.id) if a.action == "approval.notified"]
        assert notified == [None, {"stage": 1}, {"stage": 2}]


async def test_no_escalation_once_the_step_is_decided(rt: Runtime, autojump_clock: Any) -> None:
    ex = await started(rt, escalating(notify={"url": "http://127.0.0.1:9/never"}))
    await rt.submit_approval(ex.id, "approve", approver="alice", decision="approve")
    await trio.sleep(3 * HOUR)
    assert not [a for a in await rt.audit(ex.id) if a.action == "approval.escalated"]


async def test_escalation_stages_are_checked(rt: Runtime) -> None:
    problems = rt.validate_runbook(approval_doc({"approvers": ["a"], "timeoutMs": 1000, "escalation": [
        {"afterMs": 500, "approvers": []}, {"afterMs": 400, "approvers": ["b"], "extra": 1},
        {"afterMs": 2000, "approvers": ["c"]}], "show": ["nope"], "allowDelegation": "yes"}))
    assert sorted(p.path for p in problems) == [
        "steps[0].config.allowDelegation", "steps[0].config.escalation[0].approvers",
        "steps[0].config.escalation[1].afterMs", "steps[0].config.escalation[1].extra",
        "steps[0].config.escalation[2].afterMs", "steps[0].config.show"]


# ---------------------------------------------------------------------------- across a restart

async def test_delegation_and_escalation_survive_a_restart(tmp_path: pathlib.Path, mock_clock: Any) -> None:
    """(A clock moved by hand: one that jumps whenever every task waits would pass the stage's
    time while a runtime closes, before the restart this test is about.)"""
    url = f"sqlite:///{tmp_path / 'rb.db'}"
    doc = approval_doc({"approvers": ["alice", "bob"], "minApprovals": 2, "allowDelegation": True,
                        "escalation": [{"afterMs": HOUR * 1000, "approvers": ["carol"]}]})
    async with open_runtime(url) as rt:
        ex = await started(rt, doc)
        await rt.delegate_approval(ex.id, "approve", delegator="alice", to="dave", reason="on leave")
    async with open_runtime(url) as rt:
        with pytest.raises(Forbidden, match="delegated"):
            await rt.submit_approval(ex.id, "approve", approver="alice", decision="approve")
        await rt.submit_approval(ex.id, "approve", approver="dave", decision="approve")
        with pytest.raises(Forbidden):
            await rt.submit_approval(ex.id, "approve", approver="carol", decision="approve")
    async with open_runtime(url) as rt:  # the stage's time is kept: the timer heap takes it up again
        assert (await rt.fetch(ex.id)).steps["approve"].escalations == 0
        mock_clock.jump(HOUR)
        async for state in rt.watch(ex.id):
            if state.steps["approve"].escalations == 1:
                break
        final = await rt.submit_approval(ex.id, "approve", approver="carol", decision="approve")
        assert final.steps["approve"].status == "succeeded"
        assert [a.action for a in await rt.audit(ex.id)].count("approval.escalated") == 1
