"""Scheduling rules: default sequential dependencies, DAGs, when, skips, joins, limits."""

from __future__ import annotations

import trio

from runtime import Runtime
from tests.conftest import Recorder, chain


async def run(rt: Runtime, doc: dict, **start: object) -> object:
    await rt.register_runbook(doc)
    execution = await rt.start(doc["id"], **start)  # type: ignore[arg-type]
    return await rt.wait(execution.id)


async def test_plain_list_runs_in_document_order(rt: Runtime, recorder: Recorder, autojump_clock: object) -> None:
    doc = chain("c", "a", "b", config={"sleep": 1})
    final = await run(rt, doc)
    assert final.status == "completed"
    assert recorder.order() == ["c", "a", "b"]
    assert recorder.max_running == 1
    assert list(final.steps) == ["c", "a", "b"]


async def test_empty_depends_on_runs_in_parallel_and_join_waits(rt: Runtime, recorder: Recorder, autojump_clock: object) -> None:
    doc = {"id": "dag", "steps": [
        {"id": "a", "type": "echo", "dependsOn": [], "config": {"sleep": 5}},
        {"id": "b", "type": "echo", "dependsOn": [], "config": {"sleep": 3}},
        {"id": "join", "type": "echo", "dependsOn": ["a", "b"]},
    ]}
    final = await run(rt, doc)
    assert final.status == "completed"
    times = {step: at for step, _, at in recorder.calls}
    assert times["a"] == times["b"]
    assert times["join"] - times["a"] == 5  # after the slower dependency, not before
    assert recorder.max_running == 2


async def test_max_concurrent_steps_is_respected(rt: Runtime, recorder: Recorder, autojump_clock: object) -> None:
    doc = {"id": "wide", "maxConcurrentSteps": 3, "steps": [
        {"id": f"s{i}", "type": "echo", "dependsOn": [], "config": {"sleep": 1}} for i in range(10)
    ]}
    final = await run(rt, doc)
    assert final.status == "completed"
    assert recorder.max_running == 3
    assert trio.current_time() >= 4  # ceil(10 / 3) rounds of one second


async def test_when_false_skips_and_skip_propagates_but_join_runs(rt: Runtime, recorder: Recorder, autojump_clock: object) -> None:
    doc = {"id": "when", "steps": [
        {"id": "start", "type": "echo", "config": {"value": {"risk": 3}}},
        {"id": "high", "type": "echo", "dependsOn": ["start"],
         "when": {"field": "start.risk", "operator": "gt", "value": 7}},
        {"id": "after-high", "type": "echo", "dependsOn": ["high"]},
        {"id": "low", "type": "echo", "dependsOn": ["start"],
         "when": {"field": "start.risk", "operator": "lte", "value": 7}},
        {"id": "join", "type": "echo", "dependsOn": ["after-high", "low"]},
    ]}
    final = await run(rt, doc)
    assert final.status == "completed"
    assert final.steps["high"].status == "skipped"
    assert final.steps["after-high"].status == "skipped"  # every dependency skipped
    assert final.steps["low"].status == "succeeded"
    assert final.steps["join"].status == "succeeded"  # one dependency ran
    assert "high" not in recorder.order() and "after-high" not in recorder.order()


async def test_condition_on_missing_field_is_false_not_an_error(rt: Runtime, autojump_clock: object) -> None:
    doc = {"id": "missing", "steps": [
        {"id": "a", "type": "echo", "when": {"field": "input.nope", "operator": "ne", "value": 1}},
        {"id": "b", "type": "echo", "dependsOn": [], "when": {"field": "input.nope", "operator": "exists"}},
    ]}
    final = await run(rt, doc, input={})
    assert final.status == "completed"
    assert final.steps["a"].status == "skipped"
    assert final.steps["b"].status == "skipped"


async def test_typed_templates_reach_the_executor(rt: Runtime, autojump_clock: object) -> None:
    doc = {"id": "typed", "steps": [
        {"id": "hosts", "type": "echo", "config": {"value": ["h1", "h2"]}},
        {"id": "use", "type": "echo", "config": {"value": {
            "list": "${hosts}", "first": "${hosts.0}", "text": "n=${input.n} for {executionId}",
            "count": "${input.n}"}}},
    ]}
    final = await run(rt, doc, input={"n": 2})
    out = final.steps["use"].output
    assert out["list"] == ["h1", "h2"]
    assert out["first"] == "h1"
    assert out["count"] == 2
    assert out["text"] == f"n=2 for {final.id}"


async def test_missing_template_path_fails_the_step_without_retry(rt: Runtime, recorder: Recorder, autojump_clock: object) -> None:
    doc = {"id": "tpl", "steps": [
        {"id": "a", "type": "echo", "retryPolicy": {"maxRetries": 3}, "config": {"value": "${input.absent.x}"}},
    ]}
    final = await run(rt, doc, input={})
    assert final.status == "failed"
    error = final.steps["a"].error
    assert error.code == "template" and not error.retryable
    assert "input.absent.x" in error.message
    assert recorder.calls == []


async def test_output_template_and_default_output(rt: Runtime, autojump_clock: object) -> None:
    doc = chain("a", "b", config={"value": {"url": "https://x"}})
    doc["steps"][1]["config"] = {"value": 42}
    assert (await run(rt, doc)).output == 42  # the last step that succeeded
    doc2 = {**doc, "id": "out", "output": "${a.url}"}
    assert (await run(rt, doc2)).output == "https://x"


async def test_steps_are_in_document_order_with_aware_times(rt: Runtime, autojump_clock: object) -> None:
    final = await run(rt, chain("z", "y", "x"), input={"k": [1, 2]})
    assert list(final.steps) == ["z", "y", "x"]
    assert final.started_at.tzinfo is not None and final.completed_at.tzinfo is not None
    assert all(s.attempts == 1 for s in final.steps.values())
    assert len(final.input_hash) == 64 and final.input_hash == final.input_hash.lower()
