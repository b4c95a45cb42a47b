"""The README's curl session, over real HTTP: examples/ loaded from RUNBOOKS_DIR, the demo
services of `make run` as CALL_SERVICE_BASE_URL, start deploy-approval, approve, watch it finish."""

from __future__ import annotations

import json
import runpy
from functools import partial
from pathlib import Path
from typing import Any

import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.trio import serve

from gateway.serve import load_runbooks_dir
from tests.gateway_fixtures import running_gateway

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


async def test_the_readme_session_works_as_written(nursery: trio.Nursery) -> None:
    demo = runpy.run_path(str(EXAMPLES / "demo_services.py"))["app"]
    config = HyperConfig()
    config.bind = ["127.0.0.1:0"]
    stop = trio.Event()
    [demo_url] = await nursery.start(partial(serve, demo, config, shutdown_trigger=stop.wait))
    async with running_gateway({"CALL_SERVICE_BASE_URL": demo_url}) as gw:
        await load_runbooks_dir(gw.runtime, str(EXAMPLES))
        listed = (await gw.client.get("/api/v1/runbooks")).json()
        assert {r["id"] for r in listed["items"]} >= {"deploy-approval", "risk-assessment", "phishing-triage"}
        started = await gw.client.post("/api/v1/executions", headers={"X-User-Id": "alice"}, json={
            "runbookId": "deploy-approval",
            "input": {"service": "checkout", "version": "2.14.0", "environment": "staging",
                      "changeTicket": "CHG-1042"},
            "context": {"legalBasis": "change CHG-1042", "reason": "weekly release"}})
        assert started.status_code == 201, started.text
        execution_id = started.json()["id"]
        states: list[Any] = []
        awaiting = trio.Event()

        async def watch() -> None:
            async with gw.client.stream("GET", f"/api/v1/executions/{execution_id}/stream") as response:
                async for line in response.aiter_lines():
                    if line.startswith("data:"):
                        states.append(json.loads(line[5:]))
                        if states[-1]["status"] == "awaiting_approval":
                            awaiting.set()

        async with trio.open_nursery() as watchers:
            watchers.start_soon(watch)
            with trio.fail_after(20):
                await awaiting.wait()
            approved = await gw.client.post(f"/api/v1/executions/{execution_id}/steps/approve/approvals",
                                            headers={"X-User-Id": "rm.jane"},
                                            json={"decision": "approve", "comment": "go"})
            assert approved.status_code == 200, approved.text
        assert states[-1]["status"] == "completed"  # the stream ended with the finished state
        final = (await gw.client.get(f"/api/v1/executions/{execution_id}")).json()
        assert final["output"]["status"] == "rolling-out"
        audit = (await gw.client.get(f"/api/v1/executions/{execution_id}/audit")).json()["items"]
        assert audit[0]["actor"] == "alice"
        assert any(a["actor"] == "rm.jane" and a["action"] == "approval.decided" for a in audit)
    stop.set()
