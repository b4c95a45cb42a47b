"""Several runtimes on one PostgreSQL database, in one process: any request works on any of
them, events and watches cross, restarts resume, stale owners are fenced."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
import trio
from psycopg import sql

from runtime import (
    CommandQueued,
    Conflict,
    Forbidden,
    LimitExceeded,
    Runtime,
    Settings,
    open_runtime,
)
from runtime.model import Event
from runtime.model.records import Change, Wait
from runtime.store.postgres import PostgresStore
from tests.conftest import DSN, taken_over

pytestmark = [pytest.mark.postgres]

APPROVAL = {"id": "gate", "steps": [
    {"id": "ok", "type": "human-approval", "config": {"approvers": ["boss"]}},
    {"id": "after", "type": "probe"}]}
WAIT = {"id": "wait", "steps": [
    {"id": "ev", "type": "wait-for-event", "config": {"eventType": "go", "correlationKey": "${input.key}"}}]}
TTL_MS = 900


async def probe(ctx: Any) -> Any:
    return {"ran": ctx.step_id}



@asynccontextmanager
async def node(schema: str, instance: str, *, types: bool = True, **settings: Any) -> AsyncIterator[Runtime]:
    store = PostgresStore(DSN, pool_max=3, schema=schema)
    options = {"lease_ttl_ms": TTL_MS, "instance_id": instance, "forward_wait_ms": 3000, **settings}
    async with open_runtime(store, settings=Settings(**options), executors={"probe": probe} if types else None) as rt:
        yield rt


async def test_a_runtime_on_a_shared_store_joins_the_cluster_with_the_pool_it_was_given(schema: str,
                                                                                       tmp_path: Any) -> None:
    async with open_runtime(f"{DSN}?schema={schema}", pool_max=3, settings=Settings(instance_id="a")) as rt:
        assert rt.cluster is not None and rt.cluster.instance_id == "a"
        assert rt.store.pool_max == 3  # type: ignore[attr-defined]
    async with open_runtime(f"sqlite:///{tmp_path}/one.db") as alone:
        assert alone.cluster is None  # a SQLite file belongs to one process: no ledger


async def until(rt: Runtime, execution_id: str, predicate: Any, within_s: float = 10) -> Any:
    with trio.fail_after(within_s):
        async for execution in rt.watch(execution_id):
            if predicate(execution):
                return execution
    raise AssertionError("finished before the condition held")


async def test_control_and_decisions_through_a_process_that_does_not_own_the_execution(schema: str) -> None:
    async with node(schema, "a") as a, node(schema, "b") as b:
        await a.register_runbook(APPROVAL)
        execution = await a.start("gate")
        await until(a, execution.id, lambda e: e.status == "awaiting_approval")
        assert a.owns(execution.id) and not b.owns(execution.id)
        paused = await b.pause(execution.id, reason="hold", actor="ops")
        assert paused.status == "paused" and paused.version == (await b.fetch(execution.id)).version  # as committed
        with pytest.raises(Conflict, match="cannot pause an execution that is paused"):  # the owner's own answer
            await b.pause(execution.id, reason="again")
        with pytest.raises(Forbidden):  # refused where it arrived: no need to ask the owner
            await b.submit_approval(execution.id, "ok", approver="mallory", decision="approve")
        assert (await b.resume(execution.id)).status == "awaiting_approval"
        decided = await b.submit_approval(execution.id, "ok", approver="boss", decision="approve", comment="go")
        assert decided.steps["ok"].status == "succeeded"
        assert decided.steps["ok"].approvals[0].comment == "go"
        final = await until(b, execution.id, lambda e: e.status.finished)  # b follows a's execution live
        assert final.status == "completed" and final.steps["after"].output == {"ran": "after"}
        actions = [entry.action for entry in await b.audit(execution.id)]
        assert actions.count("execution.pause") == 1 and actions.count("approval.decided") == 1


async def test_cancel_and_replay_through_another_process(schema: str) -> None:
    async with node(schema, "a") as a, node(schema, "b") as b:
        await a.register_runbook(APPROVAL)
        execution = await a.start("gate")
        await until(a, execution.id, lambda e: e.status == "awaiting_approval")
        cancelled = await b.cancel(execution.id, reason="wrong change", actor="ops")
        assert cancelled.status == "cancelled"
        replayed = await b.replay(execution.id, actor="ops")
        assert replayed.replay_of == execution.id and b.owns(replayed.id)


async def test_retry_of_a_failed_execution_through_another_process(schema: str) -> None:
    async with node(schema, "a") as a, node(schema, "b") as b:
        await a.register_runbook(APPROVAL)
        execution = await a.start("gate")
        await until(a, execution.id, lambda e: e.status == "awaiting_approval")
        await a.submit_approval(execution.id, "ok", approver="boss", decision="reject")
        assert (await until(b, execution.id, lambda e: e.status.finished)).status == "failed"
        retried = await b.retry_step(execution.id, "ok", actor="ops")
        assert retried.status == "running" and b.owns(execution.id) and not a.owns(execution.id)
        await a.submit_approval(execution.id, "ok", approver="boss", decision="approve")
        assert (await until(a, execution.id, lambda e: e.status.finished)).status == "completed"


async def test_an_event_published_on_one_process_reaches_a_waiter_on_another(schema: str) -> None:
    async with node(schema, "a") as a, node(schema, "b") as b, node(schema, "c") as c:
        await a.register_runbook(WAIT)
        execution = await a.start("wait", {"key": "k1"})
        await until(a, execution.id, lambda e: e.steps["ev"].status == "waiting")
        result = await c.publish_event("go", "k1", {"n": 1})
        assert (result.delivered, result.retained) == (1, False)
        final = await until(b, execution.id, lambda e: e.status.finished)
        assert final.steps["ev"].output["payload"] == {"n": 1}
        kept = await c.publish_event("go", "k2", {"n": 2})  # nobody waits: kept once
        assert kept.retained
        later = await b.start("wait", {"key": "k2"})
        assert (await until(a, later.id, lambda e: e.status.finished)).steps["ev"].output["payload"] == {"n": 2}


async def test_a_publish_on_another_process_counts_the_waiters_whose_filter_refused_it(schema: str) -> None:
    picky = {"id": "picky", "steps": [{"id": "ev", "type": "wait-for-event", "config": {
        "eventType": "go", "correlationKey": "k", "filter": {"field": "payload.ok", "operator": "eq", "value": True}}}]}
    async with node(schema, "a") as a, node(schema, "b") as b:
        await a.register_runbook(picky)
        execution = await a.start("picky", {})
        await until(a, execution.id, lambda e: e.steps["ev"].status == "waiting")
        refused = await b.publish_event("go", "k", {"ok": False})
        assert (refused.delivered, refused.refused_by_filter) == (0, 1)
        taken = await b.publish_event("go", "k", {"ok": True})
        assert (taken.delivered, taken.refused_by_filter) == (1, 0)


async def test_publishing_while_a_step_starts_waiting_loses_nothing_and_delivers_once(schema: str) -> None:
    async with node(schema, "a") as a, node(schema, "b") as b:
        await a.register_runbook(WAIT)
        ids: list[str] = []

        async def race(i: int) -> None:
            async with trio.open_nursery() as both:
                both.start_soon(lambda: b.publish_event("go", f"race-{i}", {"i": i}))
                ids.append((await a.start("wait", {"key": f"race-{i}"})).id)

        async with trio.open_nursery() as races:
            for i in range(40):
                races.start_soon(race, i)
        for execution_id in ids:
            final = await until(a, execution_id, lambda e: e.status.finished, within_s=20)
            assert final.status == "completed"
        with psycopg.connect(DSN, autocommit=True) as conn:
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
            assert conn.execute("SELECT count(*) FROM events").fetchone() == (0,)  # none left unclaimed
            events = conn.execute("SELECT count(*) FROM commands WHERE kind = 'DeliverEvent'").fetchone()
            taken = conn.execute("SELECT count(*) FROM commands WHERE kind = 'DeliverEvent' "
                                 "AND outcome->>'value' = 'true'").fetchone()
        assert events == taken == (40,)  # one event for each step, and each taken


async def test_a_stale_owner_is_fenced_and_its_watchers_follow_the_new_owner(schema: str,
                                                                             caplog: pytest.LogCaptureFixture) -> None:
    async with node(schema, "a") as a, node(schema, "b") as b:
        await a.register_runbook(APPROVAL)
        execution = await a.start("gate")
        current = await until(a, execution.id, lambda e: e.status == "awaiting_approval")
        # b takes the execution as if a had gone quiet: the epoch moves on
        assert await trio.to_thread.run_sync(b.store.ledger.claim, execution.id, b.cluster.owner, current.epoch) is not None
        b.directory.start(execution.id)
        with caplog.at_level(logging.WARNING):
            decided = await a.submit_approval(execution.id, "ok", approver="boss", decision="approve")
        assert decided.steps["ok"].status == "succeeded"  # a's own write was refused; b applied it
        assert not a.owns(execution.id) and b.owns(execution.id)
        assert any("owned by another process" in record.message for record in caplog.records)
        final = await until(a, execution.id, lambda e: e.status.finished)
        assert final.status == "completed"
        decisions = [e for e in await a.audit(execution.id) if e.action == "approval.decided"]
        assert len(decisions) == 1


async def test_a_restart_under_the_same_instance_id_resumes_at_once(schema: str) -> None:
    async with node(schema, "node-1") as first:
        await first.register_runbook(APPROVAL)
        execution = await first.start("gate")
        await until(first, execution.id, lambda e: e.status == "awaiting_approval")
        first.cluster.stop = _nothing  # type: ignore[union-attr,method-assign]  # it dies: no handover
    async with node(schema, "node-1") as again:
        assert again.owns(execution.id)  # no wait for the lease
        await again.submit_approval(execution.id, "ok", approver="boss", decision="approve")
        assert (await until(again, execution.id, lambda e: e.status.finished)).status == "completed"


async def test_under_another_id_the_executions_are_taken_over_after_the_ttl(schema: str) -> None:
    async with node(schema, "node-1") as first:
        await first.register_runbook(APPROVAL)
        execution = await first.start("gate")
        await until(first, execution.id, lambda e: e.status == "awaiting_approval")
        first.cluster.stop = _nothing  # type: ignore[union-attr,method-assign]
    async with node(schema, "node-2") as other:
        started = trio.current_time()
        with trio.fail_after(5):
            while not other.owns(execution.id):  # noqa: ASYNC110 (the lease runs out in real time)
                await trio.sleep(0.05)
        assert trio.current_time() - started <= TTL_MS / 1000 + 1
        await other.submit_approval(execution.id, "ok", approver="boss", decision="approve")
        assert (await until(other, execution.id, lambda e: e.status.finished)).status == "completed"


async def test_a_graceful_shutdown_hands_executions_over_at_once(schema: str) -> None:
    async with node(schema, "b", lease_ttl_ms=60_000) as b:
        async with node(schema, "a", lease_ttl_ms=60_000) as a:
            await a.register_runbook(APPROVAL)
            execution = await a.start("gate")
            await until(a, execution.id, lambda e: e.status == "awaiting_approval")
        with trio.fail_after(5):
            while not b.owns(execution.id):  # noqa: ASYNC110 (announced, then claimed)
                await trio.sleep(0.05)


async def test_an_execution_is_left_to_a_process_that_has_its_step_types(schema: str) -> None:
    async with node(schema, "a") as a:
        await a.register_runbook(APPROVAL)
        execution = await a.start("gate")
        await until(a, execution.id, lambda e: e.status == "awaiting_approval")
        a.cluster.stop = _nothing  # type: ignore[union-attr,method-assign]
    async with node(schema, "plain", types=False) as plain:
        with trio.fail_after(5):
            while plain.cluster.waiting_for_owner < 1:  # type: ignore[union-attr]  # noqa: ASYNC110
                await trio.sleep(0.05)
        assert not plain.owns(execution.id)
        with pytest.raises(CommandQueued):  # nobody runs it: the decision waits in the table
            await plain.submit_approval(execution.id, "ok", approver="boss", decision="approve")
        async with node(schema, "capable") as capable:
            with trio.fail_after(5):
                while not capable.owns(execution.id):  # noqa: ASYNC110
                    await trio.sleep(0.05)
            final = await until(capable, execution.id, lambda e: e.status.finished)
            assert final.status == "completed"  # the queued decision was applied first
            assert final.steps["ok"].approvals[0].approver == "boss"


async def test_a_second_live_process_with_the_same_id_is_fenced_and_logged(schema: str,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    async with node(schema, "twin") as first:
        await first.register_runbook(APPROVAL)
        execution = await first.start("gate")
        await until(first, execution.id, lambda e: e.status == "awaiting_approval")
        with caplog.at_level(logging.WARNING, logger="runbooks.cluster"):
            async with node(schema, "twin") as second:
                assert second.owns(execution.id)
                assert any("restarted before its previous run's heartbeat ran out" in record.message
                           for record in caplog.records)
                with trio.fail_after(5):
                    while first.owns(execution.id):  # noqa: ASYNC110 (its next heartbeat finds out)
                        await trio.sleep(0.05)
                assert any("another process took" in record.message for record in caplog.records)
                await second.submit_approval(execution.id, "ok", approver="boss", decision="approve")
                assert (await until(second, execution.id, lambda e: e.status.finished)).status == "completed"


async def _nothing() -> None:
    return None


async def test_a_restart_under_the_same_id_after_a_crash_says_what_happened(schema: str,
                                                                            caplog: pytest.LogCaptureFixture) -> None:
    async with node(schema, "web-0") as before:
        await before.register_runbook(APPROVAL)
        execution = await before.start("gate")
        await until(before, execution.id, lambda e: e.status == "awaiting_approval")
        before.cluster.stop = _nothing  # type: ignore[union-attr,method-assign]  # as after kill -9: no hand-over
    with caplog.at_level(logging.INFO, logger="runbooks.cluster"):
        async with node(schema, "web-0") as after:
            assert after.owns(execution.id)
    said = [(r.levelname, r.message) for r in caplog.records if r.name == "runbooks.cluster"]
    assert not [m for level, m in said if level == "ERROR"], said  # not a misconfiguration: the documented recovery
    assert any(level == "WARNING" and "instance 'web-0' restarted" in m and "resuming its 1 unfinished execution"
               in m for level, m in said), said


async def test_stopping_says_whether_other_processes_take_the_executions(schema: str,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="runbooks.cluster"):
        async with node(schema, "b") as b:
            async with node(schema, "a") as a:
                await a.register_runbook(APPROVAL)
                execution = await a.start("gate")
                await until(a, execution.id, lambda e: e.status == "awaiting_approval")
            handed = [r.message for r in caplog.records if "handed" in r.message]
            assert handed == ["handed 1 unfinished execution(s) over to the 1 other running process(es)"]
            await taken_over(b, execution.id)
            caplog.clear()
        # b took it over and is the last to stop: nobody to hand it to
        said = [r.message for r in caplog.records if r.name == "runbooks.cluster"]
        assert not any("handed" in m for m in said), said
        assert "released 1 unfinished execution(s); no other process is running: the next process to start on " \
               "this database resumes them" in said


async def test_readiness_and_metrics_show_executions_waiting_for_a_capable_owner(schema: str) -> None:
    from gateway.app import create_app
    from gateway.config import Config
    from gateway.metrics import GatewayMetrics

    async with node(schema, "a") as a:
        await a.register_runbook(APPROVAL)
        execution = await a.start("gate")
        await until(a, execution.id, lambda e: e.status == "awaiting_approval")
        a.cluster.stop = _nothing  # type: ignore[union-attr,method-assign]
    async with node(schema, "plain", types=False) as plain:
        with trio.fail_after(5):
            while plain.waiting_for_owner < 1:  # noqa: ASYNC110 (its first takeover sweep)
                await trio.sleep(0.05)
        app = create_app(plain, Config.from_env({}), metrics=GatewayMetrics())
        client = app.test_client()
        ready = await client.get("/health/ready")
        assert ready.status_code == 200 and (await ready.get_json()) == {"status": "ok", "waitingForCapableOwner": 1}
        text = await (await client.get("/metrics")).get_data(as_text=True)
        assert "runbooks_executions_waiting_for_capable_owner 1.0" in text


async def test_the_cap_of_retained_events_counts_every_process_and_says_when_room_comes(schema: str) -> None:
    cap = {"max_retained_events_per_tenant": 2, "event_retention_ms": 3_600_000}
    async with node(schema, "a", **cap) as a, node(schema, "b", **cap) as b:
        assert (await a.publish_event("go", "k1", tenant_id="t")).retained
        assert (await b.publish_event("go", "k2", tenant_id="t")).retained
        with pytest.raises(LimitExceeded) as refused:  # the two are in the database, whoever took them
            await a.publish_event("go", "k3", tenant_id="t")
        assert refused.value.limit == 2
        assert refused.value.retry_after_s is not None and 3500 < refused.value.retry_after_s <= 3600
        assert (await b.publish_event("go", "k3", tenant_id="other")).retained  # another tenant has room


def test_publishes_committed_in_one_batch_are_decided_in_order(schema: str) -> None:
    """Their lookups go out together; each is still decided as if alone, in batch order."""
    store = PostgresStore(DSN, pool_max=2, schema=schema)
    store.open()
    try:
        now = datetime.now(UTC)

        def event(key: str) -> Event:
            return Event(uuid.uuid4().hex, "t", "go", key, {"key": key}, now, now + timedelta(hours=1))

        store.commit([Change(waits=(Wait("e1", "s", "t", "go", "k1"),))])
        first, second, third, fourth = event("k1"), event("k2"), event("k1"), event("k3")
        results = store.commit([Change(publish=e, retain_cap=10) for e in (first, second, third, fourth)])
        # the first takes e1's wait; the third, whose lookup went out with it, finds nobody waiting
        assert [(r.delivered, r.retained) for r in results] == [(1, False), (0, True), (0, True), (0, True)]
        assert [command[1] for r in results for command in r.commands] == ["e1"]
        assert [e.id for e in store.retained_events(now)] == [second.id, third.id, fourth.id]
        assert [body["event"]["id"] for _, _, body in store.ledger.pending_commands("e1")] == [first.id]

        with pytest.raises(LimitExceeded):  # the cap counts what the same batch retained before
            store.commit([Change(publish=event(f"x{i}"), retain_cap=4) for i in range(2)])
        assert len(store.retained_events(now)) == 3  # the batch rolled back whole
    finally:
        store.close()
