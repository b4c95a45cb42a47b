"""Sinks: the lifecycle of an execution reaches a Redis stream and a NATS subject in commit
order, each event with its key (execution id and version), after its change is committed."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import trio

from runtime import Runtime, open_runtime
from runtime.shell.settings import Settings
from runtime.sources.asyncio_thread import shared_loop
from runtime.sources.config import parse_sources
from runtime.sources.manager import open_sources
from tests.bus_helpers import REDIS_URL, jetstream, nats_available, redis_available

pytestmark = pytest.mark.slow
FLOW = {"id": "flow", "steps": [
    {"id": "ask", "type": "human-approval", "config": {"approvers": ["boss"]}},
    {"id": "ev", "type": "wait-for-event", "config": {"eventType": "go", "correlationKey": "k"}, "dependsOn": ["ask"]}]}
EXPECTED = [("execution.started", None), ("step.awaiting_approval", "ask"), ("step.finished", "ask"),
            ("step.finished", "ev"), ("execution.finished", None)]


async def run_flow(rt: Runtime) -> str:
    await rt.register_runbook(FLOW)
    execution = await rt.start("flow", {})
    with trio.fail_after(5):
        while (await rt.fetch(execution.id)).steps["ask"].status.value != "awaiting_approval":  # noqa: ASYNC110 (polls another process or server)
            await trio.sleep(0.01)
    await rt.submit_approval(execution.id, "ask", approver="boss", decision="approve")
    await rt.publish_event("go", "k", {"n": 1})
    with trio.fail_after(5):
        await rt.wait(execution.id)
    return execution.id


def lifecycle(events: list[dict[str, Any]], execution_id: str) -> list[tuple[str, Any]]:
    mine = [e for e in events if e["executionId"] == execution_id]
    assert len({e["key"] for e in mine}) == len(mine)  # one key per event
    assert [e["version"] for e in mine] == sorted(e["version"] for e in mine)
    return [(e["kind"], e.get("stepId")) for e in mine]


async def test_a_redis_sink_receives_the_lifecycle_of_an_execution_in_order() -> None:
    if not redis_available():
        pytest.skip("no Redis on 127.0.0.1:6379")
    import coredis

    stream = f"sink-{uuid.uuid4().hex[:8]}"
    config = parse_sources({"sinks": [{"id": "out", "kind": "redis-stream", "url": REDIS_URL, "stream": stream}]})
    async with open_runtime("memory", settings=Settings(lifecycle_outbox=True)) as rt, \
            open_sources(rt, None, config=config), coredis.Redis.from_url(REDIS_URL, decode_responses=True) as redis:
        execution_id = await run_flow(rt)
        with trio.fail_after(10):
            while len(entries := await redis.xrange(stream)) < len(EXPECTED):  # noqa: ASYNC110 (polls another process or server)
                await trio.sleep(0.05)
        events = [json.loads(entry.field_values["event"]) for entry in entries]
        assert lifecycle(events, execution_id) == EXPECTED
        assert rt.store.lifecycle_after("", 0, 10) == []  # published: the outbox is empty
        await redis.delete([stream])


async def test_a_nats_sink_receives_the_lifecycle_with_its_keys_as_message_ids() -> None:
    if not nats_available():
        pytest.skip("no NATS on 127.0.0.1:4222")
    async with jetstream() as js:
        config = parse_sources({"sinks": [{"id": "out", "kind": "nats", "url": js.url,
                                           "subject": f"{js.subject}.lifecycle"}]})
        async with open_runtime("memory", settings=Settings(lifecycle_outbox=True)) as rt, \
                open_sources(rt, None, config=config):
            execution_id = await run_flow(rt)
            messages = await read_stream(js, len(EXPECTED))
        events = [json.loads(m.data) for m in messages]
        assert lifecycle(events, execution_id) == EXPECTED
        assert [m.headers["Nats-Msg-Id"] for m in messages] == [e["key"] for e in events]


async def read_stream(js: Any, count: int) -> list[Any]:
    sub = await shared_loop().call(js._nc.jetstream().pull_subscribe(f"{js.subject}.>", durable="reader",
                                                                     stream=js.stream))
    found: list[Any] = []
    with trio.fail_after(10):
        while len(found) < count:
            try:
                found += await shared_loop().call(sub.fetch(batch=count - len(found), timeout=0.5))
            except Exception:  # (a fetch that found nothing yet)
                await trio.sleep(0.05)
    return found
