"""loop: items or while, maxIterations (validation and run time), concurrency,
failFast, per-iteration templating and retries, output order, progress. MockClock."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from runtime import Runtime, StepContext
from tests.conftest import Recorder


def loop(config: dict[str, Any], *after: dict[str, Any], rid: str = "lp", **step: Any) -> dict[str, Any]:
    return {"id": rid, "steps": [{"id": "each", "type": "loop", "config": config, **step}, *after]}


def body(**config: Any) -> dict[str, Any]:
    return {"type": "echo", "config": config}


async def run(rt: Runtime, doc: dict[str, Any], **start: Any) -> Any:
    await rt.register_runbook(doc)
    execution = await rt.start(doc["id"], **start)
    return await rt.wait(execution.id)


async def until(rt: Runtime, execution_id: str, predicate: Any) -> Any:
    async for execution in rt.watch(execution_id):
        if predicate(execution):
            return execution
    raise AssertionError("execution finished before the condition held")


# ---- items -----------------------------------------------------------------------------------


async def test_items_list_runs_the_body_per_item_with_item_and_index(rt: Runtime, recorder: Recorder, autojump_clock: Any) -> None:
    doc = loop({"items": ["web-1", "web-2", "web-3"],
                "step": body(value={"host": "${item}", "n": "${index}", "label": "${index}:${item}"})})
    final = await run(rt, doc)
    assert final.status == "completed"
    assert final.steps["each"].output == [
        {"host": "web-1", "n": 0, "label": "0:web-1"},
        {"host": "web-2", "n": 1, "label": "1:web-2"},
        {"host": "web-3", "n": 2, "label": "2:web-3"},
    ]
    assert recorder.order() == ["each", "each", "each"]


async def test_items_from_a_template_and_previous_step_output(rt: Runtime, autojump_clock: Any) -> None:
    doc = {"id": "tpl", "steps": [
        {"id": "inventory", "type": "echo", "config": {"value": {"hosts": [{"name": "a"}, {"name": "b"}]}}},
        {"id": "each", "type": "loop", "config": {
            "items": "${inventory.hosts}",
            "step": body(value="${item.name}-${input.suffix}")}},
    ]}
    final = await run(rt, doc, input={"suffix": "x"})
    assert final.steps["each"].output == ["a-x", "b-x"]


async def test_items_template_that_is_not_a_list_fails(rt: Runtime, autojump_clock: Any) -> None:
    final = await run(rt, loop({"items": "${input.hosts}", "step": body()}), input={"hosts": "a,b"})
    assert final.status == "failed"
    assert final.steps["each"].error.code == "template"


async def test_empty_items_succeed_with_an_empty_list(rt: Runtime, recorder: Recorder, autojump_clock: Any) -> None:
    final = await run(rt, loop({"items": "${input.hosts}", "step": body()}), input={"hosts": []})
    assert final.status == "completed"
    assert final.steps["each"].output == []
    assert recorder.calls == []


async def test_concurrency_one_by_default_runs_items_in_order(rt: Runtime, recorder: Recorder, autojump_clock: Any) -> None:
    items = [{"n": i, "sleep": s} for i, s in enumerate([3, 1, 2, 1, 1, 2])]
    final = await run(rt, loop({"items": items, "step": body(sleep="${item.sleep}", value="${item.n}")}))
    assert final.steps["each"].output == [0, 1, 2, 3, 4, 5]
    assert recorder.max_running == 1
    assert [t for *_, t in recorder.calls] == [0, 3, 4, 6, 7, 8]  # one after the other, in item order
    assert trio.current_time() == 10


async def test_concurrency_bounds_parallel_iterations_and_output_keeps_item_order(rt: Runtime, recorder: Recorder, autojump_clock: Any) -> None:
    sleeps = [5, 1, 4, 1, 2, 1, 3]
    items = [{"n": i, "sleep": s} for i, s in enumerate(sleeps)]
    final = await run(rt, loop({"items": items, "concurrency": 3,
                                "step": body(sleep="${item.sleep}", value="${item.n}")}))
    assert final.status == "completed"
    assert final.steps["each"].output == list(range(7))  # item order, not finishing order
    assert recorder.max_running == 3


async def test_fail_fast_stops_the_loop_at_the_first_failure(rt: Runtime, recorder: Recorder, autojump_clock: Any) -> None:
    items = [{"fail": ""}, {"fail": "disk full"}, {"fail": ""}, {"fail": ""}]
    doc = loop({"items": items, "step": body(fail="${item.fail}", sleep=1)}, {"id": "after", "type": "echo"})
    final = await run(rt, doc)
    assert final.status == "failed"
    step = final.steps["each"]
    assert step.status == "failed"
    assert "iteration 1" in step.error.message and "disk full" in step.error.message
    assert len(recorder.calls) == 2  # items 2 and 3 never ran
    assert final.steps["after"].status == "pending"
    assert final.error.step_id == "each"


async def test_fail_fast_cancels_iterations_in_flight(rt: Runtime, recorder: Recorder, autojump_clock: Any) -> None:
    items = [{"fail": "", "sleep": 100}, {"fail": "boom", "sleep": 1}, {"fail": "", "sleep": 100}]
    final = await run(rt, loop({"items": items, "concurrency": 3,
                                "step": body(fail="${item.fail}", sleep="${item.sleep}")}))
    assert final.status == "failed"
    assert trio.current_time() == 1  # the slow iterations did not hold the step
    assert recorder.running == 0


async def test_without_fail_fast_every_item_runs_and_the_step_fails(rt: Runtime, recorder: Recorder, autojump_clock: Any) -> None:
    items = [{"fail": ""}, {"fail": "first"}, {"fail": ""}, {"fail": "second"}]
    final = await run(rt, loop({"items": items, "failFast": False, "step": body(fail="${item.fail}", value="${index}")}))
    assert len(recorder.calls) == 4
    step = final.steps["each"]
    assert step.status == "failed"
    assert "iteration 1 failed: first" in step.error.message  # the first failing item is reported
    assert step.output == [0, None, 2, None]


async def test_continue_on_error_loop_lets_dependents_run(rt: Runtime, autojump_clock: Any) -> None:
    doc = loop({"items": [1], "step": body(fail="no")}, {"id": "after", "type": "echo"}, continueOnError=True)
    final = await run(rt, doc)
    assert final.status == "completed"
    assert final.steps["each"].status == "failed"
    assert final.steps["after"].status == "succeeded"


async def test_each_iteration_retries_by_the_body_policy(rt: Runtime, recorder: Recorder, autojump_clock: Any) -> None:
    recorder.fail_times["each"] = 1  # the first attempt of every iteration fails
    policy = {"maxRetries": 1, "initialDelayMs": 1000, "jitter": False}
    final = await run(rt, loop({"items": ["a", "b"], "step": {**body(value="${item}"), "retryPolicy": policy}}))
    assert final.status == "completed"
    assert final.steps["each"].output == ["a", "b"]
    assert [(a, t) for _, a, t in recorder.calls] == [(1, 0), (2, 1), (1, 1), (2, 2)]
    retries = [e for e in await rt.logs(final.id, step_id="each") if "retrying" in e.message]
    assert [e.data["index"] for e in retries] == [0, 1]


async def test_iteration_timeout_from_the_body(rt: Runtime, autojump_clock: Any) -> None:
    final = await run(rt, loop({"items": [1], "step": {**body(sleep=60), "timeoutMs": 5000}}))
    assert final.steps["each"].error.code == "timeout"
    assert trio.current_time() == 5


async def test_the_loop_step_timeout_bounds_the_whole_loop(rt: Runtime, recorder: Recorder, autojump_clock: Any) -> None:
    # timeoutMs is common to every step type; a loop has one attempt: all its iterations
    final = await run(rt, loop({"items": [1, 2, 3], "step": body(sleep=10)}, timeoutMs=25_000))
    step = final.steps["each"]
    assert final.status == "failed"
    assert step.status == "failed" and step.error.code == "timeout"
    assert trio.current_time() == 25
    assert len(recorder.calls) == 3 and recorder.running == 0


async def test_an_iteration_that_crashes_fails_only_its_step(rt: Runtime, autojump_clock: Any) -> None:
    async def crash(ctx: StepContext) -> Any:
        if ctx.config["n"] == 1:
            raise RuntimeError("bug in executor")
        return ctx.config["n"]

    rt.register_executor("crash", crash)
    doc = loop({"items": [0, 1, 2], "failFast": False, "step": {"type": "crash", "config": {"n": "${item}"}}},
               continueOnError=True)
    doc["steps"].append({"id": "after", "type": "echo"})
    final = await run(rt, doc)
    assert final.status == "completed"
    assert final.steps["each"].error.code == "executor"
    assert final.steps["each"].output == [0, None, 2]


# ---- while -----------------------------------------------------------------------------------


async def test_while_sees_index_and_previous_which_is_null_first(rt: Runtime, autojump_clock: Any) -> None:
    async def page(ctx: StepContext) -> Any:
        n = ctx.config["index"]
        return {"page": n, "saw": ctx.config["previous"], "more": n < 2}

    rt.register_executor("page", page)
    condition = {"any": [{"field": "index", "operator": "eq", "value": 0},
                         {"field": "previous.more", "operator": "eq", "value": True}]}
    doc = loop({"while": condition, "step": {"type": "page", "config": {"index": "${index}", "previous": "${previous}"}}})
    final = await run(rt, doc)
    assert final.status == "completed"
    assert final.steps["each"].output == [
        {"page": 0, "saw": None, "more": True},
        {"page": 1, "saw": {"page": 0, "saw": None, "more": True}, "more": True},
        {"page": 2, "saw": {"page": 1, "saw": {"page": 0, "saw": None, "more": True}, "more": True}, "more": False},
    ]


async def test_while_false_at_once_runs_nothing(rt: Runtime, recorder: Recorder, autojump_clock: Any) -> None:
    final = await run(rt, loop({"while": {"field": "input.go", "operator": "eq", "value": True}, "step": body()}),
                      input={"go": False})
    assert final.status == "completed"
    assert final.steps["each"].output == []
    assert recorder.calls == []


async def test_while_still_true_after_max_iterations_fails_with_loop_limit(rt: Runtime, recorder: Recorder, autojump_clock: Any) -> None:
    doc = loop({"while": {"field": "index", "operator": "gte", "value": 0}, "maxIterations": 4, "step": body()},
               retryPolicy={"maxRetries": 3})
    final = await run(rt, doc)
    step = final.steps["each"]
    assert step.status == "failed"
    assert (step.error.code, step.error.retryable) == ("loop_limit", False)
    assert len(recorder.calls) == 4  # not retried either
    assert step.attempts == 1


async def test_while_is_capped_at_1000_at_run_time(rt: Runtime, recorder: Recorder, autojump_clock: Any) -> None:
    final = await run(rt, loop({"while": {"field": "index", "operator": "gte", "value": 0}, "step": body()}))
    assert final.steps["each"].error.code == "loop_limit"
    assert len(recorder.calls) == 1000


# ---- maxIterations -----------------------------------------------------------------------------


async def test_items_beyond_max_iterations_fail_before_any_iteration(rt: Runtime, recorder: Recorder, autojump_clock: Any) -> None:
    final = await run(rt, loop({"items": [1, 2, 3, 4], "maxIterations": 3, "step": body()}))
    step = final.steps["each"]
    assert final.status == "failed"
    assert (step.error.code, step.error.retryable) == ("loop_limit", False)
    assert "4" in step.error.message and "3" in step.error.message
    assert recorder.calls == []  # nothing truncated, nothing run


async def test_items_beyond_the_hard_cap_fail_at_run_time(rt: Runtime, recorder: Recorder, autojump_clock: Any) -> None:
    final = await run(rt, loop({"items": "${input.hosts}", "step": body()}), input={"hosts": list(range(1001))})
    assert final.steps["each"].error.code == "loop_limit"
    assert recorder.calls == []
    ok = await run(rt, loop({"items": "${input.hosts}", "step": body(value="${item}")}, rid="ok"),
                   input={"hosts": list(range(1000))})
    assert ok.status == "completed" and len(ok.steps["each"].output) == 1000


# ---- progress --------------------------------------------------------------------------------


async def test_progress_counts_iterations_done_of_total(rt: Runtime, autojump_clock: Any) -> None:
    await rt.register_runbook(loop({"items": [1, 2, 3], "step": body(sleep=10)}))
    ex = await rt.start("lp")
    seen: list[Any] = []
    async for execution in rt.watch(ex.id):
        progress = execution.steps["each"].progress
        if progress is not None and (not seen or seen[-1] != progress):
            seen.append(progress)
        if execution.status.finished:
            break
    assert seen == [{"done": 0, "total": 3}, {"done": 1, "total": 3}, {"done": 2, "total": 3},
                    {"done": 3, "total": 3}]


async def test_while_progress_has_no_total(rt: Runtime, autojump_clock: Any) -> None:
    doc = loop({"while": {"field": "index", "operator": "lt", "value": 2}, "step": body(sleep=1)})
    final = await run(rt, doc)
    assert final.steps["each"].progress == {"done": 2, "total": None}


async def test_cancel_stops_a_running_loop(rt: Runtime, recorder: Recorder, autojump_clock: Any) -> None:
    await rt.register_runbook(loop({"items": list(range(5)), "concurrency": 2, "step": body(sleep=100)}))
    ex = await rt.start("lp")
    await until(rt, ex.id, lambda e: (e.steps["each"].progress or {}).get("done") == 2)
    cancelled = await rt.cancel(ex.id, reason="stop")
    assert cancelled.steps["each"].status == "cancelled"
    await trio.testing.wait_all_tasks_blocked()
    assert recorder.running == 0
    assert len(recorder.calls) == 4


async def test_loop_start_and_end_are_logged(rt: Runtime, autojump_clock: Any) -> None:
    final = await run(rt, loop({"items": [1], "step": body()}))
    messages = [e.message for e in await rt.logs(final.id, step_id="each")]
    assert messages[0] == "step started" and messages[-1] == "step succeeded"


# ---- validation ------------------------------------------------------------------------------


def problems(rt: Runtime, config: dict[str, Any]) -> dict[str, str]:
    return {p.path: p.message for p in rt.validate_runbook(loop(config))}


async def test_max_iterations_over_1000_is_refused(rt: Runtime) -> None:
    found = problems(rt, {"items": [1], "maxIterations": 1001, "step": body()})
    assert list(found) == ["steps[0].config.maxIterations"]
    assert "1000" in found["steps[0].config.maxIterations"]
    assert problems(rt, {"items": [1], "maxIterations": 1000, "step": body()}) == {}


@pytest.mark.parametrize("parked", ["human-approval", "wait-for-event", "conditional", "loop"])
async def test_loop_body_of_a_parked_or_engine_type_is_refused(rt: Runtime, parked: str) -> None:
    found = problems(rt, {"items": [1], "step": {"type": parked, "config": {}}})
    assert list(found) == ["steps[0].config.step.type"]
    assert parked in found["steps[0].config.step.type"]


async def test_loop_config_problems_are_reported_together(rt: Runtime) -> None:
    found = problems(rt, {"items": [1], "while": {"field": "index", "operator": "lt", "value": 1},
                          "concurrency": 0, "failFast": "yes",
                          "step": {"type": "call-service", "config": {"protocol": "smtp"}, "timeoutMs": -1}})
    assert set(found) == {"steps[0].config", "steps[0].config.concurrency", "steps[0].config.failFast",
                          "steps[0].config.step.config.url", "steps[0].config.step.config.protocol",
                          "steps[0].config.step.timeoutMs"}


async def test_loop_without_body_or_source_is_refused(rt: Runtime) -> None:
    found = problems(rt, {})
    assert set(found) == {"steps[0].config", "steps[0].config.step"}
