"""GET /api/v1/executions/{id}/stream over real HTTP (httpx streaming; ASGITransport buffers)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import trio

from gateway import sse
from tests.gateway_fixtures import approval_runbook, echo_runbook, gate_runbook, running_gateway


async def _events(response: httpx.Response) -> AsyncIterator[tuple[str, Any]]:
    """(event, data) per frame; comments come as ("comment", text)."""
    event, data = None, []
    async for line in response.aiter_lines():
        if line.startswith(":"):
            yield "comment", line[1:].strip()
        elif line.startswith("event: "):
            event = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data.append(line.removeprefix("data: "))
        elif line == "" and event is not None:
            yield event, json.loads("\n".join(data))
            event, data = None, []


async def test_the_stream_delivers_states_live_until_the_execution_finishes() -> None:
    async with running_gateway() as gw:
        await gw.register(gate_runbook())
        execution = await gw.start("gated")
        statuses: list[str] = []
        with trio.fail_after(10):
            async with gw.client.stream("GET", f"/api/v1/executions/{execution['id']}/stream") as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                assert response.headers["cache-control"] == "no-cache"
                async for event, data in _events(response):
                    assert event == "execution"
                    assert data["id"] == execution["id"]
                    statuses.append(data["status"])
                    if data["steps"]["held"]["status"] == "running":
                        gw.steps.open("g1")  # the stream is live: the gate opens only after we saw it wait
                # the stream ended by itself
        assert statuses[-1] == "completed"
        assert "running" in statuses
        assert statuses.count("completed") == 1


async def test_a_finished_execution_streams_one_state() -> None:
    async with running_gateway() as gw:
        await gw.register(echo_runbook())
        execution = await gw.start("echo", {"n": 1})
        await gw.wait_for(execution["id"], "completed")
        with trio.fail_after(5):
            async with gw.client.stream("GET", f"/api/v1/executions/{execution['id']}/stream") as response:
                frames = [frame async for frame in _events(response)]
        assert [(event, data["status"]) for event, data in frames] == [("execution", "completed")]


async def test_unknown_execution_is_a_404_problem_not_a_stream() -> None:
    async with running_gateway() as gw:
        response = await gw.client.get("/api/v1/executions/nope/stream")
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/problem+json"


async def test_heartbeats_while_nothing_happens_and_approvals_end_the_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sse, "HEARTBEAT_S", 0.05)
    async with running_gateway() as gw:
        await gw.register(approval_runbook())
        execution = await gw.start("approve-me", {"value": 1})
        url = f"/api/v1/executions/{execution['id']}"
        seen: list[tuple[str, Any]] = []
        with trio.fail_after(10):
            async with gw.client.stream("GET", f"{url}/stream") as response:
                async for event, data in _events(response):
                    seen.append((event, data))
                    if event == "comment" and [e for e, _ in seen].count("comment") == 2:
                        decision = await gw.client.post(f"{url}/steps/approve/approvals", json={"decision": "approve"},
                                                        headers={"X-User-Id": "boss"})
                        assert decision.status_code == 200
        assert ("comment", "keep-alive") in seen
        states = [data for event, data in seen if event == "execution"]
        assert states[-1]["status"] == "completed"
        assert states[-1]["steps"]["approve"]["approvals"][0]["approver"] == "boss"


async def test_a_client_that_leaves_ends_its_stream() -> None:
    async with running_gateway() as gw:
        await gw.register(gate_runbook(gate="never"))
        execution = await gw.start("gated")
        streams = gw.app.extensions["runbooks"].streams
        with trio.fail_after(5):
            async with gw.client.stream("GET", f"/api/v1/executions/{execution['id']}/stream") as response:
                async for _ in _events(response):
                    break
            assert streams.live == 1
            while streams.live:  # noqa: ASYNC110 - the server side ends on its own schedule
                await trio.sleep(0.01)


async def test_each_event_has_an_id_and_last_event_id_resumes_after_it() -> None:
    from gateway.sse import frame, last_event_id
    from runtime import Execution, ExecutionStatus
    from runtime.model.wire import parse_time

    execution = Execution("e1", "rb", 1, "t", ExecutionStatus.RUNNING, parse_time("2026-01-01T00:00:00Z"), {},
                          version=7)
    assert frame(execution).startswith(b"id: 7\nevent: execution\ndata: {")
    assert [last_event_id(h) for h in ("7", " 12 ", None, "", "abc", "-1", "9" * 30)] == [7, 12, 0, 0, 0, 0, 0]


async def test_a_client_resuming_with_last_event_id_gets_only_later_states() -> None:
    async with running_gateway() as gw:
        await gw.register(approval_runbook())
        execution = await gw.start("approve-me", {"value": 1})
        url = f"/api/v1/executions/{execution['id']}"
        waiting = await gw.wait_for(execution["id"], "awaiting_approval")
        seen = (await gw.client.get(url)).json()
        with trio.fail_after(10):
            async with gw.client.stream("GET", f"{url}/stream", headers={"Last-Event-ID": "999999"}) as response:
                decision = await gw.client.post(f"{url}/steps/approve/approvals", json={"decision": "approve"},
                                                headers={"X-User-Id": "boss"})
                assert decision.status_code == 200
                lines = [line async for line in response.aiter_lines()]
        assert not any(line.startswith("data: ") for line in lines)  # nothing newer than what it had seen
        with trio.fail_after(10):
            async with gw.client.stream("GET", f"{url}/stream", headers={"Last-Event-ID": "1"}) as response:
                ids = [int(line[4:]) for line in [line async for line in response.aiter_lines()]
                       if line.startswith("id: ")]
        assert ids and min(ids) > 1 and waiting and seen["status"] == "awaiting_approval"
