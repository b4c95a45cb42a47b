"""A ``Host`` header in a call-service config is refused: it would reach another virtual host
at an address the allowlist admits under the URL's name. Refused at validation in any case
(422 naming the header's path), and when it comes through a template the step fails
(``config``) before any request is sent. gRPC's ``host`` metadata likewise."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from runtime import ValidationError, open_runtime
from tests.gateway_fixtures import running_gateway


def call(headers: Any) -> dict[str, Any]:
    return {"id": "probe", "steps": [{"id": "call", "type": "call-service", "retryPolicy": {"maxRetries": 0},
                                      "config": {"url": "http://allowed.example/", "headers": headers}}]}


@pytest.mark.parametrize("name", ["Host", "host", "HOST", "hOsT"])
async def test_a_host_header_is_refused_at_registration_with_its_path(name: str) -> None:
    async with running_gateway() as gw:
        response = await gw.client.post("/api/v1/runbooks", json=call({name: "internal.admin", "X-Ok": "1"}))
    assert response.status_code == 422
    paths = [problem["path"] for problem in response.json()["errors"]]
    assert paths == [f"steps[0].config.headers.{name}"]


async def test_a_host_header_through_a_template_fails_the_step_before_any_request() -> None:
    sent: list[httpx.Request] = []
    transport = httpx.MockTransport(lambda request: sent.append(request) or httpx.Response(200, json={}))
    async with httpx.AsyncClient(transport=transport) as http, open_runtime("memory", http=http) as rt:
        await rt.register_runbook(call("${input.headers}"))
        execution = await rt.wait((await rt.start("probe", {"headers": {"hOsT": "internal.admin"}})).id)
    assert sent == []
    error = execution.steps["call"].error
    assert execution.status.value == "failed" and error is not None and error.code == "config"
    assert "config.headers.hOsT" in error.message and "Host header" in error.message


async def test_grpc_host_metadata_is_refused_at_validation() -> None:
    step = {"id": "call", "type": "call-service", "config": {
        "protocol": "grpc", "target": "allowed.example:443", "service": "demo.Svc", "method": "Get",
        "metadata": {"host": "internal.admin"}}}
    async with open_runtime("memory") as rt:
        with pytest.raises(ValidationError) as caught:
            await rt.register_runbook({"id": "probe", "steps": [step]})
    assert [p.path for p in caught.value.problems] == ["steps[0].config.metadata.host"]
