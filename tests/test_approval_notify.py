"""Approval notifications: a POST to a real local HTTP server when the step starts waiting
(the body, the rendered secret header, the console link), recorded so a restart does not
send it again; a notification that finally fails is logged and audited and the step waits on."""

from __future__ import annotations

import json
import logging
import pathlib
from typing import Any

import pytest
import trio

from runtime import Runtime, Settings, open_runtime
from tests.fake_service import Response, fake_service

HOOK_TOKEN = "hook-token-Value-5"


def notified(url: str, **step: Any) -> dict[str, Any]:
    return {"id": "release", "steps": [
        {"id": "approve", "type": "human-approval", **step, "config": {
            "approvers": ["rm.jane", "cto"], "minApprovals": 1, "timeoutMs": 3_600_000,
            "message": "Deploy ${input.version}?",
            "notify": {"url": f"{url}/hook", "headers": {"Authorization": "Bearer ${secret.HOOK}"}}}}]}


def settings(tmp_path: pathlib.Path, **extra: Any) -> Settings:
    secrets = tmp_path / "secrets.json"
    secrets.write_text(json.dumps({"shared": {"HOOK": HOOK_TOKEN}}))
    return Settings(secrets_file=str(secrets), secrets_env={}, public_url="https://runbooks.example", **extra)


async def until(rt: Runtime, execution_id: str, predicate: Any) -> Any:
    with trio.fail_after(20):
        async for execution in rt.watch(execution_id):
            if predicate(execution):
                return execution
    raise AssertionError("finished first")


async def test_the_approvers_are_notified_once_even_after_a_restart(tmp_path: pathlib.Path) -> None:
    url = f"sqlite:///{tmp_path / 'rb.db'}"
    async with fake_service() as svc:
        async with open_runtime(url, settings=settings(tmp_path)) as rt:
            await rt.register_runbook(notified(svc.url))
            ex = await rt.start("release", {"version": "2.1"}, {"tenantId": "t1"})
            await svc.wait_for("/hook")
            state = await until(rt, ex.id, lambda e: e.steps["approve"].notified == "sent")
        [hook] = svc.requests_to("/hook")
        assert hook.method == "POST" and hook.headers["authorization"] == f"Bearer {HOOK_TOKEN}"
        body = hook.json
        assert {k: body[k] for k in ("executionId", "stepId", "runbookId", "message", "approvers", "minApprovals")} == {
            "executionId": ex.id, "stepId": "approve", "runbookId": "release", "message": "Deploy 2.1?",
            "approvers": ["rm.jane", "cto"], "minApprovals": 1}
        assert body["deadlineAt"].startswith(state.steps["approve"].deadline_at.strftime("%Y-%m-%dT%H:%M"))
        assert body["link"] == f"https://runbooks.example/executions/{ex.id}"
        assert "\n" not in body["text"] and "Deploy 2.1?" in body["text"] and body["link"] in body["text"]
        assert hook.headers["x-execution-id"] == ex.id  # sent like a call-service request
        async with open_runtime(url, settings=settings(tmp_path)) as rt:  # restarted: parks again, no resend
            await rt.submit_approval(ex.id, "approve", approver="cto", decision="approve")
            final = await rt.wait(ex.id)
            audit = [a.action for a in await rt.audit(ex.id)]
            logs = json.dumps([log.message for log in await rt.logs(ex.id)])
        assert final.status == "completed" and svc.count("/hook") == 1
        assert audit.count("approval.notified") == 1 and "approvers notified" in logs
        assert HOOK_TOKEN not in json.dumps([str(e.data) for e in await _evidence(url, ex.id, tmp_path)])


async def _evidence(url: str, execution_id: str, tmp_path: pathlib.Path) -> list[Any]:
    async with open_runtime(url, settings=settings(tmp_path)) as rt:
        return await rt.evidence(execution_id)


async def test_a_failing_notification_is_logged_and_audited_and_the_step_waits(
        tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    async with fake_service() as svc:
        svc.script("/hook", Response(503))
        async with open_runtime("memory", settings=settings(tmp_path)) as rt:
            await rt.register_runbook(notified(svc.url, retryPolicy={"maxRetries": 1, "initialDelayMs": 10}))
            ex = await rt.start("release", {"version": "2.2"})
            state = await until(rt, ex.id, lambda e: e.steps["approve"].notified == "failed")
            assert state.steps["approve"].status == "awaiting_approval" and state.status == "awaiting_approval"
            assert svc.count("/hook") == 2  # retried like call-service, then given up
            audit = [a for a in await rt.audit(ex.id) if a.action == "approval.notification_failed"]
            assert len(audit) == 1 and "503" in audit[0].data["error"]
            logs = await rt.logs(ex.id, level="warning")
            assert any("notification failed" in entry.message for entry in logs)
            await rt.submit_approval(ex.id, "approve", approver="rm.jane", decision="approve")
            assert (await rt.wait(ex.id)).status == "completed"
    assert any(r.levelno == logging.WARNING and "notification of step 'approve'" in r.getMessage()
               for r in caplog.records)
