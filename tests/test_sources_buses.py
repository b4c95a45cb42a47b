"""Bus sources against the real local Redis and NATS JetStream servers: a message releases a
waiting step once and is acknowledged after; a message that makes no event is refused
(acknowledged, audited); a redelivery (the same message id) has no second effect."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import pytest
import trio

from runtime import Runtime, open_runtime
from runtime.sources.config import parse_sources
from runtime.sources.manager import Sources, open_sources
from tests.bus_helpers import REDIS_URL, jetstream, nats_available, redis_available
from tests.sources_helpers import WAIT

pytestmark = pytest.mark.slow
EVENT = {"type": "${body.type}", "key": "${body.key}"}


async def started_waiting(rt: Runtime, event_type: str, key: str) -> str:
    execution = await rt.start("wait", {"type": event_type, "key": key}, force=True)
    with trio.fail_after(5):
        while (await rt.fetch(execution.id)).steps["ev"].status.value != "waiting":  # noqa: ASYNC110 (polls another process or server)
            await trio.sleep(0.01)
    return execution.id


async def until_status(sources: Sources, source_id: str, status: str) -> None:
    with trio.fail_after(10):
        while sources.status.get(source_id) != status:  # noqa: ASYNC110 (polls another process or server)
            await trio.sleep(0.02)


async def until_counted(sources: Sources, source_id: str, **expected: int) -> None:
    with trio.fail_after(10):
        while {k: sources.intake.count(source_id).as_json()[k] for k in expected} != expected:  # noqa: ASYNC110 (polls another process or server)
            await trio.sleep(0.02)


@pytest.fixture
async def redis_source() -> AsyncIterator[tuple[Runtime, Sources, str]]:
    if not redis_available():
        pytest.skip("no Redis on 127.0.0.1:6379")
    stream = f"test-{uuid.uuid4().hex[:8]}"
    config = parse_sources({"sources": [{"id": "alerts", "kind": "redis-stream", "url": REDIS_URL, "stream": stream,
                                         "group": "runbooks", "claimIdleMs": 1000, "event": EVENT}]})
    async with open_runtime("memory") as rt, open_sources(rt, None, config=config, consumer_name="t1") as sources:
        await rt.register_runbook(WAIT)
        await until_status(sources, "alerts", "running")
        yield rt, sources, stream


async def test_a_redis_entry_releases_a_waiting_step_once_and_is_acknowledged(
        redis_source: tuple[Runtime, Sources, str]) -> None:
    import coredis

    rt, sources, stream = redis_source
    execution_id = await started_waiting(rt, "alert.fired", "db-1")
    async with coredis.Redis.from_url(REDIS_URL, decode_responses=True) as redis:
        entry = await redis.xadd(stream, {"body": json.dumps({"type": "alert.fired", "key": "db-1", "n": 1})})
        await redis.xadd(stream, {"body": json.dumps({"type": "alert.fired"})})  # no key: refused
        with trio.fail_after(10):
            finished = await rt.wait(execution_id)
        assert finished.steps["ev"].output["payload"] == {"type": "alert.fired", "key": "db-1", "n": 1}
        await until_counted(sources, "alerts", received=2, refused=1)
        with trio.fail_after(10):
            while (await redis.xpending(stream, "runbooks")).pending:  # noqa: ASYNC110 (polls another process or server)
                await trio.sleep(0.05)
        audit = await rt.source_audit("default", "alerts")
        assert audit[0].data["kind"] == "unmappable"
        assert rt.store.receipt_known("alerts", str(entry))
        await redis.delete([stream])


async def test_a_jetstream_message_releases_a_waiting_step_once_even_when_sent_twice() -> None:
    if not nats_available():
        pytest.skip("no NATS on 127.0.0.1:4222")
    async with jetstream() as js:
        config = parse_sources({"sources": [{"id": "orders", "kind": "nats-jetstream", "url": js.url,
                                             "stream": js.stream, "subject": f"{js.subject}.>", "durable": "runbooks",
                                             "event": EVENT}]})
        async with open_runtime("memory") as rt, open_sources(rt, None, config=config) as sources:
            await rt.register_runbook(WAIT)
            await until_status(sources, "orders", "running")
            first = await started_waiting(rt, "order.paid", "o-1")
            body = json.dumps({"type": "order.paid", "key": "o-1"}).encode()
            # the same Nats-Msg-Id published twice past the stream's duplicate window is two
            # stream messages: the receipt makes them one event
            await js.publish(f"{js.subject}.eu", body, msg_id="order-1", bypass_window=True)
            await js.publish(f"{js.subject}.eu", body, msg_id="order-1", bypass_window=True)
            with trio.fail_after(10):
                await rt.wait(first)
            await until_counted(sources, "orders", received=2, duplicate=1)
            second = await started_waiting(rt, "order.paid", "o-1")  # nothing was retained for it
            await trio.sleep(0.2)
            assert (await rt.fetch(second)).steps["ev"].status.value == "waiting"
            with trio.fail_after(10):
                while (await js.pending("runbooks")) != 0:  # noqa: ASYNC110 (polls another process or server)
                    await trio.sleep(0.05)


async def test_consuming_pauses_while_commits_fail_and_readiness_says_why(
        redis_source: tuple[Runtime, Sources, str]) -> None:
    rt, sources, _ = redis_source
    rt.persistence.stats.healthy = False
    rt.persistence.stats.last_error = "disk full"
    await until_status(sources, "alerts", "paused: the store's commits fail (disk full)")
    assert sources.not_ready() == "sources paused while the store fails: alerts"
    rt.persistence.stats.healthy = True
    await until_status(sources, "alerts", "running")
    assert sources.not_ready() is None
