"""wait-for-event: delivery as a message, tenants, filter, retention (EVENT_RETENTION_MS),
publish results, timeouts (hours, on the MockClock), status `running` while waiting."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from runtime import Runtime, Settings, open_runtime
from runtime.model.wire import format_time
from tests.conftest import Recorder

HOUR = 3600


def waiting(config: dict[str, Any] | None = None, rid: str = "we", **step: Any) -> dict[str, Any]:
    config = {"eventType": "ticket.closed", "correlationKey": "${input.ticket}", **(config or {})}
    return {"id": rid, "steps": [
        {"id": "wait", "type": "wait-for-event", "config": config, **step},
        {"id": "after", "type": "echo", "config": {"value": "${wait.payload}"}},
    ]}


async def until(rt: Runtime, execution_id: str, predicate: Any) -> Any:
    async for execution in rt.watch(execution_id):
        if predicate(execution):
            return execution
    raise AssertionError("execution finished before the condition held")


async def start_waiting(rt: Runtime, doc: dict[str, Any], ticket: str = "T-1", tenant: str = "t1") -> Any:
    if not any(r.id == doc["id"] for r in await rt.list_runbooks()):
        await rt.register_runbook(doc)
    ex = await rt.start(doc["id"], input={"ticket": ticket}, context={"tenantId": tenant}, force=True)
    return await until(rt, ex.id, lambda e: e.steps["wait"].status != "pending")


@pytest.fixture
async def short_retention(recorder: Recorder) -> AsyncIterator[Runtime]:
    settings = Settings(default_max_retries=0, event_retention_ms=60_000)
    async with open_runtime("memory", settings=settings) as runtime:
        runtime.register_executor("echo", recorder.echo)
        yield runtime


# ---- delivery --------------------------------------------------------------------------------


async def test_event_is_delivered_as_a_message_to_the_waiting_step(rt: Runtime, autojump_clock: Any) -> None:
    ex = await start_waiting(rt, waiting({"timeoutMs": 3 * HOUR * 1000}))
    assert ex.steps["wait"].status == "waiting"
    assert ex.status == "running"  # an event wait keeps the execution running
    await trio.sleep(2 * HOUR)
    assert (await rt.get(ex.id)).steps["wait"].status == "waiting"
    before = trio.current_time()
    result = await rt.publish_event("ticket.closed", "T-1", {"resolution": "fixed"}, tenant_id="t1")
    assert (result.delivered, result.retained) == (1, False)
    assert result.event_id
    # no polling: the step's outcome is committed before publish_event returns, with no delay
    current = await rt.get(ex.id)
    assert trio.current_time() == before
    assert current.steps["wait"].status == "succeeded"
    assert current.steps["wait"].output == {"type": "ticket.closed", "correlationKey": "T-1",
                                            "payload": {"resolution": "fixed"}, "receivedAt": format_time(rt.now())}
    final = await rt.wait(ex.id)
    assert final.status == "completed"
    assert final.steps["after"].output == {"resolution": "fixed"}
    assert (final.steps["wait"].completed_at - final.steps["wait"].started_at).total_seconds() == 2 * HOUR


async def test_an_event_goes_to_every_step_waiting_on_its_key(rt: Runtime, autojump_clock: Any) -> None:
    doc = waiting()
    first = await start_waiting(rt, doc)
    second = await start_waiting(rt, doc)
    other_key = await start_waiting(rt, doc, ticket="T-2")
    result = await rt.publish_event("ticket.closed", "T-1", {"n": 1}, tenant_id="t1")
    assert (result.delivered, result.retained) == (2, False)
    for ex in (first, second):
        assert (await rt.wait(ex.id)).steps["after"].output == {"n": 1}
    assert (await rt.get(other_key.id)).steps["wait"].status == "waiting"


async def test_two_steps_of_one_execution_on_the_same_key(rt: Runtime, autojump_clock: Any) -> None:
    doc = {"id": "two", "steps": [
        {"id": "a", "type": "wait-for-event", "dependsOn": [], "config": {"eventType": "go", "correlationKey": "k"}},
        {"id": "b", "type": "wait-for-event", "dependsOn": [], "config": {"eventType": "go", "correlationKey": "k"}},
    ]}
    await rt.register_runbook(doc)
    ex = await rt.start("two")
    await until(rt, ex.id, lambda e: e.steps["a"].status == e.steps["b"].status == "waiting")
    assert (await rt.publish_event("go", "k")).delivered == 2
    assert (await rt.wait(ex.id)).status == "completed"


async def test_event_type_must_match(rt: Runtime, autojump_clock: Any) -> None:
    ex = await start_waiting(rt, waiting())
    result = await rt.publish_event("ticket.opened", "T-1", {}, tenant_id="t1")
    assert (result.delivered, result.retained) == (0, True)
    assert (await rt.get(ex.id)).steps["wait"].status == "waiting"


async def test_events_are_scoped_to_their_tenant(rt: Runtime, autojump_clock: Any) -> None:
    doc = waiting()
    in_t1 = await start_waiting(rt, doc, tenant="t1")
    result = await rt.publish_event("ticket.closed", "T-1", {"from": "t2"}, tenant_id="t2")
    assert (result.delivered, result.retained) == (0, True)
    await trio.sleep(60)
    assert (await rt.get(in_t1.id)).steps["wait"].status == "waiting"
    # the event retained for t2 goes to a t2 waiter, never to t1's
    in_t2 = await start_waiting(rt, doc, tenant="t2")
    assert in_t2.steps["wait"].status == "succeeded"
    assert in_t2.steps["wait"].output["payload"] == {"from": "t2"}
    assert (await rt.get(in_t1.id)).steps["wait"].status == "waiting"
    assert (await rt.publish_event("ticket.closed", "T-1", {"from": "t1"}, tenant_id="t1")).delivered == 1
    assert (await rt.wait(in_t1.id)).steps["after"].output == {"from": "t1"}


async def test_filter_mismatch_does_not_complete_the_step(rt: Runtime, autojump_clock: Any) -> None:
    doc = waiting({"filter": {"all": [{"field": "payload.status", "operator": "eq", "value": "closed"},
                                      {"field": "payload.priority", "operator": "in", "value": ["P1", "P2"]}]}})
    ex = await start_waiting(rt, doc)
    for payload in ({"status": "open", "priority": "P1"}, {"status": "closed", "priority": "P4"}, {"other": 1}, None):
        result = await rt.publish_event("ticket.closed", "T-1", payload, tenant_id="t1")
        assert result.delivered == 0
        assert (await rt.get(ex.id)).steps["wait"].status == "waiting"
    result = await rt.publish_event("ticket.closed", "T-1", {"status": "closed", "priority": "P2"}, tenant_id="t1")
    assert (result.delivered, result.retained) == (1, False)
    assert (await rt.wait(ex.id)).steps["after"].output == {"status": "closed", "priority": "P2"}


async def test_filter_applies_to_retained_events_too(rt: Runtime, autojump_clock: Any) -> None:
    await rt.publish_event("ticket.closed", "T-1", {"status": "open"}, tenant_id="t1")
    doc = waiting({"filter": {"field": "payload.status", "operator": "eq", "value": "closed"}})
    ex = await start_waiting(rt, doc)
    assert ex.steps["wait"].status == "waiting"
    await rt.publish_event("ticket.closed", "T-1", {"status": "closed"}, tenant_id="t1")
    assert (await rt.wait(ex.id)).status == "completed"


# ---- retention -------------------------------------------------------------------------------


async def test_retained_event_is_handed_to_the_first_later_waiter_and_consumed_once(rt: Runtime, autojump_clock: Any) -> None:
    result = await rt.publish_event("ticket.closed", "T-1", {"early": True}, tenant_id="t1")
    assert (result.delivered, result.retained) == (0, True)
    await trio.sleep(HOUR)
    doc = waiting()
    first = await start_waiting(rt, doc)
    assert first.steps["wait"].status == "succeeded"
    assert first.steps["wait"].output["payload"] == {"early": True}
    assert (await rt.wait(first.id)).status == "completed"
    second = await start_waiting(rt, doc)
    assert second.steps["wait"].status == "waiting"  # consumed: not handed over twice
    assert (await rt.publish_event("ticket.closed", "T-1", {"late": True}, tenant_id="t1")).delivered == 1
    assert (await rt.wait(second.id)).steps["after"].output == {"late": True}


async def test_retained_events_are_handed_over_in_arrival_order(rt: Runtime, autojump_clock: Any) -> None:
    for n in (1, 2):
        await rt.publish_event("ticket.closed", "T-1", {"n": n}, tenant_id="t1")
        await trio.sleep(1)
    doc = waiting()
    first, second = await start_waiting(rt, doc), await start_waiting(rt, doc)
    assert first.steps["wait"].output["payload"] == {"n": 1}
    assert second.steps["wait"].output["payload"] == {"n": 2}


async def test_retention_defaults_to_24_hours(rt: Runtime, autojump_clock: Any) -> None:
    await rt.publish_event("ticket.closed", "T-1", {"n": 1}, tenant_id="t1")
    await trio.sleep(24 * HOUR - 1)
    doc = waiting()
    assert (await start_waiting(rt, doc)).steps["wait"].status == "succeeded"
    await rt.publish_event("ticket.closed", "T-1", {"n": 2}, tenant_id="t1")
    await trio.sleep(24 * HOUR + 1)
    ex = await start_waiting(rt, doc)
    assert ex.steps["wait"].status == "waiting"  # expired: not handed over
    await rt.cancel(ex.id, reason="test done")


async def test_expired_retained_event_is_not_handed_over(short_retention: Runtime, autojump_clock: Any) -> None:
    rt = short_retention
    await rt.publish_event("ticket.closed", "T-1", {"n": 1}, tenant_id="t1")
    await trio.sleep(59)
    doc = waiting({"timeoutMs": 10 * HOUR * 1000})
    assert (await start_waiting(rt, doc)).steps["wait"].status == "succeeded"
    await rt.publish_event("ticket.closed", "T-1", {"n": 2}, tenant_id="t1")
    await trio.sleep(61)
    ex = await start_waiting(rt, doc)
    assert ex.steps["wait"].status == "waiting"
    final = await rt.wait(ex.id)
    assert final.steps["wait"].error.code == "timeout"


# ---- timeouts --------------------------------------------------------------------------------


async def test_default_timeout_is_one_hour_and_fails_with_timeout_without_retry(rt: Runtime, autojump_clock: Any) -> None:
    ex = await start_waiting(rt, waiting(retryPolicy={"maxRetries": 3, "initialDelayMs": 10}))
    final = await rt.wait(ex.id)
    assert trio.current_time() == HOUR
    step = final.steps["wait"]
    assert step.status == "failed"
    assert (step.error.code, step.error.retryable) == ("timeout", False)
    assert step.attempts == 1
    assert final.status == "failed" and final.error.code == "timeout"
    # a late event finds no waiter
    result = await rt.publish_event("ticket.closed", "T-1", {}, tenant_id="t1")
    assert (result.delivered, result.retained) == (0, True)


async def test_timeout_ms_of_several_hours(rt: Runtime, autojump_clock: Any) -> None:
    ex = await start_waiting(rt, waiting({"timeoutMs": 6 * HOUR * 1000}))
    assert (ex.steps["wait"].deadline_at - ex.steps["wait"].started_at).total_seconds() == 6 * HOUR
    await trio.sleep(5 * HOUR)
    assert (await rt.get(ex.id)).steps["wait"].status == "waiting"
    final = await rt.wait(ex.id)
    assert trio.current_time() == 6 * HOUR
    assert final.steps["wait"].error.code == "timeout"


async def test_timeout_with_continue_on_error_lets_the_execution_go_on(rt: Runtime, autojump_clock: Any) -> None:
    doc = {"id": "coe", "steps": [
        {"id": "wait", "type": "wait-for-event", "continueOnError": True,
         "config": {"eventType": "x", "correlationKey": "k", "timeoutMs": 1000}},
        {"id": "after", "type": "echo"},
    ]}
    await rt.register_runbook(doc)
    final = await rt.wait((await rt.start("coe")).id)
    assert final.status == "completed"
    assert final.steps["wait"].status == "failed" and final.steps["after"].status == "succeeded"


async def test_cancel_removes_the_waiter(rt: Runtime, autojump_clock: Any) -> None:
    ex = await start_waiting(rt, waiting())
    await rt.cancel(ex.id, reason="no longer needed")
    assert (await rt.get(ex.id)).steps["wait"].status == "cancelled"
    assert rt.router.waiting == 0
    result = await rt.publish_event("ticket.closed", "T-1", {}, tenant_id="t1")
    assert (result.delivered, result.retained) == (0, True)


async def test_correlation_key_template_error_fails_the_step(rt: Runtime, autojump_clock: Any) -> None:
    doc = {"id": "bad", "steps": [{"id": "wait", "type": "wait-for-event",
                                   "config": {"eventType": "x", "correlationKey": "${input.nope}"}}]}
    await rt.register_runbook(doc)
    final = await rt.wait((await rt.start("bad", input={})).id)
    assert final.steps["wait"].error.code == "template"
    assert "input.nope" in final.steps["wait"].error.message


async def test_correlation_key_from_a_previous_step(rt: Runtime, autojump_clock: Any) -> None:
    doc = {"id": "chain", "steps": [
        {"id": "submit", "type": "echo", "config": {"value": {"jobId": "job-9"}}},
        {"id": "wait", "type": "wait-for-event", "config": {"eventType": "job.done", "correlationKey": "${submit.jobId}"}},
    ]}
    await rt.register_runbook(doc)
    ex = await rt.start("chain")
    await until(rt, ex.id, lambda e: e.steps["wait"].status == "waiting")
    assert (await rt.publish_event("job.done", "job-9", {"ok": True})).delivered == 1  # tenant "default"
    assert (await rt.wait(ex.id)).output["payload"] == {"ok": True}


async def test_wait_start_and_end_are_logged_and_audited(rt: Runtime, autojump_clock: Any) -> None:
    ex = await start_waiting(rt, waiting())
    await rt.publish_event("ticket.closed", "T-1", {}, tenant_id="t1")
    await rt.wait(ex.id)
    messages = [e.message for e in await rt.logs(ex.id, step_id="wait")]
    assert messages[0] == "step started" and messages[-1] == "step succeeded"
    received = [a for a in await rt.audit(ex.id) if a.action == "event.received"]
    assert received[0].step_id == "wait" and received[0].data == {"type": "ticket.closed", "correlationKey": "T-1"}


# ---- validation ------------------------------------------------------------------------------


async def test_wait_for_event_without_event_type_is_refused(rt: Runtime) -> None:
    doc = {"id": "v", "steps": [{"id": "w", "type": "wait-for-event", "config": {"correlationKey": "k"}}]}
    assert [(p.path, p.message) for p in rt.validate_runbook(doc)] == [
        ("steps[0].config.eventType", "required: a non-empty string")]


async def test_wait_for_event_config_problems_are_reported_together(rt: Runtime) -> None:
    doc = {"id": "v", "steps": [{"id": "w", "type": "wait-for-event", "config": {
        "eventType": "", "timeoutMs": 0, "filter": {"field": "payload.x", "operator": "nope"}, "extra": True}}]}
    assert {p.path for p in rt.validate_runbook(doc)} == {
        "steps[0].config.eventType", "steps[0].config.correlationKey", "steps[0].config.timeoutMs",
        "steps[0].config.filter.operator", "steps[0].config.extra"}
