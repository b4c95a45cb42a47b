"""The execution counters of /metrics add up: started = finished + open, through step retries
(which re-open a finished execution) and through a restart (which resumes unfinished ones)."""

from __future__ import annotations

import pathlib
import re

import trio
import trio.testing

from gateway import create_app, create_metrics
from gateway.config import Config
from runtime import open_runtime
from tests.gateway_fixtures import Steps, register_step_types, running_gateway


def counters(text: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for name in ("started", "finished", "retried", "resumed"):
        found = re.findall(rf"^runbooks_executions_{name}_total(?:{{[^}}]*}})? (\S+)$", text, re.M)
        values[name] = sum(float(v) for v in found)
    values["open"] = float(re.findall(r"^runbooks_open_executions (\S+)$", text, re.M)[0])
    return values


def retry_runbook() -> dict[str, object]:
    return {"id": "flaky", "steps": [{"id": "first", "type": "echo"},
                                     {"id": "breaks", "type": "fail", "retryPolicy": {"maxRetries": 2,
                                                                                     "initialDelayMs": 0}},
                                     {"id": "last", "type": "echo"}]}


async def test_step_retries_keep_started_equal_to_finished_plus_open() -> None:
    async with running_gateway() as gw:
        await gw.register(retry_runbook())
        execution = await gw.start("flaky")
        await gw.wait_for(execution["id"], "failed")
        for attempt in range(3):  # retried twice while still failing, then fixed
            if attempt == 2:
                gw.steps.failing = False
            response = await gw.client.post(f"/api/v1/executions/{execution['id']}/steps/breaks/retry", json={})
            assert response.status_code == 200, response.text
            await gw.wait_for(execution["id"], "completed" if attempt == 2 else "failed")
        await trio.testing.wait_all_tasks_blocked()  # the actor ends just after its last state
        values = counters((await gw.client.get("/metrics")).text)
        assert values == {"started": 4.0, "finished": 4.0, "retried": 3.0, "resumed": 0.0, "open": 0.0}


async def test_executions_resumed_after_a_restart_are_counted_as_started(tmp_path: pathlib.Path) -> None:
    store = f"sqlite:///{tmp_path / 'runbooks.db'}"
    config = Config.from_env({"STORAGE_BACKEND": "memory"})
    async with running_gateway(store=store) as gw:  # the first process: starts two, both wait
        await gw.register({"id": "waits", "steps": [  # built-in types only: known at recovery
            {"id": "wait", "type": "wait-for-event",
             "config": {"eventType": "ticket.closed", "correlationKey": "${input.ticket}"}}]})
        first, second = await gw.start("waits", {"ticket": "T-1"}), await gw.start("waits", {"ticket": "T-2"})
        for execution in (first, second):
            await gw.wait_for_step(execution["id"], "wait", "waiting")
    metrics, observer = create_metrics()
    async with open_runtime(store, settings=config.settings(), batch_observer=observer) as runtime:
        register_step_types(runtime, Steps())
        create_app(runtime, config, metrics=metrics)
        assert counters(metrics.render().decode()) == {
            "started": 2.0, "finished": 0.0, "retried": 0.0, "resumed": 2.0, "open": 2.0}
        for execution, ticket in ((first, "T-1"), (second, "T-2")):
            await runtime.publish_event("ticket.closed", ticket, {"ok": True})
            assert (await runtime.wait(execution["id"])).status.value == "completed"
        await trio.testing.wait_all_tasks_blocked()  # the actors end just after their last state
        assert counters(metrics.render().decode()) == {
            "started": 2.0, "finished": 2.0, "retried": 0.0, "resumed": 2.0, "open": 0.0}
