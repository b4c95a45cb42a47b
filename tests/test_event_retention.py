"""Retained events are bounded: they expire in memory and in the store (``EVENT_RETENTION_MS``,
a periodic sweep), and a tenant holds at most ``MAX_RETAINED_EVENTS_PER_TENANT`` of them;
past that cap a publish that no step takes is refused (``LimitExceeded``, HTTP 429)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import trio

from runtime import LimitExceeded, Runtime, Settings, open_runtime
from runtime.shell.retained import sweep_interval_s
from runtime.store.sqlite import SqliteStore
from tests.gateway_fixtures import running_gateway

DAY_S = 24 * 3600
LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)  # retained_events(LONG_AGO): every row still in the store

WAITER = {"id": "waiter", "steps": [
    {"id": "wait", "type": "wait-for-event",
     "config": {"eventType": "ticket.closed", "correlationKey": "${input.ticket}", "timeoutMs": 3 * DAY_S * 1000}}]}


def stored(rt: Runtime) -> int:
    return len(rt.store.retained_events(LONG_AGO))


async def test_two_thousand_unclaimed_events_are_gone_three_days_later(autojump_clock: Any) -> None:
    async with open_runtime("memory") as rt:  # the defaults: 24 h retention, a cap of 10,000
        for n in range(2000):
            result = await rt.publish_event("alert.raised", f"A-{n}", {"n": n}, tenant_id="soc")
            assert result.retained
        assert (len(rt.router.retained), stored(rt)) == (2000, 2000)
        await trio.sleep(DAY_S - 1)
        assert (len(rt.router.retained), stored(rt)) == (2000, 2000)  # not before their time
        await trio.sleep(3 * DAY_S)
        assert (len(rt.router.retained), stored(rt)) == (0, 0)


async def test_an_event_lives_at_most_its_retention_and_one_sweep(autojump_clock: Any) -> None:
    settings = Settings(event_retention_ms=600_000)  # 10 min: a sweep every minute
    assert sweep_interval_s(600_000) == 60
    async with open_runtime("memory", settings=settings) as rt:
        await rt.publish_event("x", "k")
        await trio.sleep(600 + 60 + 0.001)
        assert (len(rt.router.retained), stored(rt)) == (0, 0)


async def test_a_tenant_past_its_cap_is_refused_and_others_are_not(autojump_clock: Any) -> None:
    settings = Settings(max_retained_events_per_tenant=3, event_retention_ms=3600_000)
    async with open_runtime("memory", settings=settings) as rt:
        await rt.register_runbook(WAITER)
        for n in range(3):
            assert (await rt.publish_event("ticket.closed", f"T-{n}", tenant_id="a")).retained
        await trio.sleep(600)
        with pytest.raises(LimitExceeded) as refused:
            await rt.publish_event("ticket.closed", "T-9", {"lost": True}, tenant_id="a")
        assert str(refused.value) == (
            "tenant 'a' already has 3 retained events that no step has taken (the cap, "
            "MAX_RETAINED_EVENTS_PER_TENANT); this event was neither delivered nor retained")
        assert (refused.value.limit, refused.value.setting) == (3, "MAX_RETAINED_EVENTS_PER_TENANT")
        assert refused.value.retry_after_s == 3000  # when the first one expires
        assert stored(rt) == 3  # the refused event was not written
        assert (await rt.publish_event("ticket.closed", "T-9", tenant_id="b")).retained  # another tenant

        # a waiter takes one: room for one more; an event delivered at once never counts
        taker = await rt.start("waiter", {"ticket": "T-0"}, {"tenantId": "a"})
        assert (await rt.wait(taker.id, tenant_id="a")).status == "completed"
        assert (await rt.publish_event("ticket.closed", "T-10", tenant_id="a")).retained
        waiting = await rt.start("waiter", {"ticket": "T-11"}, {"tenantId": "a"})
        async for state in rt.watch(waiting.id):
            if state.steps["wait"].status == "waiting":
                break
        delivered = await rt.publish_event("ticket.closed", "T-11", tenant_id="a")
        assert (delivered.delivered, delivered.retained) == (1, False)
        assert (await rt.wait(waiting.id)).status == "completed"

        await trio.sleep(3600)  # they expire: room again
        assert (await rt.publish_event("ticket.closed", "T-12", tenant_id="a")).retained


async def test_no_retention_retains_nothing(autojump_clock: Any) -> None:
    async with open_runtime("memory", settings=Settings(event_retention_ms=0)) as rt:
        result = await rt.publish_event("x", "k")
        assert (result.delivered, result.retained) == (0, False)
        assert (len(rt.router.retained), stored(rt)) == (0, 0)


async def test_the_sweep_deletes_from_sqlite_and_the_cap_counts_what_a_restart_loads(tmp_path: Path) -> None:
    path = tmp_path / "runbooks.db"
    settings = Settings(event_retention_ms=400, max_retained_events_per_tenant=2)
    async with open_runtime(SqliteStore(path), settings=settings) as rt:
        await rt.publish_event("x", "k1")
        await rt.publish_event("x", "k2")
        await trio.sleep(1.5)  # real time: a sweep runs every second
        assert len(rt.router.retained) == 0
        assert await trio.to_thread.run_sync(rt.store.retained_events, LONG_AGO) == []
    lasting = Settings(event_retention_ms=3600_000, max_retained_events_per_tenant=2)
    async with open_runtime(SqliteStore(path), settings=lasting) as rt:
        await rt.publish_event("x", "k1")
        await rt.publish_event("x", "k2")
    async with open_runtime(SqliteStore(path), settings=lasting) as rt:
        assert len(rt.router.retained) == 2  # loaded at start, and counted
        with pytest.raises(LimitExceeded):
            await rt.publish_event("x", "k3")


async def test_the_gateway_answers_429_naming_the_cap() -> None:
    env = {"MAX_RETAINED_EVENTS_PER_TENANT": "1", "EVENT_RETENTION_MS": "90000"}
    async with running_gateway(env) as gw:
        body = {"type": "sandbox.verdict", "correlationKey": "SB-1", "payload": {}}
        first = await gw.client.post("/api/v1/events", json=body, headers={"X-Tenant-Id": "t1"})
        assert first.status_code == 202 and first.json()["retained"] is True
        refused = await gw.client.post("/api/v1/events", json=body, headers={"X-Tenant-Id": "t1"})
        assert refused.status_code == 429
        assert refused.headers["content-type"] == "application/problem+json"
        assert 85 <= int(refused.headers["retry-after"]) <= 90
        problem = refused.json()
        assert (problem["status"], problem["title"]) == (429, "limit exceeded")
        assert "already has 1 retained events" in problem["detail"]
        assert "MAX_RETAINED_EVENTS_PER_TENANT" in problem["detail"]
        other = await gw.client.post("/api/v1/events", json=body, headers={"X-Tenant-Id": "t2"})
        assert other.status_code == 202


TAKE_THEN_APPROVE = {"id": "take-then-approve", "steps": [
    {"id": "wait", "type": "wait-for-event", "config": {"eventType": "scan.done", "correlationKey": "${input.key}"}},
    {"id": "approve", "type": "human-approval", "config": {"approvers": ["boss"]}},
]}


async def test_a_retained_event_taken_at_once_is_committed_with_its_step(tmp_path: Path) -> None:
    """The step that takes a retained event as it starts waiting succeeds in the same turn:
    that success is what is committed (not the ``waiting`` it passed through), so a restart
    finds the event taken, not lost."""
    path = tmp_path / "runbooks.db"
    async with open_runtime(SqliteStore(path)) as rt:
        await rt.register_runbook(TAKE_THEN_APPROVE)
        await rt.publish_event("scan.done", "S-1", {"clean": True})
        execution = await rt.start("take-then-approve", {"key": "S-1"})
        async for state in rt.watch(execution.id):
            if state.status == "awaiting_approval":
                break
    async with open_runtime(SqliteStore(path)) as rt:
        recovered = await rt.fetch(execution.id)
        assert recovered.steps["wait"].status == "succeeded"
        assert recovered.steps["wait"].output["payload"] == {"clean": True}
        await rt.submit_approval(execution.id, "approve", approver="boss", decision="approve")
        assert (await rt.wait(execution.id)).status == "completed"
