"""Commands, events and wait rows with several runtimes on one PostgreSQL database: events
published back to back each reach their own waiter, an event a step refuses is kept, a
command is applied once (also when two deliveries overlap), every command is resolved (also
one for an execution that has finished), a parent whose child's owner does not answer goes
on, and a stale process's crash report changes nothing of the new owner's execution."""

from __future__ import annotations

import json
import logging
import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
import trio
from psycopg import sql

from gateway import Config, GatewayMetrics, create_app
from runtime.core.messages import ChildFinished, Command, DeliverEvent, Pause, Resume, command_row
from runtime.model import Event
from runtime.shell.execution import ExecutionActor
from tests.conftest import DSN
from tests.test_cluster import APPROVAL, WAIT, node, until

pytestmark = [pytest.mark.postgres]

TWO_WAITS = {"id": "two", "steps": [
    {"id": "a", "type": "wait-for-event", "config": {"eventType": "go", "correlationKey": "k", "timeoutMs": 8000}},
    {"id": "b", "type": "wait-for-event", "config": {"eventType": "go", "correlationKey": "k", "timeoutMs": 8000}}]}
CHILD = {"id": "child", "steps": [{"id": "ok", "type": "human-approval", "config": {"approvers": ["boss"]}}]}
PARENT = {"id": "parent", "steps": [{"id": "run", "type": "run-runbook", "config": {"runbookId": "child"}}]}


def rows(schema: str, query: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        return conn.execute(query, args).fetchall()


def queue(schema: str, execution_id: str, command: Command) -> str:
    """A command row as a process that does not own the execution writes it (not announced)."""
    command_id = uuid.uuid4().hex
    kind, body = command_row(command)
    rows(schema, "INSERT INTO commands (id, execution_id, kind, body, origin) VALUES (%s, %s, %s, %s, 'x') "
         "RETURNING id", command_id, execution_id, kind, json.dumps(body))
    return command_id


def event(tenant_id: str, payload: Any) -> Event:
    now = datetime.now(UTC)
    return Event(uuid.uuid4().hex, tenant_id, "go", "k", payload, now, now + timedelta(hours=1))


async def settled(check: Any, within_s: float = 5) -> None:
    with trio.fail_after(within_s):
        while not check():  # noqa: ASYNC110 (other processes' commits: nothing here to wait on)
            await trio.sleep(0.02)


class Stalled:
    """A process's ledger whose reads of queued commands wait (in their thread) until released:
    the deliveries of that process are held back, as when it is slow."""

    def __init__(self, real: Any, stall: int | None = None) -> None:
        self.real, self.stall, self.reads, self.release = real, stall, [], threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def pending_commands(self, execution_id: str) -> Any:
        found = self.real.pending_commands(execution_id)
        self.reads.append(execution_id)
        if self.stall is None or len(self.reads) == self.stall:
            self.release.wait(10)
        return found


async def test_two_events_published_back_to_back_through_two_processes_reach_both_waits(schema: str) -> None:
    async with node(schema, "a") as a, node(schema, "b") as b, node(schema, "c") as c:
        await a.register_runbook(TWO_WAITS)
        execution = await a.start("two")
        await until(a, execution.id, lambda e: e.steps["a"].status == "waiting")
        assert a.cluster is not None
        a.cluster.store = held = Stalled(a.cluster.store)  # type: ignore[assignment]
        first = await b.publish_event("go", "k", {"n": 1})
        second = await c.publish_event("go", "k", {"n": 2})  # before a has taken the first
        held.release.set()
        # the first took a's wait: the second finds no waiter (b waits only once a has its event)
        assert (first.delivered, first.retained, second.delivered, second.retained) == (1, False, 0, True)
        final = await until(a, execution.id, lambda e: e.status.finished)
        assert final.status == "completed"
        assert [final.steps[s].output["payload"] for s in "ab"] == [{"n": 1}, {"n": 2}]
        assert rows(schema, "SELECT count(*) FROM waits") == [(0,)]


async def test_an_event_a_step_refuses_goes_to_the_next_waiter(schema: str) -> None:
    async with node(schema, "a") as a, node(schema, "b") as b:
        await a.register_runbook(TWO_WAITS)
        execution = await a.start("two")
        await until(a, execution.id, lambda e: e.steps["a"].status == "waiting")
        # an event handed to step b, which does not wait (not yet, or no longer): b refuses it,
        # and it is offered again, as if just published: step a takes it
        await b.cluster.send(execution.id, DeliverEvent("b", event(execution.tenant_id, {"n": 7})))  # type: ignore[union-attr]
        await until(a, execution.id, lambda e: e.steps["a"].status == "succeeded")
        assert (await b.publish_event("go", "k", {"n": 1})).delivered + len(rows(schema, "SELECT 1 FROM events")) == 1
        final = await until(a, execution.id, lambda e: e.status.finished)
        assert [final.steps[s].output["payload"] for s in "ab"] == [{"n": 7}, {"n": 1}]
        outcomes = rows(schema, "SELECT outcome->>'value' FROM commands WHERE kind = 'DeliverEvent' ORDER BY seq")
        assert outcomes[:2] == [("false",), ("true",)]


async def test_a_command_read_by_two_deliveries_that_overlap_is_applied_once(schema: str) -> None:
    async with node(schema, "a") as a:
        await a.register_runbook(APPROVAL)
        execution = await a.start("gate")
        await until(a, execution.id, lambda e: e.status == "awaiting_approval")
        cluster = a.cluster
        assert cluster is not None
        for command in (Pause("ops", "hold"), Resume("ops", None)):
            queue(schema, execution.id, command)
        # the first delivery reads the rows, then stalls until the second has applied them
        cluster.store = held = Stalled(cluster.store, stall=1)  # type: ignore[assignment]
        async with trio.open_nursery() as both:
            both.start_soon(cluster.deliver, execution.id)
            await settled(lambda: held.reads)
            await cluster.deliver(execution.id)
            await settled(lambda: rows(schema, "SELECT count(*) FROM commands WHERE applied_at IS NULL") == [(0,)]
                          and not cluster._delivered and not a.directory.live)  # applied, announced, parked
            held.release.set()
        await settled(lambda: not cluster._delivered and not a.directory.live)
        actions = [entry.action for entry in await a.audit(execution.id)]
        assert actions.count("execution.pause") == 1 and actions.count("execution.resume") == 1
        assert (await a.fetch(execution.id)).status == "awaiting_approval"


async def test_cancelling_a_parent_whose_child_runs_on_a_process_that_does_not_answer(schema: str) -> None:
    async with node(schema, "a", forward_wait_ms=200) as a:
        await a.register_runbook(CHILD)
        await a.register_runbook(PARENT)
        parent = await a.start("parent")
        running = await until(a, parent.id, lambda e: e.steps["run"].child_execution_id is not None)
        child_id = running.steps["run"].child_execution_id
        await settled(lambda: rows(schema, "SELECT status FROM executions WHERE id = %s", child_id)
                      == [("awaiting_approval",)])
        child = await a.fetch(child_id)
        ledger = a.store.ledger  # type: ignore[attr-defined]
        await trio.to_thread.run_sync(ledger.register_instance, "silent", "silent@x", 60.0)  # alive, never answers
        assert await trio.to_thread.run_sync(ledger.claim, child_id, "silent@x", child.epoch) is not None
        a.directory.stop(child_id)
        assert (await a.cancel(parent.id, reason="wrong change")).status == "cancelled"
        await settled(lambda: rows(schema, "SELECT count(*) FROM commands WHERE kind = 'Cancel'") == [(1,)])
        await settled(lambda: not a.cluster._outcomes)  # type: ignore[union-attr]  # the owner did not answer
        other = await a.start("child")  # this runtime still runs
        await until(a, other.id, lambda e: e.status == "awaiting_approval")
        await trio.to_thread.run_sync(ledger.stop_instance, "silent@x")  # its executions are released
        assert (await until(a, child_id, lambda e: e.status.finished)).status == "cancelled"  # the queued cancel


async def test_commands_for_an_execution_that_has_finished_are_resolved(schema: str) -> None:
    async with node(schema, "a") as a, node(schema, "b") as b:
        await a.register_runbook(APPROVAL)
        execution = await a.start("gate")
        await until(a, execution.id, lambda e: e.status == "awaiting_approval")
        await a.cancel(execution.id, reason="done")
        # a control and an event that raced the end: queued after it finished
        late = queue(schema, execution.id, Pause("ops", "late"))
        stray = queue(schema, execution.id, DeliverEvent("ok", event(execution.tenant_id, {"n": 1})))
        queue(schema, execution.id, ChildFinished("ok", "child-1", "completed"))  # a child's end, after the parent's
        await settled(lambda: rows(schema, "SELECT count(*) FROM commands WHERE applied_at IS NULL") == [(0,)])
        status = await b.command_status(execution.id, late)
        assert status.status == "refused" and status.error is not None
        assert status.error[0] == "Conflict" and "is cancelled" in status.error[1]
        taken = await a.command_status(execution.id, stray)
        assert (taken.status, taken.value) == ("applied", False)  # no step took the event
        client = create_app(b, Config.from_env({}), metrics=GatewayMetrics()).test_client()
        answer = await client.get(f"/api/v1/executions/{execution.id}/commands/{late}")
        assert answer.status_code == 200
        assert (await answer.get_json())["error"] == {"class": "Conflict", "message": status.error[1]}
        assert (await client.get(f"/api/v1/executions/{execution.id}/commands/nope")).status_code == 404
        assert rows(schema, "SELECT count(*) FROM events") == [(1,)]  # the event nobody took: retained


async def test_a_stale_process_failing_an_execution_after_crashes_changes_nothing(schema: str,
                                                                                caplog: pytest.LogCaptureFixture) -> None:
    async with node(schema, "a") as a, node(schema, "b") as b:
        await a.register_runbook(APPROVAL)
        execution = await a.start("gate")
        current = await until(a, execution.id, lambda e: e.status == "awaiting_approval")
        assert await trio.to_thread.run_sync(b.store.ledger.claim, execution.id, b.cluster.owner,  # type: ignore[attr-defined,union-attr]
                                             current.epoch) is not None
        b.directory.start(execution.id)
        with caplog.at_level(logging.WARNING):  # a's actor for it keeps crashing and is given up
            await a.directory._crashed(ExecutionActor(a.directory.host, execution.id, current), RuntimeError("boom"))  # type: ignore[arg-type]
        assert rows(schema, "SELECT status FROM executions WHERE id = %s", execution.id) == [("awaiting_approval",)]
        await b.submit_approval(execution.id, "ok", approver="boss", decision="approve")
        assert (await until(b, execution.id, lambda e: e.status.finished)).status == "completed"


async def test_an_execution_failed_after_crashes_leaves_no_wait_behind(schema: str) -> None:
    async with node(schema, "a") as a:
        await a.register_runbook(WAIT)
        execution = await a.start("wait", {"key": "k1"})
        current = await until(a, execution.id, lambda e: e.steps["ev"].status == "waiting")
        await a.directory._crashed(ExecutionActor(a.directory.host, execution.id, current), RuntimeError("boom"))  # type: ignore[arg-type]
        assert rows(schema, "SELECT status FROM executions WHERE id = %s", execution.id) == [("failed",)]
        assert rows(schema, "SELECT count(*) FROM waits") == [(0,)]
        result = await a.publish_event("go", "k1", {"n": 1})
        assert (result.delivered, result.retained) == (0, True)  # not counted for an execution that ended


async def test_a_child_whose_parent_ended_before_its_cancel_was_committed_is_cancelled_by_its_owner(
        schema: str) -> None:
    from tests.test_run_runbook import drop_first_child_cancel, started_child
    child = {"id": "child", "steps": [{"id": "hold", "type": "human-approval", "config": {"approvers": ["nobody"]}}]}
    parent = {"id": "parent", "steps": [{"id": "sub", "type": "run-runbook", "config": {"runbookId": "child"}}]}
    async with node(schema, "a") as a:
        await a.register_runbook(child)
        await a.register_runbook(parent)
        execution = await a.start("parent")
        child_id = await started_child(a, execution.id)
        await until(a, child_id, lambda e: e.status == "awaiting_approval")
        drop_first_child_cancel(a)  # (the process stopped between the parent's commit and the child's)
        await a.cancel(execution.id, reason="not today")
        ended = await until(a, child_id, lambda e: e.status.finished)  # within a third of the lease
        assert ended.status == "cancelled" and ended.error.message == f"parent execution {execution.id} ended"


async def test_a_command_whose_announcement_was_lost_is_delivered_by_its_owner_within_a_bound(schema: str) -> None:
    async with node(schema, "a") as a:
        await a.register_runbook(APPROVAL)
        execution = await a.start("gate")
        await until(a, execution.id, lambda e: e.status == "awaiting_approval")
        command_id = queue(schema, execution.id, Pause("ops", "held up"))  # written, its announcement lost
        paused = await until(a, execution.id, lambda e: e.status == "paused", within_s=10)
        assert paused.status == "paused"
        assert (await a.command_status(execution.id, command_id)).status == "applied"
