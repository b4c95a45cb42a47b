"""The embedded API given values no store can hold, and executors returning them.

On every store (memory, SQLite, PostgreSQL): a bad argument is a ValidationError naming it and
changes nothing; a refused request leaves its execution running and the runtime ready; an
executor's output JSON cannot hold fails its step with ``output_not_json``, the same way
everywhere (SQLite used to crash-loop the execution's actor, memory to "complete")."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import trio

from runtime import Runtime, Settings, StepContext, ValidationError, open_runtime
from runtime.store import PostgresStore, SqliteStore, Store
from tests.conftest import drop_schema

SURROGATE = "\ud800"


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str | Store]:
    if request.param == "memory":
        yield "memory"
    elif request.param == "sqlite":
        yield SqliteStore(tmp_path / "runbooks.db")
    else:
        dsn = request.getfixturevalue("postgres_dsn")
        schema = f"test_{uuid.uuid4().hex[:16]}"
        try:
            yield PostgresStore(dsn, pool_max=2, schema=schema, pool_min=0)
        finally:
            drop_schema(dsn, schema)


class Gate:
    def __init__(self) -> None:
        self.open = trio.Event()
        self.returns: Any = {"ok": True}

    async def hold(self, ctx: StepContext) -> Any:
        await self.open.wait()
        return {"held": True}

    async def give(self, ctx: StepContext) -> Any:
        return self.returns


async def started_and_held(runtime: Runtime) -> str:
    """Start ``held`` and return once its first step runs (and holds): nothing changes meanwhile."""
    execution = await runtime.start("held")
    with trio.fail_after(10):
        async for state in runtime.watch(execution.id):
            if state.steps["wait"].status.value == "running":
                return execution.id
    raise AssertionError("the execution ended before its step ran")


@pytest.fixture
async def rt(store: str | Store) -> AsyncIterator[tuple[Runtime, Gate]]:
    gate = Gate()
    async with open_runtime(store, settings=Settings(default_max_retries=2)) as runtime:
        runtime.register_executor("hold", gate.hold)
        runtime.register_executor("give", gate.give)
        await runtime.register_runbook({"id": "held", "steps": [
            {"id": "wait", "type": "hold"}, {"id": "after", "type": "give"}]})
        await runtime.register_runbook({"id": "gives", "steps": [{"id": "out", "type": "give"}]})
        await runtime.register_runbook({"id": "waits", "steps": [
            {"id": "ev", "type": "wait-for-event", "config": {"eventType": "e", "correlationKey": "k"}}]})
        yield runtime, gate


async def test_a_surrogate_pause_reason_three_times_leaves_the_execution_running(
        rt: tuple[Runtime, Gate]) -> None:
    runtime, gate = rt
    execution = await runtime.get(await started_and_held(runtime))
    for _ in range(3):
        with pytest.raises(ValidationError) as caught:
            await runtime.pause(execution.id, reason=f"bad {SURROGATE}")
        assert [(p.path, p.message) for p in caught.value.problems] == [
            ("reason", "cannot be encoded as UTF-8 (a lone surrogate)")]
        await runtime.ready()  # readiness untouched: nothing reached the store
    assert (await runtime.get(execution.id)).status.value == "running"
    gate.open.set()
    final = await runtime.wait(execution.id)
    assert final.status.value == "completed"
    assert [a.action for a in await runtime.audit(execution.id)].count("execution.pause") == 0
    await runtime.ready()


@pytest.mark.parametrize(("call", "path"), [
    (lambda rt, ex: rt.pause(ex, reason="nul \x00 byte"), "reason"),
    (lambda rt, ex: rt.resume(ex, reason=7), "reason"),
    (lambda rt, ex: rt.cancel(ex, reason=SURROGATE), "reason"),
    (lambda rt, ex: rt.cancel(ex, reason="why", actor=SURROGATE), "actor"),
    (lambda rt, ex: rt.retry_step(ex, "wait", reason="\x00"), "reason"),
    (lambda rt, ex: rt.replay(ex, reason=SURROGATE), "reason"),
    (lambda rt, ex: rt.submit_approval(ex, "wait", approver="a", decision="approve", comment=SURROGATE), "comment"),
    (lambda rt, ex: rt.submit_approval(ex, "wait", approver=SURROGATE, decision="approve"), "approver"),
    (lambda rt, ex: rt.fetch(SURROGATE), "execution_id"),
    (lambda rt, ex: rt.logs(ex, after=2**70), "after"),
    (lambda rt, ex: rt.logs(ex, step_id="\x00"), "step_id"),
    (lambda rt, ex: rt.list_executions(limit=10**30), "limit"),
    (lambda rt, ex: rt.list_executions(cursor=SURROGATE), "cursor"),
    (lambda rt, ex: rt.get_runbook("held", 2**40), "version"),
    (lambda rt, ex: rt.start("held", version=10**27), "version"),
    (lambda rt, ex: rt.start(SURROGATE), "runbook_id"),
    (lambda rt, ex: rt.start("held", {"a": SURROGATE}), "input.a"),
    (lambda rt, ex: rt.start("held", {"a": {1, 2}}), "input.a"),
    (lambda rt, ex: rt.start("held", {"n": float("nan")}), "input.n"),
    (lambda rt, ex: rt.start("held", {"n": 10**4000}), "input.n"),
    (lambda rt, ex: rt.start("held", {1: "x"}), "input"),
    (lambda rt, ex: rt.start("held", {}, {"legalBasis": {"law": "x"}}), "context.legalBasis"),
    (lambda rt, ex: rt.start("held", {}, {"reason": SURROGATE}), "context.reason"),
    (lambda rt, ex: rt.start("held", {}, {"tenantId": "t\x00"}), "context.tenantId"),
    (lambda rt, ex: rt.start("held", {}, {"extra": datetime.now(UTC)}), "context.extra"),
    (lambda rt, ex: rt.start("held", {}, idempotency_key=SURROGATE), "idempotency_key"),
    (lambda rt, ex: rt.publish_event(SURROGATE, "k"), "event_type"),
    (lambda rt, ex: rt.publish_event("e", "k\x00"), "correlation_key"),
    (lambda rt, ex: rt.publish_event("e", "k", {"p": SURROGATE}), "payload.p"),
    (lambda rt, ex: rt.publish_event("e", "k", tenant_id=None), "tenant_id"),
    (lambda rt, ex: rt.register_runbook({"id": "x", "steps": [{"id": "a", "type": "give"}]}, tenant_id="\x00"),
     "tenant_id"),
])
async def test_every_public_method_refuses_what_the_store_cannot_hold(
        rt: tuple[Runtime, Gate], call: Any, path: str) -> None:
    runtime, gate = rt
    execution = await runtime.get(await started_and_held(runtime))
    before = await runtime.audit(execution.id)
    with pytest.raises(ValidationError) as caught:
        await call(runtime, execution.id)
    assert path in [p.path for p in caught.value.problems]
    await runtime.ready()
    assert await runtime.audit(execution.id) == before
    gate.open.set()
    assert (await runtime.wait(execution.id)).status.value == "completed"


@pytest.mark.parametrize(("returns", "where"), [
    ({"ids": {1, 2}}, "output.ids: a set"),
    ({"at": datetime(2025, 1, 1, tzinfo=UTC)}, "output.at: a datetime"),
    ([float("inf")], "output[0]: not a finite number"),
    ({"text": "half \udc80 a pair"}, "output.text: a string that cannot be encoded"),
    ({(1, 2): "tuple key"}, "output: a key that is not a string"),
    (object(), "output: a object"),
])
async def test_an_output_json_cannot_hold_fails_the_step_on_every_store(
        rt: tuple[Runtime, Gate], returns: Any, where: str) -> None:
    runtime, gate = rt
    gate.returns = returns
    final = await runtime.wait((await runtime.start("gives")).id)
    assert final.status.value == "failed"
    state = final.steps["out"]
    assert state.status.value == "failed"
    assert state.attempts == 1  # not retried (the policy allows 2 retries)
    assert state.error is not None and state.error.code == "output_not_json"
    assert where in state.error.message
    await runtime.ready()


async def test_messages_and_log_data_an_executor_gives_are_made_storable(rt: tuple[Runtime, Gate]) -> None:
    from runtime import StepFailed

    runtime, _ = rt

    async def messy(ctx: StepContext) -> Any:
        ctx.log.info("odd \x00 log", when=datetime(2025, 1, 1), key=SURROGATE)
        raise StepFailed(f"failed with \x00 and {SURROGATE}")

    runtime.register_executor("messy", messy)
    await runtime.register_runbook({"id": "messy", "steps": [{"id": "m", "type": "messy"}]})
    final = await runtime.wait((await runtime.start("messy")).id)
    assert final.steps["m"].error is not None
    assert final.steps["m"].error.message == "failed with \ufffd and \ufffd"
    [entry] = [e for e in await runtime.logs(final.id, step_id="m") if e.message.startswith("odd")]
    assert entry.message == "odd \ufffd log"
    assert entry.data["notJson"].startswith("data.when: a datetime")
    await runtime.ready()


async def test_evidence_json_cannot_hold_fails_the_attempt(rt: tuple[Runtime, Gate]) -> None:
    runtime, _ = rt

    async def proof(ctx: StepContext) -> Any:
        ctx.add_evidence("scan", {"hosts": {"a", "b"}})
        return {}

    runtime.register_executor("proof", proof)
    await runtime.register_runbook({"id": "proof", "steps": [{"id": "p", "type": "proof"}]})
    final = await runtime.wait((await runtime.start("proof")).id)
    error = final.steps["p"].error
    assert error is not None and error.code == "evidence_not_json"
    assert "data.hosts: a set" in error.message
    assert await runtime.evidence(final.id) == []


async def test_big_integers_in_free_form_values_are_kept_exactly(rt: tuple[Runtime, Gate]) -> None:
    runtime, gate = rt
    big = {"id": 10**30, "negative": -(2**70), "float": 1e300}
    gate.returns = big
    final = await runtime.wait((await runtime.start("gives", big)).id)
    assert final.status.value == "completed"
    stored = runtime.store.get_execution(final.id)
    assert stored is not None
    assert stored.input == big and stored.output == big
