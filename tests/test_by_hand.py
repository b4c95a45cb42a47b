"""Taking over by hand: a failed, waiting or awaiting-approval step completed or skipped by a
person, and an execution forked from a step; on every store and through a process that does
not own the execution."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from runtime import Runtime, open_runtime
from runtime.model.errors import Conflict, NotFound, ValidationError
from runtime.shell.settings import Settings
from runtime.store.postgres import PostgresStore
from tests.conftest import Recorder

DSN = "postgresql://postgres@127.0.0.1:5432/test"

FLOW = {"id": "flow", "steps": [
    {"id": "restart", "type": "echo", "config": {"fail": "pod stuck"}},
    {"id": "check", "type": "echo", "dependsOn": ["restart"], "config": {"value": {"seen": "${restart.pod}"}}},
    {"id": "notify", "type": "echo", "dependsOn": ["check"]},
]}
WAITS = {"id": "waits", "steps": [
    {"id": "ticket", "type": "wait-for-event", "config": {"eventType": "closed", "correlationKey": "T-1"}},
    {"id": "after", "type": "echo", "dependsOn": ["ticket"], "config": {"value": "${ticket}"}},
]}
GATE = {"id": "gate", "steps": [
    {"id": "ok", "type": "human-approval", "config": {"approvers": ["boss"]}},
    {"id": "deploy", "type": "echo", "dependsOn": ["ok"]},
]}


@asynccontextmanager
async def engine(store: str, instance: str = "one") -> AsyncIterator[Runtime]:
    """A runtime on ``store``; ``pg:SCHEMA`` is PostgreSQL in that schema."""
    where: str | PostgresStore = PostgresStore(DSN, pool_max=3, schema=store[3:]) if store.startswith("pg:") else store
    settings = Settings(default_max_retries=0, lease_ttl_ms=900, instance_id=instance, forward_wait_ms=3000)
    async with open_runtime(where, settings=settings) as rt:
        rt.register_executor("echo", Recorder().echo)
        for doc in (FLOW, WAITS, GATE):
            await rt.register_runbook(doc)
        yield rt


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> str:
    if request.param == "memory":
        return "memory"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'by-hand.db'}"
    return "pg:" + request.getfixturevalue("schema")


async def until(rt: Runtime, execution_id: str, step_id: str, status: str) -> None:
    with trio.fail_after(5):
        async for execution in rt.watch(execution_id):
            if execution.steps[step_id].status == status:
                return


async def test_a_failed_step_completed_by_hand_lets_the_execution_finish(store: str) -> None:
    async with engine(store) as rt:
        started = await rt.start("flow", context={"userId": "ana", "legalBasis": "contract"})
        failed = await rt.wait(started.id)
        assert failed.status == "failed"
        answer = await rt.complete_step(started.id, "restart", output={"pod": "web-1"}, actor="ops",
                                        justification="restarted the pod manually", evidence={"ticket": "T-9"})
        assert answer.steps["restart"].status == "succeeded" and answer.status == "running"
        final = await rt.wait(started.id)
        assert final.status == "completed"
        assert final.steps["check"].output == {"seen": "web-1"}
        audit = [(e.action, e.actor, e.reason) for e in await rt.audit(started.id) if "by_hand" in e.action]
        assert audit == [("step.completed_by_hand", "ops", "restarted the pod manually")]
        evidence = [e for e in await rt.evidence(started.id) if e.kind == "completed_by_hand"]
        assert evidence[0].data["evidence"] == {"ticket": "T-9"} and evidence[0].data["output"] == {"pod": "web-1"}
        [item] = await rt.explain(started.id, step_id="restart")
        assert item.reasons[0] == "completed by hand by ops: restarted the pod manually (it was failed)"


async def test_a_waiting_step_skipped_by_hand_skips_what_only_depends_on_it(store: str) -> None:
    async with engine(store) as rt:
        started = await rt.start("waits")
        await until(rt, started.id, "ticket", "waiting")
        answer = await rt.skip_step(started.id, "ticket", actor="ops", justification="closed in the old tool")
        assert answer.steps["ticket"].status == "skipped"
        final = await rt.wait(started.id)
        assert final.status == "completed" and final.steps["after"].status == "skipped"
        assert (await rt.publish_event("closed", "T-1")).delivered == 0  # it no longer waits
        assert [e.action for e in await rt.audit(started.id)].count("step.skipped_by_hand") == 1


async def test_an_approval_completed_by_hand_goes_on(store: str) -> None:
    async with engine(store) as rt:
        started = await rt.start("gate")
        await until(rt, started.id, "ok", "awaiting_approval")
        answer = await rt.complete_step(started.id, "ok", output={"approved": True}, actor="admin",
                                        justification="approved on the phone by the boss")
        assert answer.status == "running" and answer.steps["deploy"].status in ("running", "succeeded")
        final = await rt.wait(started.id)
        assert final.status == "completed" and final.steps["deploy"].status == "succeeded"


async def test_refusals_change_nothing(rt: Runtime) -> None:
    await rt.register_runbook(FLOW)
    await rt.register_runbook({**GATE, "id": "strict", "requireLegalBasis": True})
    started = await rt.start("flow")
    await rt.wait(started.id)
    with pytest.raises(Conflict, match="'check' is pending"):
        await rt.skip_step(started.id, "check", justification="no")
    with pytest.raises(NotFound):
        await rt.skip_step(started.id, "nope", justification="no")
    with pytest.raises(ValidationError, match="justification"):
        await rt.complete_step(started.id, "restart", output=1, justification=" ")
    strict = await rt.start("strict", context={"legalBasis": "contract"})
    with pytest.raises(ValidationError, match="legalBasis"):
        await rt.skip_step(strict.id, "ok", justification="why not")
    assert (await rt.fetch(started.id)).status == "failed"
    completed = await rt.start("flow", input={"n": 2})
    await rt.wait(completed.id)
    await rt.complete_step(completed.id, "restart", output={}, justification="done")
    await rt.wait(completed.id)
    with pytest.raises(Conflict):
        await rt.complete_step(completed.id, "restart", output={}, justification="again")


FIXED = {"id": "flow", "steps": [
    {"id": "restart", "type": "echo", "config": {"value": {"pod": "web-1"}}},
    {"id": "check", "type": "echo", "dependsOn": ["restart"], "config": {"value": {"seen": "${restart.pod}"}}},
    {"id": "notify", "type": "echo", "dependsOn": ["check"], "config": {"fail": "still broken"}},
]}


async def test_a_fork_keeps_the_outputs_before_its_step_and_runs_the_rest(store: str) -> None:
    async with engine(store) as rt:
        first = await rt.start("flow", input={"n": 1}, context={"legalBasis": "contract"})
        await rt.wait(first.id)
        await rt.complete_step(first.id, "restart", output={"pod": "web-9"}, justification="by hand", actor="ops")
        await rt.wait(first.id)
        fixed = await rt.register_runbook(FIXED)  # version 2: notify fails now
        fork = await rt.fork(first.id, "check", version=fixed.version, actor="ops", reason="after the fix")
        assert fork.forked_from == {"executionId": first.id, "stepId": "check"}
        assert fork.runbook_version == 2 and fork.input == {"n": 1}
        assert fork.steps["restart"].status == "succeeded" and fork.steps["restart"].output == {"pod": "web-9"}
        final = await rt.wait(fork.id)
        assert final.steps["check"].output == {"seen": "web-9"}  # from the recorded output, not re-run
        assert final.status == "failed" and final.steps["notify"].error.message == "still broken"
        back = [e for e in await rt.audit(first.id) if e.action == "execution.forked"]
        assert [(e.actor, e.step_id, e.data["forkId"]) for e in back] == [("ops", "check", fork.id)]
        started = [e for e in await rt.audit(fork.id) if e.action == "execution.started"]
        assert started[0].data["forkedFrom"] == {"executionId": first.id, "stepId": "check"}
        items = {item.step_id: item for item in await rt.explain(fork.id)}
        assert f"a fork of execution {first.id} from step 'check': the steps before it keep that execution's " \
               "outputs" in items[None].reasons
        assert items["restart"].reasons == (f"succeeded in execution {first.id}, kept by this fork with its output",)
        with pytest.raises(NotFound, match="no step 'nope'"):
            await rt.fork(first.id, "nope")
        again = await rt.fork(first.id, "restart", input={"n": 2})
        assert again.input == {"n": 2} and again.runbook_version == 1
        assert all(state.status == "pending" for state in again.steps.values())


@pytest.mark.postgres
async def test_through_a_process_that_does_not_own_the_execution(schema: str) -> None:
    async with engine("pg:" + schema, "a") as a, engine("pg:" + schema, "b") as b:
        waiting = await a.start("waits")
        await until(a, waiting.id, "ticket", "waiting")
        assert a.owns(waiting.id) and not b.owns(waiting.id)
        answer = await b.complete_step(waiting.id, "ticket", output={"by": "hand"}, actor="ops",
                                       justification="the ticket was closed by phone")
        assert answer.steps["ticket"].status == "succeeded"
        assert (await a.wait(waiting.id)).steps["after"].output == {"by": "hand"}
        with pytest.raises(Conflict, match="'ticket' is succeeded"):
            await b.skip_step(waiting.id, "ticket", justification="again")
        failed = await a.start("flow")
        assert (await a.wait(failed.id)).status == "failed"
        await b.skip_step(failed.id, "restart", actor="ops", justification="not needed after all")
        final = await b.wait(failed.id)
        assert final.status == "completed" and final.steps["check"].status == "skipped"  # as after a when
        fork = await a.fork(waiting.id, "after")
        assert (await a.wait(fork.id)).steps["after"].output == {"by": "hand"}
        other = await b.fork(waiting.id, "after")  # b reads the old one from the database
        assert other.forked_from == {"executionId": waiting.id, "stepId": "after"}
        assert [e.data["forkId"] for e in await b.audit(waiting.id) if e.action == "execution.forked"] == \
            [fork.id, other.id]
