"""Why did it do that: each step's decision record, committed with the decision, read back as
sentences (``Runtime.explain``, ``GET .../explain``, ``runbooks explain``), through the redactor."""

from __future__ import annotations

import json
from typing import Any

import trio
import trio.lowlevel

from runtime import Runtime, open_runtime
from runtime.shell.settings import Settings
from tests.conftest import Recorder


async def run(rt: Runtime, doc: dict[str, Any], **start: Any) -> Any:
    await rt.register_runbook(doc)
    execution = await rt.start(doc["id"], **start)
    return await rt.wait(execution.id)


def by_step(items: list[Any]) -> dict[str | None, Any]:
    return {item.step_id: item for item in items}


RISK = {"id": "risk", "steps": [
    {"id": "analyze", "type": "echo", "config": {"value": {"riskScore": 8.5}}},
    {"id": "route", "type": "conditional", "dependsOn": ["analyze"], "config": {
        "condition": {"field": "analyze.riskScore", "operator": "gt", "value": 7},
        "trueBranch": "escalate", "falseBranch": "close"}},
    {"id": "escalate", "type": "echo", "dependsOn": ["route"]},
    {"id": "close", "type": "echo", "dependsOn": ["route"]},
    {"id": "prod-only", "type": "echo", "dependsOn": ["analyze"],
     "when": {"field": "input.env", "operator": "eq", "value": "prod"}},
    {"id": "after-skip", "type": "echo", "dependsOn": ["prod-only"]},
]}


async def test_ready_condition_branch_and_when_are_explained(rt: Runtime) -> None:
    final = await run(rt, RISK, input={"env": "dev"}, context={"userId": "ana"})
    items = by_step(await rt.explain(final.id))
    assert items[None].reasons == ("runs version 1 of runbook 'risk'", "started by ana")
    assert items["analyze"].reasons == ("ready when the execution started (no dependencies)",)
    assert "condition analyze.riskScore = 8.5 gt 7 → true: took the true branch ('escalate')" in \
        items["route"].reasons
    assert items["route"].data["condition"]["checks"] == [
        {"field": "analyze.riskScore", "actual": 8.5, "operator": "gt", "expected": 7, "result": True}]
    assert items["escalate"].reasons[0] == "ready once 'route' succeeded"
    assert items["close"].reasons == ("skipped: branch not taken by 'route'",)
    assert items["prod-only"].reasons == ("'when' input.env = \"dev\" eq \"prod\" → false, so it was skipped",)
    assert items["after-skip"].reasons == ("skipped: every dependency was skipped",)


async def test_a_when_that_held_is_kept_with_the_start(rt: Runtime) -> None:
    final = await run(rt, RISK, input={"env": "prod"})
    reasons = (await rt.explain(final.id, step_id="prod-only"))[0].reasons
    assert reasons == ("ready once 'analyze' succeeded", "'when' input.env = \"prod\" eq \"prod\" → true, so it ran")


async def test_retries_keep_each_reason(rt: Runtime, recorder: Recorder, autojump_clock: Any) -> None:
    recorder.fail_times["s"] = 2
    doc = {"id": "flaky", "steps": [{"id": "s", "type": "echo", "retryPolicy": {"maxRetries": 3, "jitter": False}}]}
    final = await run(rt, doc)
    [item] = await rt.explain(final.id, step_id="s")
    assert "retried 2 times: attempt 1 executor: planned failure 1; attempt 2 executor: planned failure 2" in \
        item.reasons
    assert item.data["retried"] == 2 and item.data["attempts"] == 3


async def test_an_approval_says_who_decided_on_what_digest(rt: Runtime) -> None:
    doc = {"id": "gate", "steps": [{"id": "ok", "type": "human-approval", "config": {"approvers": ["boss"]}}]}
    await rt.register_runbook(doc)
    execution = await rt.start("gate")
    with trio.fail_after(5):
        while (await rt.fetch(execution.id)).steps["ok"].approval_request is None:
            await trio.lowlevel.checkpoint()
    digest = (await rt.fetch(execution.id)).steps["ok"].approval_request.digest
    await rt.submit_approval(execution.id, "ok", approver="boss", decision="approve", comment="looks fine")
    [item] = await rt.explain(execution.id, step_id="ok")
    assert f"approved by boss on request digest {digest[:12]}…: looks fine" in item.reasons
    assert item.data["approvals"][0]["digest"] == digest


async def test_a_loop_says_how_many_items_ran(rt: Runtime) -> None:
    doc = {"id": "each", "steps": [{"id": "all", "type": "loop", "config": {
        "items": "${input.hosts}", "step": {"type": "echo"}}}]}
    final = await run(rt, doc, input={"hosts": ["a", "b", "c"]})
    [item] = await rt.explain(final.id, step_id="all")
    assert "loop over 3 items, 3 ran" in item.reasons
    assert item.data["loop"] == {"items": 3, "ran": 3}


async def test_a_child_names_the_step_that_started_it(rt: Runtime) -> None:
    await rt.register_runbook({"id": "inner", "steps": [{"id": "x", "type": "echo"}]})
    final = await run(rt, {"id": "outer", "steps": [{"id": "call", "type": "run-runbook",
                                                      "config": {"runbookId": "inner"}}]})
    child_id = final.steps["call"].child_execution_id
    assert f"started child execution {child_id}" in (await rt.explain(final.id, step_id="call"))[0].reasons
    assert f"started by step 'call' of execution {final.id}" in (await rt.explain(child_id))[0].reasons


async def test_the_record_stays_small_whatever_the_values() -> None:
    doc = {"id": "big", "steps": [{"id": "s", "type": "echo",
                                   "when": {"all": [{"field": f"input.v{i}", "operator": "ne", "value": "x"}
                                                    for i in range(20)]}}]}
    async with open_runtime("memory") as rt:
        rt.register_executor("echo", Recorder().echo)
        final = await run(rt, doc, input={f"v{i}": "y" * 5000 for i in range(20)})
    assert final.steps["s"].status == "succeeded"
    record = json.dumps(final.steps["s"].why)
    assert len(record) < 640 and "and 16 more" not in record and final.steps["s"].why["when"]["more"] == 16


async def test_values_pass_through_the_secrets_redactor() -> None:
    settings = Settings(secrets_env={"RUNBOOKS_SECRET_TOKEN": "hunter2-very-secret"})
    doc = {"id": "leak", "steps": [{"id": "s", "type": "echo",
                                    "when": {"field": "input.pw", "operator": "ne", "value": "x"}}]}
    async with open_runtime("memory", settings=settings) as rt:
        rt.register_executor("echo", Recorder().echo)
        final = await run(rt, doc, input={"pw": "hunter2-very-secret"})
        [item] = await rt.explain(final.id, step_id="s")
    assert "hunter2" not in json.dumps([item.reasons, item.data])
    assert "input.pw = \"***\" ne \"x\" → true" in item.reasons[1]


async def test_an_execution_started_by_a_trigger_names_it(rt: Runtime) -> None:
    await rt.register_runbook({"id": "on-alert", "steps": [{"id": "s", "type": "echo"}], "triggers": [
        {"id": "severe", "event": {"type": "alert"}, "input": {"key": "${event.correlationKey}"}}]})
    assert (await rt.publish_event("alert", "A-7", {"severity": 9})).delivered == 1
    [started] = (await rt.list_executions(runbook_id="on-alert")).items
    first = (await rt.explain(started.id))[0]
    assert first.reasons[1].startswith("started by trigger 'severe' (event) at ")
    assert first.data["trigger"]["id"] == "severe"
