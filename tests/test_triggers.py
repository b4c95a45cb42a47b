"""Triggers: schedules on the MockClock (exact due times, catch-up after downtime, time zones
across daylight-saving changes, disabled triggers, new versions), event rules, validation,
trigger state and audit. The real-time and several-process tests are in
tests/test_triggers_serve.py."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import trio

from runtime import Conflict, NotFound, Runtime, open_runtime
from runtime.api import assembly
from runtime.documents.triggers import Trigger, check_triggers
from runtime.shell.clock import Clock
from runtime.store import MemoryStore
from tests.conftest import Recorder

HOUR = 3600


def scheduled(schedule: str = "0 * * * *", **trigger: Any) -> dict[str, Any]:
    return {"id": "nightly", "steps": [{"id": "work", "type": "echo", "config": {"value": "${input}"}}],
            "triggers": [{"id": "cron", "schedule": schedule, "input": {"n": 1}, "context": {"legalBasis": "ops"},
                          **trigger}]}


@pytest.fixture
def start_at(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[datetime]]:
    """Set the wall-clock time the next runtime opens at (``start_at.append(when)``)."""
    starts: list[datetime] = []
    monkeypatch.setattr(assembly, "Clock", lambda: Clock(starts.pop(0) if starts else None))
    yield starts


async def runs(rt: Runtime, runbook_id: str = "nightly") -> list[Any]:
    page = await rt.list_executions(runbook_id=runbook_id, limit=1000)
    return sorted(page.items, key=lambda e: e.created_at)


# ---------------------------------------------------------------- due times


def test_due_times_across_daylight_saving_changes() -> None:
    daily = Trigger("t", "schedule", schedule="30 2 * * *", timezone="Europe/Berlin")
    after = datetime(2026, 3, 28, 12, tzinfo=UTC)
    spring = [after := daily.next_due(after) for _ in range(2)]
    # 02:30 does not exist on 29 March: due when the gap ends (03:00 CEST), then 02:30 CEST again
    assert spring == [datetime(2026, 3, 29, 1, tzinfo=UTC), datetime(2026, 3, 30, 0, 30, tzinfo=UTC)]
    after = datetime(2026, 10, 24, 12, tzinfo=UTC)
    autumn = [after := daily.next_due(after) for _ in range(2)]
    # 02:30 happens twice on 25 October: due once, at its first occurrence (CEST)
    assert autumn == [datetime(2026, 10, 25, 0, 30, tzinfo=UTC), datetime(2026, 10, 26, 1, 30, tzinfo=UTC)]
    hourly = Trigger("t", "schedule", schedule="0 * * * *", timezone="America/New_York")
    after = datetime(2026, 11, 1, 4, 30, tzinfo=UTC)  # 00:30 EDT on the day clocks fall back
    hours = [after := hourly.next_due(after) for _ in range(3)]
    assert hours == [
        datetime(2026, 11, 1, 5, tzinfo=UTC), datetime(2026, 11, 1, 7, tzinfo=UTC),  # 01:00 EDT, 02:00 EST
        datetime(2026, 11, 1, 8, tzinfo=UTC)]
    seconds = Trigger("t", "schedule", schedule="*/10 * * * * *")
    assert seconds.next_due(datetime(2026, 1, 1, 0, 0, 5, tzinfo=UTC)) == datetime(2026, 1, 1, 0, 0, 10, tzinfo=UTC)
    assert seconds.last_due(datetime(2026, 1, 1, 0, 0, 25, tzinfo=UTC)) == datetime(2026, 1, 1, 0, 0, 20, tzinfo=UTC)


async def test_a_schedule_starts_one_execution_per_due_time_exactly_then(rt: Runtime, autojump_clock: Any) -> None:
    await rt.register_runbook(scheduled())
    registered = rt.now()
    await trio.sleep(3 * HOUR)
    executions = await runs(rt)
    first = (registered + timedelta(hours=1)).replace(minute=0, second=0, microsecond=0)
    due = [first + timedelta(hours=i) for i in range(3)]
    assert len(executions) == 3
    for execution, at in zip(executions, due, strict=True):
        assert abs(execution.created_at - at) < timedelta(milliseconds=1)
        assert execution.context["trigger"] == {"kind": "schedule", "id": "cron",
                                                "at": at.strftime("%Y-%m-%dT%H:%M:%SZ")}
        assert execution.context["tenantId"] == "default" and execution.context["legalBasis"] == "ops"
        assert execution.idempotency_key == f"trigger:nightly:cron:{at.strftime('%Y-%m-%dT%H:%M:%SZ')}"
        assert execution.input == {"n": 1}
        assert (await rt.audit(execution.id))[0].actor == "trigger:cron"
    assert [(await rt.wait(e.id)).status for e in executions] == ["completed"] * 3
    [info] = await rt.list_triggers()
    assert (info.last_run_at, info.last_execution_id) == (due[-1], executions[-1].id)
    assert info.next_run_at == due[-1] + timedelta(hours=1)


async def test_a_new_version_replaces_the_triggers_of_the_old_one(rt: Runtime, autojump_clock: Any) -> None:
    await rt.register_runbook(scheduled())
    await rt.register_runbook({**scheduled(), "triggers": [
        {"id": "other", "schedule": "30 * * * *", "input": {"n": 2}}]})
    await trio.sleep(2 * HOUR)
    executions = await runs(rt)
    assert len(executions) == 2
    assert {e.context["trigger"]["id"] for e in executions} == {"other"}
    assert {e.runbook_version for e in executions} == {2}
    await rt.register_runbook({**scheduled(), "triggers": []})
    await trio.sleep(2 * HOUR)
    assert len(await runs(rt)) == 2


async def test_a_disabled_trigger_starts_nothing_and_switching_is_audited(rt: Runtime, autojump_clock: Any) -> None:
    await rt.register_runbook(scheduled())
    info = await rt.disable_trigger("nightly", "cron", actor="ops", reason="maintenance")
    assert not info.enabled and info.next_run_at is None
    with pytest.raises(Conflict):
        await rt.disable_trigger("nightly", "cron", actor="ops")
    await trio.sleep(3 * HOUR)
    assert await runs(rt) == []
    await rt.enable_trigger("nightly", "cron", actor="ops2")
    await trio.sleep(HOUR)
    assert len(await runs(rt)) == 1
    audit = await rt.trigger_audit("nightly", "cron")
    assert [(a.actor, a.action, a.reason) for a in audit] == [
        ("ops", "trigger.disabled", "maintenance"), ("ops2", "trigger.enabled", None)]
    with pytest.raises(NotFound):
        await rt.enable_trigger("nightly", "nope")
    with pytest.raises(NotFound):
        await rt.enable_trigger("absent", "cron")


async def test_catch_up_after_downtime_starts_only_the_latest_missed_time(
        autojump_clock: Any, start_at: list[datetime], recorder: Recorder) -> None:
    url = MemoryStore()  # one store for the three runs, as a file would be
    t0 = datetime(2026, 5, 4, 10, 15, tzinfo=UTC)
    start_at.append(t0)
    async with open_runtime(url, executors={"echo": recorder.echo}) as rt:
        await rt.register_runbook(scheduled())
        await rt.register_runbook({**scheduled(catchUp="none"), "id": "quiet"})
        await trio.sleep(HOUR)  # 11:00 runs for both
    start_at.append(t0 + timedelta(hours=5, minutes=10))  # down from 11:15 to 15:25: 12:00..15:00 missed
    async with open_runtime(url, executors={"echo": recorder.echo}) as rt:
        await trio.sleep(1)
        latest = await runs(rt)
        quiet = await runs(rt, "quiet")
        assert [e.context["trigger"]["at"] for e in latest] == ["2026-05-04T11:00:00Z", "2026-05-04T15:00:00Z"]
        assert [e.context["trigger"]["at"] for e in quiet] == ["2026-05-04T11:00:00Z"]
        await trio.sleep(HOUR)  # and on it goes at 16:00
        assert [e.context["trigger"]["at"] for e in await runs(rt)][-1] == "2026-05-04T16:00:00Z"
        assert len(await runs(rt, "quiet")) == 2
    start_at.append(t0 + timedelta(hours=6, minutes=10))  # restarted at 16:25: nothing was missed
    async with open_runtime(url, executors={"echo": recorder.echo}) as rt:
        await trio.sleep(1)
        assert len(await runs(rt)) == 3


async def test_a_zoned_schedule_runs_once_on_the_autumn_change(autojump_clock: Any, start_at: list[datetime],
                                                               recorder: Recorder) -> None:
    start_at.append(datetime(2026, 10, 24, 12, tzinfo=UTC))
    async with open_runtime("memory", executors={"echo": recorder.echo}) as rt:
        await rt.register_runbook(scheduled("30 2 * * *", timezone="Europe/Berlin"))
        await trio.sleep(3 * 24 * HOUR)
        assert [e.context["trigger"]["at"] for e in await runs(rt)] == [
            "2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z", "2026-10-27T01:30:00Z"]


# ---------------------------------------------------------------- event rules


def alerted(**event: Any) -> dict[str, Any]:
    return {"id": "on-alert", "steps": [{"id": "triage", "type": "echo", "config": {"value": "${input}"}}],
            "triggers": [{"id": "alert", "event": {"type": "alert.fired", **event},
                          "input": {"host": "${event.payload.host}", "key": "${event.correlationKey}",
                                    "kind": "${event.type}"}}]}


async def test_an_event_rule_starts_an_execution_in_the_events_tenant(rt: Runtime) -> None:
    await rt.register_runbook(alerted(filter={"field": "payload.severity", "operator": "gte", "value": 3}))
    await rt.register_runbook({"id": "waiter", "steps": [
        {"id": "w", "type": "wait-for-event", "config": {"eventType": "alert.fired", "correlationKey": "A-1"}}]})
    waiting = await rt.start("waiter", context={"tenantId": "t1"})
    async for state in rt.watch(waiting.id):
        if state.steps["w"].status == "waiting":
            break
    result = await rt.publish_event("alert.fired", "A-1", {"host": "db-1", "severity": 5}, tenant_id="t1")
    assert (result.delivered, result.retained) == (2, False)  # the waiting step and the rule
    assert (await rt.wait(waiting.id)).status == "completed"
    [started] = (await rt.list_executions(runbook_id="on-alert", tenant_id="t1")).items
    assert started.input == {"host": "db-1", "key": "A-1", "kind": "alert.fired"}
    assert started.context["trigger"]["kind"] == "event" and started.context["trigger"]["id"] == "alert"
    assert (await rt.audit(started.id))[0].actor == "trigger:alert"
    quiet = await rt.publish_event("alert.fired", "A-2", {"host": "db-1", "severity": 1}, tenant_id="t1")
    assert (quiet.delivered, quiet.retained) == (0, True)  # the filter refused it
    await rt.publish_event("alert.fired", "A-3", {"host": "db-2", "severity": 9}, tenant_id="t2")
    assert len((await rt.list_executions(runbook_id="on-alert", tenant_id="t2")).items) == 1
    assert len((await rt.list_executions(runbook_id="on-alert")).items) == 2


async def test_a_tenants_rule_ignores_other_tenants_and_can_be_disabled(rt: Runtime) -> None:
    await rt.register_runbook(alerted(), tenant_id="t1")
    await rt.publish_event("alert.fired", "A-1", {"host": "x"}, tenant_id="t2")
    assert (await rt.list_executions(runbook_id="on-alert")).items == []
    await rt.disable_trigger("on-alert", "alert", tenant_id="t1", actor="ops")
    result = await rt.publish_event("alert.fired", "A-1", {"host": "x"}, tenant_id="t1")
    assert result.delivered == 0
    await rt.enable_trigger("on-alert", "alert", tenant_id="t1", actor="ops")
    assert (await rt.publish_event("alert.fired", "A-1", {"host": "x"}, tenant_id="t1")).delivered == 1
    [info] = await rt.list_triggers(tenant_id="t1")
    assert (info.kind, info.event_type, info.next_run_at, info.enabled) == ("event", "alert.fired", None, True)
    assert await rt.list_triggers(tenant_id="t2") == []


# ---------------------------------------------------------------- validation


def test_every_trigger_problem_is_reported_with_its_path() -> None:
    problems = check_triggers([
        {"id": "a", "schedule": "61 * * * *", "timezone": "Mars/Olympus", "catchUp": "all", "extra": 1},
        {"id": "a", "schedule": "* * *"},
        {"id": "-bad", "event": {"type": "", "filter": {"field": "x", "operator": "nope"}, "more": 1},
         "input": {"x": "${input.y}"}},
        {"id": "both", "schedule": "* * * * *", "event": {"type": "x"}},
        "nope",
    ])
    paths = [p.path for p in problems]
    assert paths == [
        "triggers[0].extra", "triggers[0].schedule", "triggers[0].timezone", "triggers[0].catchUp",
        "triggers[1].id", "triggers[1].schedule",
        "triggers[2].id", "triggers[2].event.more", "triggers[2].event.type", "triggers[2].event.filter.operator",
        "triggers[2].input", "triggers[3]", "triggers[4]"]


async def test_a_runbook_with_a_bad_trigger_is_refused_by_register(rt: Runtime) -> None:
    problems = rt.validate_runbook(scheduled("not cron at all"))
    assert [p.path for p in problems] == ["triggers[0].schedule"]
    assert rt.validate_runbook(scheduled("*/10 * * * * *")) == []

