"""At-least-once in, exactly-once effect, with real processes: ``runbooks serve`` killed (-9)
after a bus message's event is committed and before its ack reaches the bus.

The stop is made exact by a TCP proxy between the process and the bus: once the bus has
sent the message (its bytes carry a marker), nothing the process sends reaches the bus any
more, so its ack is lost however fast it was sent; the test waits until the step released
by the message is committed, then kills the process. The message is then delivered again
(to the same process restarted: its own pending entries, or after JetStream's ack wait; or
to the other process of a pair, which claims a dead consumer's entries), its receipt is
found, and it is acknowledged without a second event.
"""

from __future__ import annotations

import json
import pathlib
import uuid
from typing import Any

import httpx
import pytest
import trio

from tests.bus_helpers import REDIS_URL, jetstream, nats_available, redis_available
from tests.cluster_nodes import Node, nodes
from tests.sources_helpers import WAIT
from tests.tcp_proxy import TcpProxy, tcp_proxy

pytestmark = pytest.mark.slow
USER = {"X-User-Id": "ops"}
EVENT = {"type": "${body.type}", "key": "${body.key}"}


def sources_file(directory: pathlib.Path, source: dict[str, Any]) -> str:
    path = directory / f"sources-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(json.dumps({"sources": [{"id": "bus", "event": EVENT, **source}]}))
    return str(path)


async def waiting_execution(client: httpx.AsyncClient, node: Node, key: str) -> str:
    answer = await client.post(f"{node.url}/api/v1/executions", headers=USER, params={"force": "true"},
                               json={"runbookId": "wait", "input": {"type": "go", "key": key}})
    assert answer.status_code == 201, answer.text
    execution_id = str(answer.json()["id"])
    await until(client, node, execution_id, lambda e: e["steps"]["ev"]["status"] == "waiting")
    return execution_id


async def until(client: httpx.AsyncClient, node: Node, execution_id: str, predicate: Any,
                within_s: float = 20) -> dict[str, Any]:
    with trio.fail_after(within_s):
        while True:
            answer = await client.get(f"{node.url}/api/v1/executions/{execution_id}", headers=USER)
            if answer.status_code == 200 and predicate(found := answer.json()):
                return dict(found)
            await trio.sleep(0.05)


async def source_counters(client: httpx.AsyncClient, node: Node) -> dict[str, int]:
    items = (await client.get(f"{node.url}/api/v1/sources", headers=USER)).json()["items"]
    return dict(items[0]["counters"])


async def killed_after_commit(client: httpx.AsyncClient, node: Node, proxy: TcpProxy, execution_id: str,
                              send: Any, marker: str) -> None:
    """Send the message, wait until its event is committed, kill the process before its ack."""
    proxy.hold_replies_after(marker.encode())
    await send()
    done = await until(client, node, execution_id, lambda e: e["status"] == "completed")
    assert done["steps"]["ev"]["output"]["payload"]["marker"] == marker
    assert proxy.holding  # the ack (sent or not) has not reached the bus
    node.kill()
    await node.process.wait()
    proxy.refuse()  # what the dead process sent is dropped with its connections
    proxy.forward()


async def released_once(client: httpx.AsyncClient, node: Node, execution_id: str, key: str) -> None:
    """The execution completed with one event, and the event was not kept for anyone else."""
    execution = await until(client, node, execution_id, lambda e: e["status"] == "completed")
    assert execution["steps"]["ev"]["attempts"] == 1
    later = await waiting_execution(client, node, key)  # a retained copy would release it at once
    await trio.sleep(0.3)
    assert (await until(client, node, later, lambda e: True))["steps"]["ev"]["status"] == "waiting"


@pytest.fixture
def sqlite_nodes(tmp_path: pathlib.Path) -> Any:
    def make(sources: str) -> Any:
        return nodes("unused", "http://127.0.0.1:9", tmp_path, STORAGE_BACKEND="sqlite",
                     SQLITE_PATH=str(tmp_path / "runbooks.db"), RUNBOOKS_SOURCES_FILE=sources)
    return make


async def test_redis_kill_9_between_commit_and_ack_releases_the_step_once(tmp_path: pathlib.Path,
                                                                         sqlite_nodes: Any) -> None:
    if not redis_available():
        pytest.skip("no Redis on 127.0.0.1:6379")
    import coredis

    stream = f"crash-{uuid.uuid4().hex[:8]}"
    async with tcp_proxy("127.0.0.1", 6379) as proxy, httpx.AsyncClient(timeout=10) as client, \
            coredis.Redis.from_url(REDIS_URL, decode_responses=True) as redis:
        path = sources_file(tmp_path, {"kind": "redis-stream", "url": f"redis://127.0.0.1:{proxy.port}/0",
                                       "stream": stream, "group": "runbooks"})
        async with sqlite_nodes(path) as group:
            node = await group.start("one")
            await client.post(f"{node.url}/api/v1/runbooks", json=WAIT, headers=USER)
            execution_id = await waiting_execution(client, node, "k1")

            async def send() -> None:
                await redis.xadd(stream, {"body": json.dumps({"type": "go", "key": "k1", "marker": "m-redis-1"})})

            await killed_after_commit(client, node, proxy, execution_id, send, "m-redis-1")
            assert (await redis.xpending(stream, "runbooks")).pending == 1  # committed, never acknowledged
            node = await group.start("one", node.port)  # the same consumer reads its own pending entry
            with trio.fail_after(20):
                while (await redis.xpending(stream, "runbooks")).pending:  # noqa: ASYNC110 (polls another process or server)
                    await trio.sleep(0.05)
            assert await source_counters(client, node) == {"received": 1, "refused": 0, "duplicate": 1}
            await released_once(client, node, execution_id, "k1")
        await redis.delete([stream])


async def test_jetstream_kill_9_between_commit_and_ack_releases_the_step_once(tmp_path: pathlib.Path,
                                                                             sqlite_nodes: Any) -> None:
    if not nats_available():
        pytest.skip("no NATS on 127.0.0.1:4222")
    async with jetstream() as js, tcp_proxy("127.0.0.1", 4222) as proxy, httpx.AsyncClient(timeout=10) as client:
        path = sources_file(tmp_path, {"kind": "nats-jetstream", "url": f"nats://127.0.0.1:{proxy.port}",
                                       "stream": js.stream, "subject": f"{js.subject}.>", "durable": "runbooks",
                                       "ackWaitMs": 1000})
        async with sqlite_nodes(path) as group:
            node = await group.start("one")
            await client.post(f"{node.url}/api/v1/runbooks", json=WAIT, headers=USER)
            execution_id = await waiting_execution(client, node, "k1")

            async def send() -> None:
                await js.publish(f"{js.subject}.a", json.dumps({"type": "go", "key": "k1",
                                                                "marker": "m-nats-1"}).encode())

            await killed_after_commit(client, node, proxy, execution_id, send, "m-nats-1")
            assert await js.pending("runbooks") == 1
            node = await group.start("one", node.port)  # redelivered once the ack wait is over
            with trio.fail_after(20):
                while await js.pending("runbooks"):  # noqa: ASYNC110 (polls another process or server)
                    await trio.sleep(0.05)
            assert await source_counters(client, node) == {"received": 1, "refused": 0, "duplicate": 1}
            await released_once(client, node, execution_id, "k1")


@pytest.mark.postgres
async def test_two_processes_share_a_redis_group_and_one_killed_after_commit_is_taken_over(
        schema: str, tmp_path: pathlib.Path) -> None:
    if not redis_available():
        pytest.skip("no Redis on 127.0.0.1:6379")
    import coredis

    stream = f"pair-{uuid.uuid4().hex[:8]}"
    async with tcp_proxy("127.0.0.1", 6379) as proxy, httpx.AsyncClient(timeout=10) as client, \
            coredis.Redis.from_url(REDIS_URL, decode_responses=True) as redis:
        direct = sources_file(tmp_path, {"kind": "redis-stream", "url": REDIS_URL, "stream": stream,
                                         "group": "runbooks", "claimIdleMs": 1000})
        proxied = sources_file(tmp_path, {"kind": "redis-stream", "url": f"redis://127.0.0.1:{proxy.port}/0",
                                          "stream": stream, "group": "runbooks", "claimIdleMs": 1000})
        async with nodes(schema, "http://127.0.0.1:9", tmp_path, LEASE_TTL_MS=1500) as group:
            group.settings["RUNBOOKS_SOURCES_FILE"] = proxied
            a = await group.start("a")
            await client.post(f"{a.url}/api/v1/runbooks", json=WAIT, headers=USER)
            # b starts consuming only after a has read the message below
            held = await waiting_execution(client, a, "held")

            async def send() -> None:
                await redis.xadd(stream, {"body": json.dumps({"type": "go", "key": "held", "marker": "m-pair"})})

            await killed_after_commit(client, a, proxy, held, send, "m-pair")
            group.settings["RUNBOOKS_SOURCES_FILE"] = direct
            b = await group.start("b")
            # b claims the dead consumer's entry once it has been idle claimIdleMs: a duplicate, acknowledged
            with trio.fail_after(20):
                while (await redis.xpending(stream, "runbooks")).pending:  # noqa: ASYNC110 (polls another process or server)
                    await trio.sleep(0.05)
            assert (await source_counters(client, b))["duplicate"] == 1
            # a is back: both read the group now, and each new message becomes one event
            a = await group.start("a", a.port)
            keys = [f"k{n}" for n in range(12)]
            waiting = [await waiting_execution(client, (a, b)[n % 2], key) for n, key in enumerate(keys)]
            for key in keys:
                await redis.xadd(stream, {"body": json.dumps({"type": "go", "key": key, "marker": key})})
            for execution_id, key in zip(waiting, keys, strict=True):
                await released_once(client, b, execution_id, key)
            await released_once(client, a, held, "held")
            counted = [await source_counters(client, node) for node in (a, b)]
            assert sum(c["received"] for c in counted) == len(keys) + 1  # (b's one: the claimed entry)
            assert sum(c["duplicate"] for c in counted) == 1
        await redis.delete([stream])
