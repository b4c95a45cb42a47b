"""conditional (and the skip/join rules it relies on). MockClock."""

from __future__ import annotations

from typing import Any

import pytest

from runtime import Runtime, ValidationError
from tests.conftest import Recorder

RISK = {"field": "analyze.riskScore", "operator": "gt", "value": 7}


def triage(true_branch: Any = "escalate", false_branch: Any = "auto-close",
           condition: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"id": "triage", "steps": [
        {"id": "analyze", "type": "echo", "config": {"value": "${input.analysis}"}},
        {"id": "route", "type": "conditional",
         "config": {"condition": condition or RISK, "trueBranch": true_branch, "falseBranch": false_branch}},
        {"id": "escalate", "type": "echo"},
        {"id": "page-oncall", "type": "echo"},                 # depends on escalate (the step before)
        {"id": "auto-close", "type": "echo"},
        {"id": "close-note", "type": "echo"},                  # depends on auto-close
        {"id": "report", "type": "echo", "dependsOn": ["page-oncall", "close-note"]},  # the join
    ]}


async def run(rt: Runtime, doc: dict[str, Any], **start: Any) -> Any:
    await rt.register_runbook(doc)
    execution = await rt.start(doc["id"], **start)
    return await rt.wait(execution.id)


def statuses(execution: Any) -> dict[str, str]:
    return {sid: s.status.value for sid, s in execution.steps.items()}


async def test_true_branch_runs_false_branch_is_skipped_and_join_runs(rt: Runtime, recorder: Recorder, autojump_clock: Any) -> None:
    final = await run(rt, triage(), input={"analysis": {"riskScore": 9}})
    assert final.status == "completed"
    assert statuses(final) == {"analyze": "succeeded", "route": "succeeded", "escalate": "succeeded",
                               "page-oncall": "succeeded", "auto-close": "skipped", "close-note": "skipped",
                               "report": "succeeded"}
    assert final.steps["route"].output == {"result": True, "branch": ["escalate"]}
    assert recorder.order() == ["analyze", "escalate", "page-oncall", "report"]
    assert final.output == {"step": "report"}


async def test_false_branch(rt: Runtime, recorder: Recorder, autojump_clock: Any) -> None:
    final = await run(rt, triage(), input={"analysis": {"riskScore": 3}})
    assert statuses(final)["escalate"] == "skipped" and statuses(final)["page-oncall"] == "skipped"
    assert statuses(final)["auto-close"] == "succeeded" and statuses(final)["report"] == "succeeded"
    assert final.steps["route"].output == {"result": False, "branch": ["auto-close"]}
    assert recorder.order() == ["analyze", "auto-close", "close-note", "report"]


async def test_missing_field_is_false(rt: Runtime, autojump_clock: Any) -> None:
    final = await run(rt, triage(), input={"analysis": {"summary": "no score"}})
    assert final.status == "completed"
    assert final.steps["route"].output == {"result": False, "branch": ["auto-close"]}


async def test_branches_as_lists(rt: Runtime, recorder: Recorder, autojump_clock: Any) -> None:
    doc = {"id": "lists", "steps": [
        {"id": "check", "type": "conditional", "config": {
            "condition": {"field": "input.env", "operator": "eq", "value": "prod"},
            "trueBranch": ["snapshot", "notify"], "falseBranch": ["fast-path"]}},
        {"id": "snapshot", "type": "echo", "config": {"sleep": 1}},
        {"id": "notify", "type": "echo", "config": {"sleep": 1}},
        {"id": "fast-path", "type": "echo"},
        {"id": "deploy", "type": "echo", "dependsOn": ["snapshot", "notify", "fast-path"]},
    ]}
    prod = await run(rt, doc, input={"env": "prod"})
    assert prod.steps["check"].output == {"result": True, "branch": ["snapshot", "notify"]}
    assert statuses(prod) == {"check": "succeeded", "snapshot": "succeeded", "notify": "succeeded",
                              "fast-path": "skipped", "deploy": "succeeded"}
    # snapshot and notify both depend on the conditional only: they run side by side
    assert recorder.max_running == 2
    dev = await run(rt, doc, input={"env": "dev"})
    assert statuses(dev) == {"check": "succeeded", "snapshot": "skipped", "notify": "skipped",
                             "fast-path": "succeeded", "deploy": "succeeded"}


async def test_only_one_branch_given(rt: Runtime, autojump_clock: Any) -> None:
    doc = {"id": "one", "steps": [
        {"id": "check", "type": "conditional", "config": {
            "condition": {"field": "input.x", "operator": "exists"}, "trueBranch": "extra"}},
        {"id": "extra", "type": "echo"},
        {"id": "end", "type": "echo", "dependsOn": ["check", "extra"]},
    ]}
    without = await run(rt, doc, input={})
    assert without.steps["check"].output == {"result": False, "branch": []}
    assert statuses(without)["extra"] == "skipped" and statuses(without)["end"] == "succeeded"
    with_x = await run(rt, doc, input={"x": 1})
    assert statuses(with_x)["extra"] == "succeeded"


async def test_skip_propagates_through_a_chain_until_every_dependency_is_skipped(rt: Runtime, autojump_clock: Any) -> None:
    doc = {"id": "chain", "steps": [
        {"id": "gate", "type": "conditional", "config": {
            "condition": {"field": "input.go", "operator": "eq", "value": True}, "trueBranch": "a"}},
        {"id": "a", "type": "echo"},
        {"id": "b", "type": "echo"},
        {"id": "c", "type": "echo"},
        {"id": "d", "type": "echo", "dependsOn": ["c", "gate"]},  # gate ran: d runs
    ]}
    final = await run(rt, doc, input={"go": False})
    assert statuses(final) == {"gate": "succeeded", "a": "skipped", "b": "skipped", "c": "skipped",
                               "d": "succeeded"}
    skip_logs = [e for e in await rt.logs(final.id) if e.message.startswith("step skipped")]
    assert [e.step_id for e in skip_logs] == ["a", "b", "c"]


async def test_nested_conditionals(rt: Runtime, autojump_clock: Any) -> None:
    doc = {"id": "nested", "steps": [
        {"id": "outer", "type": "conditional", "config": {
            "condition": {"field": "input.a", "operator": "eq", "value": 1},
            "trueBranch": "inner", "falseBranch": "no-a"}},
        {"id": "inner", "type": "conditional", "config": {
            "condition": {"field": "input.b", "operator": "eq", "value": 1},
            "trueBranch": "both", "falseBranch": "only-a"}},
        {"id": "both", "type": "echo"},
        {"id": "only-a", "type": "echo"},
        {"id": "no-a", "type": "echo"},
        {"id": "end", "type": "echo", "dependsOn": ["both", "only-a", "no-a"]},
    ]}
    final = await run(rt, doc, input={"a": 2, "b": 1})
    assert statuses(final) == {"outer": "succeeded", "inner": "skipped", "both": "skipped", "only-a": "skipped",
                               "no-a": "succeeded", "end": "succeeded"}
    final = await run(rt, doc, input={"a": 1, "b": 2})
    assert statuses(final)["only-a"] == "succeeded" and statuses(final)["both"] == "skipped"


async def test_conditional_on_a_skipped_path_is_skipped(rt: Runtime, autojump_clock: Any) -> None:
    doc = {"id": "sk", "steps": [
        {"id": "a", "type": "echo", "when": {"field": "input.run", "operator": "eq", "value": True}},
        {"id": "check", "type": "conditional", "config": {
            "condition": {"field": "input.x", "operator": "exists"}, "trueBranch": "t", "falseBranch": "f"}},
        {"id": "t", "type": "echo"},
        {"id": "f", "type": "echo"},
    ]}
    final = await run(rt, doc, input={"run": False})
    assert final.status == "completed"
    assert set(statuses(final).values()) == {"skipped"}


async def test_branch_target_with_explicit_depends_on_still_waits_for_the_decision(rt: Runtime, recorder: Recorder, autojump_clock: Any) -> None:
    doc = {"id": "explicit", "steps": [
        {"id": "analyze", "type": "echo", "config": {"sleep": 10, "value": {"risky": False}}},
        {"id": "gate", "type": "conditional", "config": {
            "condition": {"field": "analyze.risky", "operator": "eq", "value": True}, "trueBranch": "isolate-host"}},
        {"id": "isolate-host", "type": "echo", "dependsOn": []},
    ]}
    final = await run(rt, doc)
    assert final.steps["gate"].output == {"result": False, "branch": []}
    assert final.steps["isolate-host"].status == "skipped"
    assert "isolate-host" not in recorder.order()


async def test_conditional_start_and_end_are_logged(rt: Runtime, autojump_clock: Any) -> None:
    final = await run(rt, triage(), input={"analysis": {"riskScore": 1}})
    messages = [e.message for e in await rt.logs(final.id, step_id="route")]
    assert messages == ["step started", "step succeeded"]


# ---- validation ------------------------------------------------------------------------------


async def test_branch_target_that_is_not_a_step_is_refused(rt: Runtime) -> None:
    with pytest.raises(ValidationError) as info:
        await rt.register_runbook(triage(true_branch=["escalate", "nope"], false_branch="missing"))
    assert [(p.path, p.message) for p in info.value.problems] == [
        ("steps[1].config.trueBranch", "branch target 'nope' is not a step"),
        ("steps[1].config.falseBranch", "branch target 'missing' is not a step"),
    ]


async def test_conditional_config_problems(rt: Runtime) -> None:
    doc = {"id": "bad", "steps": [
        {"id": "c", "type": "conditional", "config": {"trueBranch": 5, "falseBranch": "c", "extra": 1}}]}
    found = {p.path: p.message for p in rt.validate_runbook(doc)}
    assert set(found) == {"steps[0].config.condition", "steps[0].config.trueBranch",
                          "steps[0].config.falseBranch", "steps[0].config.extra",
                          "steps"}  # branching to itself is also a dependency cycle
    assert "itself" in found["steps[0].config.falseBranch"]
    bad_operator = {"id": "op", "steps": [{"id": "c", "type": "conditional", "config": {
        "condition": {"field": "input.x", "operator": "approximately", "value": 1}}}]}
    assert [p.path for p in rt.validate_runbook(bad_operator)] == ["steps[0].config.condition.operator"]
