"""The edge of the gateway over real HTTP: problems, bad input, auth, CORS, logging, health,
metrics and the OpenAPI document."""

from __future__ import annotations

import json
import logging
import pathlib
from typing import Any

import jsonschema
import pytest

from gateway.routes import openapi_path
from tests.gateway_fixtures import approval_runbook, echo_runbook, running_gateway

PROBLEM = "application/problem+json"


def _problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert {"type", "title", "status", "detail"} <= set(body)
    return body


# ---------------------------------------------------------------------------- problems

async def test_unknown_routes_and_methods_are_problems() -> None:
    async with running_gateway() as gw:
        _problem(await gw.client.get("/api/v1/nothing-here"), 404)
        not_allowed = await gw.client.delete("/api/v1/executions")
        _problem(not_allowed, 405)
        assert "GET" in not_allowed.headers["Allow"]


async def test_bad_json_bodies_are_400_and_never_500() -> None:
    async with running_gateway() as gw:
        url = "/api/v1/events"
        cases = {
            "malformed": b'{"type": "a", ',
            "not utf-8": b'{"type": "\xc3\x28", "correlationKey": "k"}',
            "deeply nested": b"[" * 100_000 + b"]" * 100_000,
            "nested past the limit": b'{"type": "a", "correlationKey": "k", "payload": ' + b"[" * 70 + b"]" * 70 + b"}",
            "NaN": b'{"type": "a", "correlationKey": "k", "payload": NaN}',
            "huge exponent": b'{"type": "a", "correlationKey": "k", "payload": 1e999}',
            "too many digits": b'{"type": "a", "correlationKey": "k", "payload": ' + b"9" * 5000 + b"}",
        }
        for name, content in cases.items():
            response = await gw.client.post(url, content=content, headers={"Content-Type": "application/json"})
            body = _problem(response, 400)
            assert body["errors"], name
        ok = b'{"type": "a", "correlationKey": "k", "payload": ' + b"[" * 60 + b"]" * 60 + b"}"
        assert (await gw.client.post(url, content=ok)).status_code == 202
        _problem(await gw.client.post(url, content=b"{}", headers={"Content-Type": "text/plain"}), 415)


async def test_bodies_over_1_mib_are_413_and_the_server_stays_usable() -> None:
    async with running_gateway() as gw:
        big = {"runbookId": "x", "input": {"blob": "a" * (1024 * 1024)}}
        _problem(await gw.client.post("/api/v1/executions", json=big), 413)
        _problem(await gw.client.post("/api/v1/events", content=b"{" + b" " * (2 * 1024 * 1024) + b"}"), 413)
        assert (await gw.client.get("/health")).status_code == 200


async def test_unexpected_errors_are_logged_500_problems(caplog: pytest.LogCaptureFixture) -> None:
    async with running_gateway() as gw:

        async def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("secret internals")

        gw.runtime.fetch = broken  # type: ignore[method-assign]
        with caplog.at_level(logging.ERROR, logger="runbooks.gateway"):
            response = await gw.client.get("/api/v1/executions/any")
        body = _problem(response, 500)
        assert "secret" not in body["detail"]
        assert any(record.exc_info and "secret internals" in str(record.exc_info[1]) for record in caplog.records)


async def test_an_exception_group_from_the_engine_is_answered_as_its_error() -> None:
    from runtime import NotFound

    async with running_gateway() as gw:

        async def grouped(*args: Any, **kwargs: Any) -> Any:
            raise ExceptionGroup("from a nursery", [NotFound("execution x not found")])

        gw.runtime.fetch = grouped  # type: ignore[method-assign]
        _problem(await gw.client.get("/api/v1/executions/x"), 404)


async def test_a_runbook_id_that_names_an_operation_is_reserved() -> None:
    # OpenAPI matches the concrete path /api/v1/runbooks/validate (POST only) before the
    # template /api/v1/runbooks/{runbookId}: a GET there is not a runbook lookup but a 405.
    async with running_gateway() as gw:
        refused = await gw.client.post("/api/v1/runbooks", json=echo_runbook("validate"))
        assert refused.status_code == 422
        assert refused.json()["errors"][0]["path"] == "id"
        for method in ("GET", "OPTIONS"):
            response = await gw.client.request(method, "/api/v1/runbooks/validate")
            assert response.status_code == (405 if method == "GET" else 200)
            assert {m.strip() for m in response.headers["Allow"].split(",")} == {"OPTIONS", "POST"}
        await gw.register(echo_runbook("validated"))
        assert (await gw.client.get("/api/v1/runbooks/validated")).status_code == 200


# ---------------------------------------------------------------------------- identity

def _tokens_file(tmp_path: pathlib.Path) -> str:
    path = tmp_path / "tokens.yaml"
    path.write_text(
        "tokens:\n"
        "  - {token: tok-alice-0123456789, user: alice, tenant: acme, roles: [operator, author]}\n"
        "  - {token: tok-boss-0123456789, user: boss, tenant: acme, roles: [viewer, approver]}\n"
        "  - {token: tok-eve-0123456789, user: eve, tenant: other}\n"
    )
    return str(path)


async def test_token_mode_requires_a_bearer_token(tmp_path: pathlib.Path) -> None:
    async with running_gateway({"RUNBOOKS_TOKENS_FILE": _tokens_file(tmp_path)}) as gw:
        assert (await gw.client.get("/health")).status_code == 200
        assert (await gw.client.get("/metrics")).status_code == 200
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"},
                        {"Authorization": "Bearer"}, {"X-User-Id": "alice", "X-Tenant-Id": "acme"}):
            response = await gw.client.get("/api/v1/executions", headers=headers)
            _problem(response, 401)
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
        _problem(await gw.client.post("/api/v1/runbooks", json=echo_runbook()), 401)
        _problem(await gw.client.get("/api/v1/openapi.json"), 401)
        alice = {"Authorization": "Bearer tok-alice-0123456789"}
        assert (await gw.client.get("/api/v1/executions", headers=alice)).status_code == 200


async def test_identity_comes_from_the_token(tmp_path: pathlib.Path) -> None:
    async with running_gateway({"RUNBOOKS_TOKENS_FILE": _tokens_file(tmp_path)}) as gw:
        alice = {"Authorization": "Bearer tok-alice-0123456789", "X-Tenant-Id": "other", "X-User-Id": "boss"}
        boss = {"Authorization": "Bearer tok-boss-0123456789"}
        eve = {"Authorization": "Bearer tok-eve-0123456789"}
        await gw.register(approval_runbook(), headers=alice)
        execution = await gw.start("approve-me", {"value": 1}, headers=alice)
        assert (execution["tenantId"], execution["context"]["userId"]) == ("acme", "alice")
        await gw.wait_for(execution["id"], "awaiting_approval", headers=boss)
        url = f"/api/v1/executions/{execution['id']}/steps/approve/approvals"
        _problem(await gw.client.post(url, json={"decision": "approve"}, headers=alice), 403)  # not an approver
        _problem(await gw.client.post(url, json={"decision": "approve"}, headers=eve), 404)  # another tenant
        approved = await gw.client.post(url, json={"decision": "approve"}, headers=boss)
        assert approved.status_code == 200
        assert approved.json()["steps"]["approve"]["approvals"][0]["approver"] == "boss"


async def test_development_identity_headers_are_checked() -> None:
    async with running_gateway() as gw:
        response = await gw.client.get("/api/v1/executions", headers={"X-Tenant-Id": "t" * 500})
        body = _problem(response, 400)
        assert body["errors"][0]["path"] == "X-Tenant-Id"


# ---------------------------------------------------------------------------- CORS and logging

async def test_cors_headers_and_preflight() -> None:
    env = {"ENABLE_CORS": "true", "CORS_ORIGINS": "https://ops.example.com, https://admin.example.com"}
    async with running_gateway(env) as gw:
        allowed = await gw.client.get("/health", headers={"Origin": "https://ops.example.com"})
        assert allowed.headers["Access-Control-Allow-Origin"] == "https://ops.example.com"
        other = await gw.client.get("/health", headers={"Origin": "https://evil.example.com"})
        assert "Access-Control-Allow-Origin" not in other.headers
        preflight = await gw.client.options("/api/v1/executions", headers={
            "Origin": "https://admin.example.com", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})
        assert preflight.status_code == 204
        assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
        assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
        assert preflight.headers["Access-Control-Allow-Origin"] == "https://admin.example.com"
    async with running_gateway() as gw:
        plain = await gw.client.get("/health", headers={"Origin": "https://ops.example.com"})
        assert "Access-Control-Allow-Origin" not in plain.headers


async def test_one_log_line_per_request(caplog: pytest.LogCaptureFixture) -> None:
    async with running_gateway({"DETAILED_LOGGING": "true"}) as gw:
        with caplog.at_level(logging.INFO, logger="runbooks.gateway"):
            response = await gw.client.get("/api/v1/executions/abc", headers={"X-Request-Id": "req-1",
                                                                               "X-Tenant-Id": "t9"})
        assert response.headers["X-Request-Id"] == "req-1"
        lines = [r for r in caplog.records if r.name == "runbooks.gateway" and r.getMessage().startswith("request ")]
        assert len(lines) == 1
        message = lines[0].getMessage()
        for part in ("method=GET", "route=/api/v1/executions/<execution_id>", "status=404", "ms=",
                     "tenant=t9", "request_id=req-1"):
            assert part in message, message


# ---------------------------------------------------------------------------- health, metrics

async def test_health_and_readiness() -> None:
    async with running_gateway() as gw:
        for path in ("/health", "/health/live", "/health/ready"):
            response = await gw.client.get(path)
            assert (response.status_code, response.json()) == (200, {"status": "ok"})

        async def not_ready() -> None:
            raise ConnectionError("database is down")

        gw.runtime.ready = not_ready  # type: ignore[method-assign]
        _problem(await gw.client.get("/health/ready"), 503)
        assert (await gw.client.get("/health/live")).status_code == 200


async def test_metrics_after_some_activity() -> None:
    async with running_gateway() as gw:
        await gw.register(echo_runbook())
        execution = await gw.start("echo", {"n": 1})
        await gw.wait_for(execution["id"], "completed")
        await gw.client.get("/api/v1/executions/missing")
        response = await gw.client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        text = response.text
        for family in (
            "runbooks_executions_started_total 1.0",
            'runbooks_executions_finished_total{status="completed"} 1.0',
            'runbooks_steps_finished_total{outcome="succeeded",type="echo"} 1.0',
            'runbooks_step_duration_seconds_count{type="echo"} 1.0',
            "runbooks_persistence_batch_size_count",
            "runbooks_persistence_commit_seconds_count",
            "runbooks_open_executions 0.0",
            "runbooks_runbooks_registered_total 1.0",
            'runbooks_http_requests_total{method="GET",route="/api/v1/executions/<execution_id>",status="404"} 1.0',
            'runbooks_http_request_duration_seconds_count{method="POST",route="/api/v1/executions"} 1.0',
        ):
            assert family in text, family


async def test_open_executions_gauge_counts_live_executions() -> None:
    async with running_gateway() as gw:
        await gw.register(approval_runbook())
        execution = await gw.start("approve-me", {"value": 1})
        await gw.wait_for(execution["id"], "awaiting_approval")
        assert "runbooks_open_executions 1.0" in (await gw.client.get("/metrics")).text


# ---------------------------------------------------------------------------- OpenAPI

async def test_openapi_describes_every_registered_route() -> None:
    async with running_gateway() as gw:
        response = await gw.client.get("/api/v1/openapi.json")
        assert response.status_code == 200
        document = response.json()
        assert document["openapi"].startswith("3.1")
        described = {(path, method.upper()) for path, item in document["paths"].items() for method in item}
        registered = {
            (openapi_path(rule.rule), method)
            for rule in gw.app.url_map.iter_rules()
            for method in rule.methods or ()
            if method not in ("HEAD", "OPTIONS")
            and not rule.endpoint.startswith(("console", "decision_link"))  # pages, not API
        }
        assert registered == described
        for path, item in document["paths"].items():
            for operation in item.values():
                assert "500" in operation["responses"], path
                names = {p["name"] for p in operation["parameters"] if p["in"] == "path"}
                assert names == {part[1:-1] for part in path.split("/") if part.startswith("{")}, path


async def test_openapi_schemas_are_valid_and_refs_resolve() -> None:
    async with running_gateway() as gw:
        document = (await gw.client.get("/api/v1/openapi.json")).json()
    for name, schema in document["components"]["schemas"].items():
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as error:
            raise AssertionError(f"components.schemas.{name}: {error.message}") from None
    text = json.dumps(document)
    for ref in {part.split('"')[0] for part in text.split('"$ref": "')[1:]}:
        section, kind, name = ref.removeprefix("#/").split("/")
        assert name in document[section][kind], ref
    try:
        from openapi_spec_validator import validate  # type: ignore[import-not-found]
    except ImportError:
        return
    validate(document)
