"""Concurrency keys and quotas over REST: ``queued`` executions, refused blocks."""

from __future__ import annotations

from typing import Any

import trio

from tests.gateway_fixtures import running_gateway

PROBLEM = "application/problem+json"
BOSS = {"X-User-Id": "boss"}
DEPLOY = {"id": "deploy", "concurrency": {"key": "${input.service}", "limit": 1}, "steps": [
    {"id": "ok", "type": "human-approval", "config": {"approvers": ["boss"]}}]}


async def test_an_execution_over_the_limit_is_queued_and_listed_as_such() -> None:
    async with running_gateway() as gw:
        await gw.register(DEPLOY)
        first = await gw.start("deploy", {"service": "web", "n": 1})
        second = await gw.start("deploy", {"service": "web", "n": 2})
        assert second["status"] == "queued" and second["concurrencyKey"] == "web" and second["startedAt"] is None
        listed = (await gw.client.get("/api/v1/executions", params={"status": "queued"})).json()
        assert [item["id"] for item in listed["items"]] == [second["id"]]
        paused = await gw.client.post(f"/api/v1/executions/{second['id']}/pause", json={"reason": "hold"})
        assert paused.status_code == 409 and paused.headers["content-type"] == PROBLEM
        decided = await gw.client.post(f"/api/v1/executions/{first['id']}/steps/ok/approvals", headers=BOSS,
                                        json={"decision": "approve"})
        assert decided.status_code == 200, decided.text
        after = await _until(gw, second["id"], "awaiting_approval")
        assert after["startedAt"] is not None


async def test_a_bad_concurrency_block_is_422_listing_every_problem() -> None:
    async with running_gateway() as gw:
        response = await gw.client.post("/api/v1/runbooks", json={
            **DEPLOY, "concurrency": {"key": "${steps.x}", "limit": 0}})
        assert response.status_code in (400, 422) and response.headers["content-type"] == PROBLEM
        paths = {error.get("path") or error.get("pointer") for error in response.json()["errors"]}
        assert any("limit" in str(p) for p in paths) and any("key" in str(p) for p in paths), response.json()


async def _until(gw: Any, execution_id: str, status: str) -> Any:
    with trio.fail_after(10):
        async for execution in gw.runtime.watch(execution_id):
            if execution.status == status:
                break
    return (await gw.client.get(f"/api/v1/executions/{execution_id}")).json()


def test_the_command_line_says_which_key_a_queued_execution_waits_for() -> None:
    from gateway.display import summary

    assert summary({"status": "queued", "concurrencyKey": "web", "error": None}) == \
        "queued (waiting for a slot of concurrency key 'web')"
    assert summary({"status": "running", "concurrencyKey": "web", "error": None}) == "running"
