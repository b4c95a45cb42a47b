"""Runbooks that call the engine's own API in a loop stop: call-service sends
``X-Runbooks-Hop`` (the execution's hop + 1), a start or an event arriving with a hop above
MAX_HOPS is 422 ``loop-detected``, and that answer fails the calling step ``loop_detected``.
The probe: an event rule whose runbook publishes the same event made 2^7-1 executions in 2 s."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from runtime import LoopDetected, Settings, StepContext, open_runtime
from tests.echo_service import echo_service
from tests.gateway_fixtures import running_gateway

MAX_HOPS = 8
PROBE_HOPS = 5  # the probe's bound: 2^6 - 1 executions


def echo_loop(gateway_url: str) -> dict[str, Any]:
    """The probe's runbook: started by event 'ping', it publishes 'ping' again (twice: it fans out)."""
    publish = {"url": f"{gateway_url}/api/v1/events", "method": "POST",
               "body": {"type": "ping", "correlationKey": "${input.key}"}}
    return {"id": "echo-loop", "triggers": [{"id": "on-ping", "event": {"type": "ping"},
                                              "input": {"key": "${event.correlationKey}"}}],
            "steps": [{"id": "again", "type": "call-service", "config": publish},
                      {"id": "and-again", "type": "call-service", "dependsOn": [], "config": publish}]}


async def test_the_probe_an_event_rule_publishing_to_its_own_gateway_stops_at_max_hops() -> None:
    """With ``MAX_HOPS`` set lower than its default (8), so the tree stays small: the bound
    is the configured one."""
    async with running_gateway({"MAX_HOPS": str(PROBE_HOPS)}) as gw:
        await gw.register(echo_loop(gw.url))
        first = await gw.client.post("/api/v1/events", json={"type": "ping", "correlationKey": "k"})
        assert first.status_code == 202
        executions: list[Any] = []
        with trio.fail_after(60):  # every hop doubles: 2^(MAX_HOPS+1) - 1 executions at most
            while len(executions) < 2 ** (PROBE_HOPS + 1) - 1 or any(not e.status.finished for e in executions):
                await trio.sleep(0.05)
                executions = (await gw.runtime.list_executions(runbook_id="echo-loop", limit=1000)).items
        await trio.sleep(0.2)  # nothing more starts (a bounded look, not a measure)
        final = (await gw.runtime.list_executions(runbook_id="echo-loop", limit=1000)).items
    assert len(final) == 2 ** (PROBE_HOPS + 1) - 1  # hops 0 to PROBE_HOPS
    hops = sorted({e.context.get("hop", 0) for e in final})
    assert hops == list(range(PROBE_HOPS + 1))
    last = [e for e in final if e.context.get("hop") == PROBE_HOPS]
    assert all(e.status.value == "failed" for e in last)
    error = last[0].error  # the step that failed first (the other may be cancelled with the execution)
    assert error is not None and error.code == "loop_detected" and "MAX_HOPS" in error.message
    assert all(e.status.value == "completed" for e in final if e.context.get("hop", 0) < PROBE_HOPS)


async def test_a_start_or_an_event_above_max_hops_is_422_loop_detected() -> None:
    async with running_gateway() as gw:
        await gw.register({"id": "one", "steps": [{"id": "s", "type": "echo"}]})
        refused = [await gw.client.post("/api/v1/executions", json={"runbookId": "one"},
                                        headers={"X-Runbooks-Hop": str(MAX_HOPS + 1)}),
                   await gw.client.post("/api/v1/events", json={"type": "t", "correlationKey": "k"},
                                        headers={"X-Runbooks-Hop": str(MAX_HOPS + 1)})]
        started = await gw.client.post("/api/v1/executions", json={"runbookId": "one"},
                                       headers={"X-Runbooks-Hop": str(MAX_HOPS)})
        bad = await gw.client.post("/api/v1/events", json={"type": "t", "correlationKey": "k"},
                                   headers={"X-Runbooks-Hop": "-1"})
    for answer in refused:
        assert answer.status_code == 422 and answer.headers["content-type"] == "application/problem+json"
        problem = answer.json()
        assert (problem["type"], problem["title"], problem["status"]) == (
            "urn:runbooks:problem:loop-detected", "loop detected", 422)
        assert problem["errors"] == [{"path": "X-Runbooks-Hop", "message": f"{MAX_HOPS + 1} is above {MAX_HOPS}"}]
    assert started.status_code == 201 and started.json()["context"]["hop"] == MAX_HOPS
    assert bad.status_code == 400


async def test_call_service_sends_the_hop_after_the_executions_own() -> None:
    async def record(ctx: StepContext) -> Any:
        return ctx.hop

    async with echo_service() as url, open_runtime("memory", settings=Settings(max_hops=3),
                                                   executors={"hop": record}) as rt:
        await rt.register_runbook({"id": "h", "steps": [
            {"id": "s", "type": "hop"}, {"id": "call", "type": "call-service", "config": {"url": f"{url}/text"}}]})
        execution = await rt.start_execution("h", hop=2)
        final = await rt.wait(execution.execution.id)
        assert final.steps["s"].output == 2 and final.context["hop"] == 2
        assert "X-Runbooks-Hop: 3\r\n" in final.steps["call"].output
        with pytest.raises(LoopDetected):
            await rt.start_execution("h", hop=4)
        with pytest.raises(LoopDetected):
            await rt.publish_event("t", "k", hop=4)
