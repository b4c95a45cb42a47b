"""Explain, complete, skip and fork over real HTTP and through the ``runbooks`` client."""

from __future__ import annotations

import contextlib
import io
import pathlib

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


async def test_complete_and_skip_over_rest_and_the_client() -> None:
    async with running_gateway() as gw:
        await gw.register(approval_runbook())
        started = await gw.start("approve-me", {"value": 3})
        await gw.wait_for(started["id"], "awaiting_approval")
        path = f"/api/v1/executions/{started['id']}/steps"
        bad = await gw.client.post(f"{path}/approve/complete", json={"justification": " ", "extra": 1})
        assert bad.status_code == 422 and {p["path"] for p in bad.json()["errors"]} >= {"justification", "extra",
                                                                                      "output"}
        early = await gw.client.post(f"{path}/deploy/skip", json={"justification": "not needed"})
        assert early.status_code == 409 and "'deploy' is pending" in early.json()["detail"]
        code, out, err = await client(gw.url, "complete", started["id"], "approve", "--output", '{"approved": true}',
                                      "--justification", "approved on the phone", "--evidence", '{"call": "10:02"}')
        assert (code, err) == (0, ""), err
        assert out.startswith("approve: completed by hand; execution")
        final = await gw.wait_for(started["id"], "completed")
        assert final["steps"]["approve"]["output"] == {"approved": True}
        audit = (await gw.client.get(f"/api/v1/executions/{started['id']}/audit")).json()["items"]
        [entry] = [e for e in audit if e["action"] == "step.completed_by_hand"]
        assert (entry["actor"], entry["stepId"], entry["reason"]) == ("ops", "approve", "approved on the phone")
        code, out, _ = await client(gw.url, "explain", started["id"], "approve")
        assert "  completed by hand by ops: approved on the phone (it was awaiting_approval)" in out.splitlines()
        code, _, err = await client(gw.url, "skip", started["id"], "deploy", "--justification", "late")
        assert code == 1 and "succeeded" in err


async def test_by_hand_needs_the_operator_role(tmp_path: pathlib.Path) -> None:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text("tokens:\n"
                      "  - {token: viewer-token-0123456789, user: val, tenant: acme, roles: [viewer]}\n"
                      "  - {token: operator-token-0123456789, user: olga, tenant: acme, roles: [operator]}\n"
                      "  - {token: admin-token-0123456789, user: ada, tenant: acme, roles: [admin]}\n")
    async with running_gateway({"RUNBOOKS_TOKENS_FILE": str(tokens)}) as gw:
        admin = {"Authorization": "Bearer admin-token-0123456789"}
        await gw.register(approval_runbook(), headers=admin)
        started = await gw.start("approve-me", {"value": 1}, headers=admin)
        await gw.wait_for(started["id"], "awaiting_approval", headers=admin)
        path = f"/api/v1/executions/{started['id']}/steps/approve"
        body = {"justification": "by phone"}
        viewer = await gw.client.post(f"{path}/skip", json=body,
                                      headers={"Authorization": "Bearer viewer-token-0123456789"})
        assert viewer.status_code == 403 and viewer.headers["content-type"] == PROBLEM
        assert (await gw.execution(started["id"], headers=admin))["steps"]["approve"]["status"] == "awaiting_approval"
        operator = await gw.client.post(f"{path}/skip", json=body,
                                        headers={"Authorization": "Bearer operator-token-0123456789"})
        assert operator.status_code == 200, operator.text
        assert operator.json()["steps"]["approve"]["status"] == "skipped"


async def test_fork_over_rest_and_the_client() -> None:
    async with running_gateway() as gw:
        await gw.register(approval_runbook())
        started = await gw.start("approve-me", {"value": 3})
        await gw.wait_for(started["id"], "awaiting_approval")
        response = await gw.client.post(f"/api/v1/executions/{started['id']}/fork", json={"fromStep": "approve"})
        assert response.status_code == 201, response.text
        fork = response.json()
        assert fork["forkedFrom"] == {"executionId": started["id"], "stepId": "approve"}
        assert fork["steps"]["prepare"]["status"] == "succeeded" and fork["steps"]["prepare"]["output"] == {"value": 3}
        bad = await gw.client.post(f"/api/v1/executions/{started['id']}/fork", json={"fromStep": "nope"})
        assert bad.status_code == 404 and "no step 'nope'" in bad.json()["detail"]
        code, out, err = await client(gw.url, "fork", started["id"], "deploy", "--input", '{"value": 4}')
        assert code == 0, err
        assert out.startswith(f"fork of {started['id']} from deploy: execution ")
        audit = (await gw.client.get(f"/api/v1/executions/{started['id']}/audit")).json()["items"]
        assert [e["data"]["fromStep"] for e in audit if e["action"] == "execution.forked"] == ["approve", "deploy"]
