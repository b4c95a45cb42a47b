"""The REST edge given what a new user (or a fuzzer) sent: lone surrogates, NUL characters,
YAML keys that read as booleans, unresolvable schemas, numbers past every bound, odd cursors.
Each is a 4xx problem naming the field, never a 500, and a refused request changes nothing:
the execution it named runs on and /health/ready stays 200."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest

from tests.gateway_fixtures import echo_runbook, gate_runbook, running_gateway

PROBLEM = "application/problem+json"
JSON = {"Content-Type": "application/json"}
SURROGATE_ESCAPE = "\\ud800"  # the six characters a JSON text carries


def problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["errors"], body
    return body


def paths(body: dict[str, Any]) -> list[str]:
    return [item["path"] for item in body["errors"]]


async def test_a_surrogate_pause_reason_three_times_leaves_execution_and_readiness_alone(
        tmp_path: pathlib.Path) -> None:
    async with running_gateway(store=f"sqlite:///{tmp_path / 'runbooks.db'}") as gw:
        await gw.register(gate_runbook())
        execution = await gw.start("gated")
        await gw.steps.wait_until_waiting("g1")
        for _ in range(3):
            response = await gw.client.post(
                f"/api/v1/executions/{execution['id']}/pause", headers=JSON,
                content=('{"reason": "stop ' + SURROGATE_ESCAPE + '"}').encode())
            assert paths(problem(response, 400)) == ["reason"]
            assert (await gw.client.get("/health/ready")).status_code == 200
        assert (await gw.execution(execution["id"]))["status"] == "running"
        gw.steps.open("g1")
        final = await gw.wait_for(execution["id"], "completed")
        assert [s["status"] for s in final["steps"].values()] == ["succeeded"] * 3
        assert (await gw.client.get("/health/ready")).status_code == 200


@pytest.mark.parametrize(("url", "body", "path"), [
    ("/api/v1/executions", '{"runbookId": "echo", "input": {"n": "' + SURROGATE_ESCAPE + '"}}', "input.n"),
    ("/api/v1/executions", '{"runbookId": "echo", "context": {"' + SURROGATE_ESCAPE + '": 1}}', "context"),
    ("/api/v1/executions", '{"runbookId": "echo' + SURROGATE_ESCAPE + '"}', "runbookId"),
    ("/api/v1/executions", '{"runbookId": "echo", "input": {"n": 1e400}}', "input.n"),
    ("/api/v1/executions", '{"runbookId": "echo", "input": {"n": ' + "9" * 5000 + '}}', "$"),
    ("/api/v1/events", '{"type": "t", "correlationKey": "k", "payload": ["' + SURROGATE_ESCAPE + '"]}',
     "payload[0]"),
    ("/api/v1/events", '{"type": "' + SURROGATE_ESCAPE + '", "correlationKey": "k"}', "type"),
    ("/api/v1/runbooks", '{"id": "x", "description": "' + SURROGATE_ESCAPE + '", "steps": [{"id": "a", "type": "echo"}]}',
     "description"),
    ("/api/v1/runbooks/validate", '{"id": "x", "steps": [{"id": "a", "type": "echo", "config": {"k": "'
     + SURROGATE_ESCAPE + '"}}]}', "steps[0].config.k"),
])
async def test_unreadable_values_anywhere_are_400_naming_the_field(url: str, body: str, path: str) -> None:
    async with running_gateway() as gw:
        await gw.register(echo_runbook())
        response = await gw.client.post(url, content=body.encode(), headers=JSON)
        assert path in paths(problem(response, 400))
        assert (await gw.client.get("/health/ready")).status_code == 200


async def test_a_yaml_document_with_a_surrogate_escape_is_refused_too() -> None:
    async with running_gateway() as gw:
        document = 'id: x\ndescription: "bad \\ud800"\nsteps: [{id: a, type: echo}]\n'
        response = await gw.client.post("/api/v1/runbooks", content=document.encode(),
                                        headers={"Content-Type": "application/yaml"})
        assert paths(problem(response, 400)) == ["description"]


@pytest.mark.parametrize(("url", "body", "path"), [
    ("pause", {"reason": "nul \u0000 inside"}, "reason"),
    ("cancel", {"reason": "\u0000"}, "reason"),
    ("cancel", {"reason": "\u001f\u00a0"}, "reason"),  # blank by the same rule as the OpenAPI pattern
])
async def test_texts_the_stores_cannot_hold_are_422(url: str, body: dict[str, Any], path: str) -> None:
    async with running_gateway() as gw:
        await gw.register(gate_runbook())
        execution = await gw.start("gated")
        response = await gw.client.post(f"/api/v1/executions/{execution['id']}/{url}", json=body)
        assert paths(problem(response, 422)) == [path]
        assert (await gw.execution(execution["id"]))["status"] == "running"
        gw.steps.open("g1")
        await gw.wait_for(execution["id"], "completed")


async def test_a_yaml_key_read_as_a_boolean_registers_and_runs() -> None:
    document = "id: weekly\nsteps:\n  - id: a\n    type: echo\n    config: {on: weekdays, at: '09:00'}\n"
    async with running_gateway() as gw:
        response = await gw.client.post("/api/v1/runbooks", content=document.encode(),
                                        headers={"Content-Type": "application/yaml"})
        assert response.status_code == 201, response.text
        execution = await gw.start("weekly")
        final = await gw.wait_for(execution["id"], "completed")
        assert final["output"] == {"on": "weekdays", "at": "09:00"}


async def test_an_unresolvable_input_schema_is_refused_at_registration_and_no_start_is_500() -> None:
    async with running_gateway() as gw:
        bad = {**echo_runbook("typed"), "inputSchema": {"properties": {"n": {"$ref": "#/$defs/number"}}}}
        body = problem(await gw.client.post("/api/v1/runbooks", json=bad), 422)
        assert paths(body) == ["inputSchema.properties.n.$ref"]
        good = {**echo_runbook("typed"), "inputSchema": {"$defs": {"number": {"type": "integer"}},
                                                         "properties": {"n": {"$ref": "#/$defs/number"}}}}
        await gw.register(good)
        assert paths(problem(await gw.client.post("/api/v1/executions", json={"runbookId": "typed",
                                                                             "input": {"n": "x"}}), 422)) == ["input.n"]
        assert (await gw.client.post("/api/v1/executions", json={"runbookId": "typed", "input": {"n": 1}})
                ).status_code == 201


async def test_durations_past_a_year_are_422_at_registration() -> None:
    async with running_gateway() as gw:
        doc = {"id": "slow", "timeoutMs": 10**26, "steps": [{"id": "a", "type": "echo", "timeoutMs": 10**26,
                                                             "retryPolicy": {"backoffMultiplier": 1e300}}]}
        body = problem(await gw.client.post("/api/v1/runbooks", json=doc), 422)
        assert paths(body) == ["timeoutMs", "steps[0].timeoutMs", "steps[0].retryPolicy.backoffMultiplier"]


@pytest.mark.parametrize(("query", "status", "path"), [
    ("/api/v1/runbooks/echo?version=1.0", 200, None),  # a JSON Schema integer, written as a float
    ("/api/v1/runbooks/echo?version=1275711.0", 404, None),
    ("/api/v1/runbooks/echo?version=1.5", 400, "version"),
    ("/api/v1/runbooks/echo?version=" + "9" * 27, 422, "version"),
    ("/api/v1/runbooks/echo?version=1e999999999", 422, "version"),
    ("/api/v1/executions?limit=5e1", 200, None),
    ("/api/v1/executions?cursor=%C2%B2", 422, "cursor"),  # a superscript two: str.isdigit() says yes
    ("/api/v1/executions?cursor=" + "9" * 25, 422, "cursor"),
    ("/api/v1/executions?runbookId=%00", 422, "runbookId"),
    ("/api/v1/runbooks?cursor=..", 422, "cursor"),
])
async def test_query_parameters_past_their_bounds_are_4xx(query: str, status: int, path: str | None) -> None:
    async with running_gateway() as gw:
        await gw.register(echo_runbook())
        response = await gw.client.get(query)
        if path is None:
            assert response.status_code == status, response.text
        else:
            assert paths(problem(response, status)) == [path]


async def test_a_float_version_in_a_start_body_counts_as_the_integer() -> None:
    async with running_gateway() as gw:
        await gw.register(echo_runbook())
        response = await gw.client.post("/api/v1/executions", json={"runbookId": "echo", "version": 1.0})
        assert response.status_code == 201, response.text
        assert response.json()["runbookVersion"] == 1
        response = await gw.client.post("/api/v1/executions", json={"runbookId": "echo", "version": 749751.0})
        assert response.status_code == 404
        assert "version 749751 of runbook" in response.json()["detail"]
