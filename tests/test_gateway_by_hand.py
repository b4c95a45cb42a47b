"""Explain, complete, skip and fork over real HTTP and through the ``runbooks`` client."""

from __future__ import annotations

import contextlib
import io

import trio

from gateway.cli import main as runbooks
from tests.gateway_fixtures import approval_runbook, running_gateway

PROBLEM = "application/problem+json"


async def client(url: str, *argv: str) -> tuple[int, str, str]:
    """``runbooks ARGV --server URL`` in a thread (the client is synchronous)."""
    out, err = io.StringIO(), io.StringIO()

    def call() -> int:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            return runbooks([*argv, "--server", url, "--user", "ops"])

    code = await trio.to_thread.run_sync(call)
    return code, out.getvalue(), err.getvalue()


async def test_explain_over_rest_and_the_client() -> None:
    async with running_gateway() as gw:
        await gw.register(approval_runbook())
        started = await gw.start("approve-me", {"value": 3}, context={"legalBasis": "contract"})
        await gw.wait_for(started["id"], "awaiting_approval")
        response = await gw.client.get(f"/api/v1/executions/{started['id']}/explain")
        assert response.status_code == 200, response.text
        items = response.json()["items"]
        assert [item["stepId"] for item in items] == [None, "prepare", "approve", "deploy"]
        assert items[0]["reasons"][0] == "runs version 1 of runbook 'approve-me'"
        assert "legal basis: contract" in items[0]["reasons"]
        assert items[2]["reasons"] == ["ready once 'prepare' succeeded"]
        assert items[3]["reasons"] == ["not started: waits for 'approve' (awaiting_approval)"]
        one = await gw.client.get(f"/api/v1/executions/{started['id']}/explain", params={"stepId": "approve"})
        assert [item["stepId"] for item in one.json()["items"]] == ["approve"]
        missing = await gw.client.get(f"/api/v1/executions/{started['id']}/explain", params={"stepId": "nope"})
        assert missing.status_code == 404 and missing.headers["content-type"].startswith(PROBLEM)
        code, out, _ = await client(gw.url, "explain", started["id"], "deploy")
        assert code == 0
        assert out.splitlines() == ["step deploy: pending", "  not started: waits for 'approve' (awaiting_approval)"]
