"""Several ``runbooks serve`` processes on one PostgreSQL database, tried as they are deployed:
any request on any process, a process killed or stalled at any moment, and a real HTTP
service behind the steps that counts what it is asked (per idempotency key)."""

from __future__ import annotations

import json
import pathlib
from collections import Counter
from typing import Any

import httpx
import pytest
import trio

from tests.cluster_nodes import Node, nodes
from tests.fake_service import FakeService, Response, fake_service

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

TTL_MS = 1500
LET_GO = ("stops running its executions", "owned by another process")  # a stale owner's log
USER = {"X-User-Id": "ops"}
GATE = {"id": "gate", "steps": [
    {"id": "first", "type": "call-service", "config": {"url": "/first", "method": "POST"}},
    {"id": "approve", "type": "human-approval", "config": {"approvers": ["boss"]}},
    {"id": "deploy", "type": "call-service", "config": {"url": "/deploy", "method": "POST"}}]}
SLOW = {"id": "slow", "steps": [
    {"id": "first", "type": "call-service", "config": {"url": "/first", "method": "POST"}},
    {"id": "hold", "type": "call-service", "config": {"url": "/hold", "method": "POST", "timeoutMs": 60_000}},
    {"id": "after", "type": "call-service", "config": {"url": "/after", "method": "POST"}}]}
WAIT = {"id": "wait", "steps": [
    {"id": "ev", "type": "wait-for-event", "config": {"eventType": "go", "correlationKey": "${input.key}"}}]}
FLAKY = {"id": "flaky", "steps": [
    {"id": "call", "type": "call-service", "config": {"url": "/flaky", "method": "POST"},
     "retryPolicy": {"maxRetries": 0}}]}
WORK = {"id": "work", "steps": [
    {"id": "one", "type": "call-service", "config": {"url": "/work", "method": "POST"}},
    {"id": "two", "type": "call-service", "config": {"url": "/work", "method": "POST"}}]}



async def register(client: httpx.AsyncClient, node: Node, *docs: dict[str, Any]) -> None:
    for doc in docs:
        assert (await client.post(f"{node.url}/api/v1/runbooks", json=doc, headers=USER)).status_code == 201


async def start(client: httpx.AsyncClient, node: Node, runbook: str, input: Any = None) -> str:
    answer = await client.post(f"{node.url}/api/v1/executions", json={"runbookId": runbook, "input": input or {}},
                               headers=USER, params={"force": "true"})
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


async def state(client: httpx.AsyncClient, node: Node, execution_id: str) -> dict[str, Any]:
    answer = await client.get(f"{node.url}/api/v1/executions/{execution_id}", headers=USER)
    assert answer.status_code == 200, answer.text
    found: dict[str, Any] = answer.json()
    return found


async def until(client: httpx.AsyncClient, node: Node, execution_id: str, predicate: Any,
                within_s: float = 15) -> dict[str, Any]:
    """Poll another process's REST API (it runs in its own process: no in-process watch here)."""
    with trio.fail_after(within_s):
        while True:
            current = await state(client, node, execution_id)
            if predicate(current):
                return current
            await trio.sleep(0.05)


def keys(svc: FakeService, path: str) -> Counter[str]:
    return Counter(request.headers["idempotency-key"] for request in svc.requests_to(path))


async def test_any_request_works_on_any_of_three_processes(schema: str, tmp_path: pathlib.Path) -> None:
    async with fake_service() as svc, nodes(schema, svc.url, tmp_path, LEASE_TTL_MS=TTL_MS) as group, \
            httpx.AsyncClient(timeout=20) as client:
        a, b, c = [await group.start(name) for name in ("a", "b", "c")]
        await register(client, a, GATE, WAIT, FLAKY)
        gate = await start(client, a, "gate")
        await until(client, b, gate, lambda e: e["status"] == "awaiting_approval")
        frames: list[dict[str, Any]] = []
        following = trio.Event()

        async def follow_on_b() -> None:  # the stream of an execution owned by a, served by b
            async with client.stream("GET", f"{b.url}/api/v1/executions/{gate}/stream", headers=USER) as stream:
                async for line in stream.aiter_lines():
                    if line.startswith("data: "):
                        frames.append(json.loads(line[6:]))
                        following.set()

        async with trio.open_nursery() as streams:
            streams.start_soon(follow_on_b)
            with trio.fail_after(10):
                await following.wait()  # (its first frame is the state it found: then the pause)
            paused = await client.post(f"{b.url}/api/v1/executions/{gate}/pause", json={"reason": "hold"}, headers=USER)
            assert paused.status_code == 200 and paused.json()["status"] == "paused"
            again = await client.post(f"{c.url}/api/v1/executions/{gate}/pause", json={}, headers=USER)
            assert again.status_code == 409 and "paused" in again.json()["detail"]  # the owner's own refusal
            resumed = await client.post(f"{c.url}/api/v1/executions/{gate}/resume", json={}, headers=USER)
            assert resumed.status_code == 200 and resumed.json()["status"] == "awaiting_approval"
            wrong = await client.post(f"{b.url}/api/v1/executions/{gate}/steps/approve/approvals",
                                      json={"decision": "approve"}, headers={"X-User-Id": "mallory"})
            assert wrong.status_code == 403
            decided = await client.post(f"{c.url}/api/v1/executions/{gate}/steps/approve/approvals",
                                        json={"decision": "approve", "comment": "go"}, headers={"X-User-Id": "boss"})
            assert decided.status_code == 200 and decided.json()["steps"]["approve"]["status"] == "succeeded"
        assert frames[-1]["status"] == "completed"  # b's stream followed a's execution to its end
        assert [f["status"] for f in frames][:2] == ["awaiting_approval", "paused"]

        waiting = await start(client, a, "wait", {"key": "k1"})
        await until(client, c, waiting, lambda e: e["steps"]["ev"]["status"] == "waiting")
        published = await client.post(f"{c.url}/api/v1/events", json={"type": "go", "correlationKey": "k1",
                                                                      "payload": {"n": 1}}, headers=USER)
        assert published.status_code == 202 and published.json() == {"delivered": 1, "retained": False, "refusedByFilter": 0}
        assert (await until(client, b, waiting, lambda e: e["status"] == "completed"))["steps"]["ev"]["output"][
            "payload"] == {"n": 1}

        svc.script("/flaky", Response(500), Response(200, json={"fixed": True}))
        flaky = await start(client, a, "flaky")
        await until(client, b, flaky, lambda e: e["status"] == "failed")
        retried = await client.post(f"{b.url}/api/v1/executions/{flaky}/steps/call/retry", json={}, headers=USER)
        assert retried.status_code == 200 and retried.json()["status"] == "running"
        assert (await until(client, c, flaky, lambda e: e["status"] == "completed"))["output"] == {"fixed": True}
        replayed = await client.post(f"{c.url}/api/v1/executions/{flaky}/replay", json={}, headers=USER)
        assert replayed.status_code == 201 and replayed.json()["replayOf"] == flaky
        cancel_me = await start(client, a, "gate")
        await until(client, a, cancel_me, lambda e: e["status"] == "awaiting_approval")
        cancelled = await client.post(f"{b.url}/api/v1/executions/{cancel_me}/cancel", json={"reason": "no"},
                                      headers=USER)
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        assert keys(svc, "/first")[f"{gate}:first"] == 1 and keys(svc, "/deploy")[f"{gate}:deploy"] == 1


async def test_kill_dash_nine_then_restart_under_the_same_id(schema: str, tmp_path: pathlib.Path) -> None:
    async with fake_service() as svc, nodes(schema, svc.url, tmp_path, LEASE_TTL_MS=TTL_MS, FORWARD_WAIT_MS=700) \
            as group, httpx.AsyncClient(timeout=20) as client:
        svc.script("/hold", Response(200, json={"held": 1}, delay_s=30), Response(200, json={"held": 2}))
        a, b = await group.start("node-a"), await group.start("node-b")
        await register(client, a, GATE, SLOW)
        waiting = await start(client, a, "gate")
        running = await start(client, a, "slow")
        await until(client, b, waiting, lambda e: e["status"] == "awaiting_approval")
        with trio.fail_after(10):
            await svc.wait_for("/hold")
        a.kill()
        await a.process.wait()
        queued = await client.post(f"{b.url}/api/v1/executions/{waiting}/steps/approve/approvals",
                                   json={"decision": "approve"}, headers={"X-User-Id": "boss"})
        assert queued.status_code == 202 and queued.json()["status"] == "queued"  # its owner is dead
        await group.start("node-a")  # the same id: its executions at once, no wait for the lease
        ready_at = trio.current_time()
        done = await until(client, b, waiting, lambda e: e["status"] == "completed", within_s=5)
        assert trio.current_time() - ready_at < 1.0  # resumed within a second of being ready
        assert done["steps"]["approve"]["approvals"][0]["approver"] == "boss"  # the queued decision, applied
        await until(client, b, running, lambda e: e["status"] == "completed", within_s=5)
        assert keys(svc, "/first") == {f"{waiting}:first": 1, f"{running}:first": 1}  # never again
        assert keys(svc, "/hold") == {f"{running}:hold": 2}  # in flight: once more, with the same key
        assert keys(svc, "/deploy") == {f"{waiting}:deploy": 1}


async def test_kill_dash_nine_and_another_process_takes_over_after_the_ttl(schema: str,
                                                                          tmp_path: pathlib.Path) -> None:
    async with fake_service() as svc, nodes(schema, svc.url, tmp_path, LEASE_TTL_MS=TTL_MS) as group, \
            httpx.AsyncClient(timeout=20) as client:
        svc.script("/hold", Response(200, json={"held": 1}, delay_s=30), Response(200, json={"held": 2}))
        a, b = await group.start("a"), await group.start("b")
        await register(client, a, SLOW)
        running = await start(client, a, "slow")
        with trio.fail_after(10):
            await svc.wait_for("/hold")
        a.kill()
        killed_at = trio.current_time()
        final = await until(client, b, running, lambda e: e["status"] == "completed", within_s=10)
        assert trio.current_time() - killed_at >= TTL_MS / 1000 * 0.5  # a's lease had to run out first
        assert final["steps"]["hold"]["attempts"] == 2
        assert keys(svc, "/hold") == {f"{running}:hold": 2} and keys(svc, "/after") == {f"{running}:after": 1}


async def test_a_stalled_owner_is_fenced_when_it_wakes_up(schema: str, tmp_path: pathlib.Path) -> None:
    async with fake_service() as svc, nodes(schema, svc.url, tmp_path, LEASE_TTL_MS=TTL_MS) as group, \
            httpx.AsyncClient(timeout=20) as client:
        svc.script("/hold", Response(200, json={"held": "late"}, delay_s=2), Response(200, json={"held": "new"}))
        a, b = await group.start("a"), await group.start("b")
        await register(client, a, SLOW)
        running = await start(client, a, "slow")
        with trio.fail_after(10):
            await svc.wait_for("/hold")
        a.stall()  # SIGSTOP: past its lease, b takes the execution over and finishes it
        final = await until(client, b, running, lambda e: e["status"] == "completed", within_s=10)
        assert final["steps"]["hold"]["output"] == {"held": "new"}
        a.go_on()  # it finds its heartbeat ran out: it lets go (or its write of /hold's outcome is refused)
        with trio.fail_after(10):
            while not any(said in a.output() for said in LET_GO):  # noqa: ASYNC110 (another process's log)
                await trio.sleep(0.1)
        assert await state(client, a, running) == await state(client, b, running)  # b's state stands
        assert keys(svc, "/after") == {f"{running}:after": 1}  # once, by b
        assert keys(svc, "/hold") == {f"{running}:hold": 2}  # a's call and b's re-run: one key


async def test_a_woken_stale_owner_answers_what_the_new_owner_committed(schema: str, tmp_path: pathlib.Path) -> None:
    async with fake_service() as svc, nodes(schema, svc.url, tmp_path, LEASE_TTL_MS=TTL_MS) as group, \
            httpx.AsyncClient(timeout=20) as client:
        a, b = await group.start("a"), await group.start("b")
        await register(client, a, GATE)
        execution = await start(client, a, "gate")
        await until(client, a, execution, lambda e: e["status"] == "awaiting_approval")
        a.stall()  # SIGSTOP past its lease: b takes the execution over, and the decision finishes it
        decided = await client.post(f"{b.url}/api/v1/executions/{execution}/steps/approve/approvals",
                                    json={"decision": "approve"}, headers={"X-User-Id": "boss"})
        assert decided.status_code in (200, 202), decided.text  # (queued for a until b takes it over)
        await until(client, b, execution, lambda e: e["status"] == "completed")
        a.go_on()  # its first answer is already the one b committed, not what it held in memory
        assert (await state(client, a, execution))["status"] == "completed"


async def test_a_thousand_executions_over_three_processes_one_killed_half_way(schema: str,
                                                                               tmp_path: pathlib.Path) -> None:
    async with fake_service() as svc, nodes(schema, svc.url, tmp_path, LEASE_TTL_MS=TTL_MS) as group, \
            httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=30)) as client:
        processes = [await group.start(name) for name in ("a", "b", "c")]
        await register(client, processes[0], WORK)
        ids: list[str] = []

        async def start_once(n: int) -> str:
            for target in (processes[n % 3 if n < 500 else 1 + n % 2], processes[1]):
                try:  # a start that was in flight to a as it died is sent again, with the same key
                    answer = await client.post(f"{target.url}/api/v1/executions", headers={
                        **USER, "Idempotency-Key": f"n-{n}"}, json={"runbookId": "work", "input": {"n": n}})
                except httpx.TransportError:
                    continue
                assert answer.status_code in (200, 201), answer.text
                return str(answer.json()["id"])
            raise AssertionError(f"start {n} was refused everywhere")

        async def starter(index: int) -> None:
            for n in range(index, 1000, 24):
                ids.append(await start_once(n))
                if n == 500:
                    processes[0].kill()  # half-way: a dies with what it runs

        async with trio.open_nursery() as starters:
            for index in range(24):
                starters.start_soon(starter, index)
        with trio.fail_after(90):
            for execution_id in ids:
                await until(client, processes[1], execution_id, lambda e: e["status"] == "completed", within_s=90)
        assert len(ids) == 1000
        per_key = keys(svc, "/work")
        assert set(per_key) == {f"{eid}:{step}" for eid in ids for step in ("one", "two")}
        for key, count in per_key.items():  # at most an in-flight call of the killed process, again
            if count > 2:
                execution_id = key.split(":")[0]
                audit = (await client.get(f"{processes[1].url}/api/v1/executions/{execution_id}/audit",
                                          headers=USER)).json()["items"]
                raise AssertionError(f"{key} called {count} times; audit: {[(e['actor'], e['action']) for e in audit]}")
        assert sum(1 for count in per_key.values() if count == 2) <= 60  # what a could have had in flight
