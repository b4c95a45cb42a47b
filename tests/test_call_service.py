"""The call-service step type against a real local HTTP service (tests/fake_service.py)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
import trio

from runtime.io.context import Services, StepContext
from runtime.io.http import call_service, retry_after_s
from runtime.kinds.call_service import check_config
from runtime.model.errors import Problem, StepFailed
from tests.fake_service import FakeService, Response, fake_service, refused_url


@pytest.fixture(name="svc")
async def _svc() -> AsyncIterator[FakeService]:
    async with fake_service() as svc:
        yield svc


@pytest.fixture(name="client")
async def _client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def make_ctx(
    client: httpx.AsyncClient, config: dict[str, Any], *, base_url: str | None = None,
    attempt: int = 1, iteration: int | None = None,
) -> StepContext:
    services = Services(http=client, now=lambda: datetime.now(UTC), call_service_base_url=base_url)
    return StepContext(
        config=config, scope={}, execution_id="ex-1", step_id="deploy", tenant_id="acme",
        attempt=attempt, services=services, iteration=iteration,
    )


async def run(client: httpx.AsyncClient, config: dict[str, Any], **kwargs: Any) -> Any:
    return await call_service(make_ctx(client, config, **kwargs))


async def fail(client: httpx.AsyncClient, config: dict[str, Any], **kwargs: Any) -> StepFailed:
    with pytest.raises(StepFailed) as info:
        await run(client, config, **kwargs)
    return info.value


# ---- success -------------------------------------------------------------------------------


async def test_json_response_is_parsed(svc: FakeService, client: httpx.AsyncClient) -> None:
    svc.script("/status", Response(json={"state": "green", "replicas": [1, 2]}))
    assert await run(client, {"url": f"{svc.url}/status"}) == {"state": "green", "replicas": [1, 2]}


async def test_default_answer_of_the_fake(svc: FakeService, client: httpx.AsyncClient) -> None:
    assert await run(client, {"url": f"{svc.url}/anything"}) == {"ok": True, "path": "/anything"}


async def test_plus_json_content_type_is_parsed(svc: FakeService, client: httpx.AsyncClient) -> None:
    body = '{"title": "oops"}'
    svc.script("/p", Response(text=body, headers={"Content-Type": "application/problem+json"}))
    assert await run(client, {"url": f"{svc.url}/p"}) == {"title": "oops"}


async def test_text_response_is_returned_as_text(svc: FakeService, client: httpx.AsyncClient) -> None:
    svc.script("/hello", Response(text="hello, world"))
    assert await run(client, {"url": f"{svc.url}/hello"}) == "hello, world"


async def test_method_query_body_and_headers_are_sent(svc: FakeService, client: httpx.AsyncClient) -> None:
    config = {
        "url": f"{svc.url}/deploy", "method": "post", "query": {"env": "prod", "n": 3, "dry": False},
        "headers": {"Authorization": "Bearer t0ken", "X-Custom": "yes"},
        "body": {"service": "api", "version": "1.2.3", "tags": ["a", None]},
    }
    await run(client, config)
    [seen] = svc.requests
    assert (seen.method, seen.path) == ("POST", "/deploy")
    assert seen.query == {"env": "prod", "n": "3", "dry": "false"}
    assert seen.json == {"service": "api", "version": "1.2.3", "tags": ["a", None]}
    assert seen.headers["content-type"] == "application/json"
    assert seen.headers["authorization"] == "Bearer t0ken"
    assert seen.headers["x-custom"] == "yes"


async def test_no_body_without_body_config(svc: FakeService, client: httpx.AsyncClient) -> None:
    await run(client, {"url": f"{svc.url}/x", "method": "DELETE"})
    [seen] = svc.requests
    assert (seen.method, seen.body) == ("DELETE", "")
    assert "content-type" not in seen.headers


async def test_engine_headers_are_sent(svc: FakeService, client: httpx.AsyncClient) -> None:
    # A config header cannot impersonate another tenant.
    await run(client, {"url": f"{svc.url}/x", "headers": {"X-Tenant-Id": "evil"}})
    headers = svc.requests[0].headers
    assert headers["x-tenant-id"] == "acme"
    assert headers["x-execution-id"] == "ex-1"
    assert len(headers["x-request-id"]) == 32
    int(headers["x-request-id"], 16)


async def test_idempotency_key_is_the_same_on_every_attempt(svc: FakeService, client: httpx.AsyncClient) -> None:
    await run(client, {"url": f"{svc.url}/x"}, attempt=1)
    await run(client, {"url": f"{svc.url}/x"}, attempt=2)
    first, second = (r.headers for r in svc.requests)
    assert first["idempotency-key"] == second["idempotency-key"] == "ex-1:deploy"
    assert first["x-request-id"] != second["x-request-id"]


async def test_idempotency_key_in_a_loop_iteration(svc: FakeService, client: httpx.AsyncClient) -> None:
    await run(client, {"url": f"{svc.url}/x"}, iteration=3)
    assert svc.requests[0].headers["idempotency-key"] == "ex-1:deploy:3"


async def test_explicit_idempotency_key(svc: FakeService, client: httpx.AsyncClient) -> None:
    await run(client, {"url": f"{svc.url}/x", "idempotencyKey": "order-42"}, attempt=1)
    await run(client, {"url": f"{svc.url}/x", "idempotencyKey": "order-42"}, attempt=2)
    assert [r.headers["idempotency-key"] for r in svc.requests] == ["order-42", "order-42"]


async def test_relative_url_joins_the_base_url(svc: FakeService, client: httpx.AsyncClient) -> None:
    await run(client, {"url": "/v1/deploy"}, base_url=f"{svc.url}/api/")
    await run(client, {"url": "v1/deploy"}, base_url=f"{svc.url}/api")
    assert [r.path for r in svc.requests] == ["/api/v1/deploy", "/api/v1/deploy"]


async def test_relative_url_without_base_url_is_a_config_error(client: httpx.AsyncClient) -> None:
    error = await fail(client, {"url": "/v1/deploy"})
    assert (error.error_code, error.retryable) == ("config", False)
    assert "/v1/deploy" in error.message


@pytest.mark.parametrize(
    "config",
    [
        {"url": "ftp://svc/x"},
        {"url": "http://[bad/x"},
        {"url": "SVC/x", "headers": {"A": "ünï"}},
        {"url": "SVC/x", "headers": {"A": "x\r\nB: y"}},
    ],
)
async def test_requests_that_cannot_be_made_are_config_errors(
    svc: FakeService, client: httpx.AsyncClient, config: dict[str, Any]
) -> None:
    error = await fail(client, {**config, "url": config["url"].replace("SVC", svc.url)})
    assert (error.error_code, error.retryable) == ("config", False)


async def test_expect_status_makes_404_a_success(svc: FakeService, client: httpx.AsyncClient) -> None:
    svc.script("/gone", Response(404, json={"found": False}))
    assert await run(client, {"url": f"{svc.url}/gone", "expectStatus": [404]}) == {"found": False}


async def test_expect_status_makes_200_a_failure(svc: FakeService, client: httpx.AsyncClient) -> None:
    error = await fail(client, {"url": f"{svc.url}/made", "expectStatus": [201]})
    assert (error.error_code, error.retryable) == ("http_status", False)


async def test_head_with_json_content_type_gives_none(svc: FakeService, client: httpx.AsyncClient) -> None:
    assert await run(client, {"url": f"{svc.url}/x", "method": "HEAD"}) is None


# ---- failures ------------------------------------------------------------------------------


async def test_503_is_retryable(svc: FakeService, client: httpx.AsyncClient) -> None:
    svc.script("/deploy", Response(503, text="busy"))
    error = await fail(client, {"url": f"{svc.url}/deploy", "method": "POST"})
    assert (error.error_code, error.retryable, error.retry_after_s) == ("http_status", True, None)
    assert error.message == f"POST {svc.url}/deploy answered 503"


async def test_429_with_retry_after_seconds(svc: FakeService, client: httpx.AsyncClient) -> None:
    svc.script("/x", Response(429, headers={"Retry-After": "2"}))
    error = await fail(client, {"url": f"{svc.url}/x"})
    assert (error.error_code, error.retryable, error.retry_after_s) == ("http_status", True, 2)


async def test_503_with_retry_after_date(svc: FakeService, client: httpx.AsyncClient) -> None:
    when = datetime.now(UTC) + timedelta(seconds=120)
    svc.script("/x", Response(503, headers={"Retry-After": format_datetime(when, usegmt=True)}))
    error = await fail(client, {"url": f"{svc.url}/x"})
    assert error.retry_after_s is not None and 100 < error.retry_after_s <= 120


def test_retry_after_parsing() -> None:
    now = datetime(2025, 1, 1, tzinfo=UTC)
    assert retry_after_s(None, now) is None
    assert retry_after_s(" 7 ", now) == 7
    assert retry_after_s("soon", now) is None
    assert retry_after_s("-3", now) is None
    assert retry_after_s("Wed, 01 Jan 2025 00:00:30 GMT", now) == 30
    assert retry_after_s("Tue, 31 Dec 2024 23:00:00 GMT", now) == 0


async def test_404_is_not_retryable(svc: FakeService, client: httpx.AsyncClient) -> None:
    svc.script("/deploy", Response(404, text="no such service"))
    error = await fail(client, {"url": f"{svc.url}/deploy", "method": "POST"})
    assert (error.error_code, error.retryable) == ("http_status", False)
    assert error.message == f"POST {svc.url}/deploy answered 404"


async def test_connection_refused_is_retryable(client: httpx.AsyncClient) -> None:
    with refused_url() as url:
        error = await fail(client, {"url": f"{url}/x"})
    assert (error.error_code, error.retryable) == ("connection", True)
    assert f"GET {url}/x" in error.message


async def test_slow_endpoint_times_out(svc: FakeService, client: httpx.AsyncClient) -> None:
    svc.script("/slow", Response(json={}, delay_s=2))
    started = time.monotonic()
    error = await fail(client, {"url": f"{svc.url}/slow", "timeoutMs": 100})
    assert (error.error_code, error.retryable) == ("timeout", True)
    assert time.monotonic() - started < 1.5  # a bound, not a timing assertion


async def test_cancellation_aborts_a_call_in_flight(svc: FakeService, client: httpx.AsyncClient) -> None:
    svc.script("/slow", Response(json={}, delay_s=30))
    started = time.monotonic()
    with trio.move_on_after(0.2) as scope:
        await run(client, {"url": f"{svc.url}/slow"})
    assert scope.cancelled_caught
    assert time.monotonic() - started < 5  # a bound, not a timing assertion
    assert svc.count("/slow") == 1


async def test_fake_service_stops_with_a_slow_request_in_flight(client: httpx.AsyncClient) -> None:
    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        async with fake_service() as svc:
            svc.script("/slow", Response(json={}, delay_s=30))
            nursery.start_soon(_swallow_errors, client, f"{svc.url}/slow")
            await svc.wait_for("/slow")
        nursery.cancel_scope.cancel()
    assert time.monotonic() - started < 5


async def _swallow_errors(client: httpx.AsyncClient, url: str) -> None:
    try:
        await client.get(url)
    except httpx.HTTPError:
        pass


# ---- evidence and logs ---------------------------------------------------------------------


async def test_evidence_on_success(svc: FakeService, client: httpx.AsyncClient) -> None:
    answer = Response(json={"id": 7, "name": "ünïcode"})
    svc.script("/x", answer)
    ctx = make_ctx(client, {"url": f"{svc.url}/x", "method": "PUT"})
    await call_service(ctx)
    [item] = ctx.evidence
    assert item.kind == "http_response"
    assert item.data == {
        "method": "PUT", "url": f"{svc.url}/x", "status": 200,
        "bodySha256": hashlib.sha256(answer.body()).hexdigest(),
        "requestId": svc.requests[0].headers["x-request-id"],
    }


async def test_evidence_on_failure(svc: FakeService, client: httpx.AsyncClient) -> None:
    svc.script("/x", Response(500, text="boom"))
    ctx = make_ctx(client, {"url": f"{svc.url}/x"})
    with pytest.raises(StepFailed):
        await call_service(ctx)
    [item] = ctx.evidence
    assert (item.data["status"], item.data["bodySha256"]) == (500, hashlib.sha256(b"boom").hexdigest())


async def test_no_evidence_without_a_response(client: httpx.AsyncClient) -> None:
    with refused_url() as url:
        ctx = make_ctx(client, {"url": url})
        with pytest.raises(StepFailed):
            await call_service(ctx)
    assert ctx.evidence == []


async def test_logs(svc: FakeService, client: httpx.AsyncClient) -> None:
    ctx = make_ctx(client, {"url": f"{svc.url}/x", "method": "patch"})
    await call_service(ctx)
    calling, answered = ctx.logs
    assert (calling.level, calling.message, calling.step_id) == ("info", "calling service", "deploy")
    assert calling.data == {"method": "PATCH", "url": f"{svc.url}/x"}
    assert answered.message == "service answered"
    assert answered.data["status"] == 200
    assert isinstance(answered.data["elapsedMs"], int) and answered.data["elapsedMs"] >= 0


# ---- MockTransport -------------------------------------------------------------------------


async def test_invalid_json_body_fails_without_retry() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"{not json", headers={"Content-Type": "application/json"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        error = await fail(client, {"url": "https://svc.test/x"})
    assert (error.error_code, error.retryable) == ("executor", False)


async def test_transport_timeout_maps_to_timeout() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        error = await fail(client, {"url": "https://svc.test/x"})
    assert (error.error_code, error.retryable) == ("timeout", True)


async def test_invalid_config_at_run_time_is_a_config_error(client: httpx.AsyncClient) -> None:
    # A template may resolve to a value of the wrong type.
    error = await fail(client, {"url": "https://svc.test/x", "timeoutMs": "soon"})
    assert (error.error_code, error.retryable) == ("config", False)
    assert "config.timeoutMs" in error.message


# ---- check_config --------------------------------------------------------------------------


def test_check_config_accepts_a_full_config() -> None:
    config = {
        "url": "https://svc/deploy", "method": "Post", "headers": {"A": "${input.token}"},
        "query": {"a": 1, "b": "x", "c": True, "d": None, "e": 1.5}, "body": {"k": [1, {"z": None}]},
        "timeoutMs": 500, "expectStatus": [200, 404], "idempotencyKey": "k-${executionId}",
        "protocol": "http",
    }
    assert check_config(config, "steps[0].config") == []
    assert check_config({"url": "/relative"}, "c") == []


def test_check_config_accepts_whole_templates_for_typed_fields() -> None:
    config = {"url": "${input.url}", "timeoutMs": "${input.timeout}", "expectStatus": "${input.codes}"}
    assert check_config(config, "c") == []


def test_check_config_hands_grpc_to_its_own_checks() -> None:
    assert [p.path for p in check_config({"url": "svc:50051", "protocol": "grpc"}, "c")] == [
        "c.url", "c.target", "c.service", "c.method"]
    assert check_config({"url": "x", "protocol": "ftp"}, "c") == [
        Problem("c.protocol", "unknown protocol: 'http' (the default) or 'grpc'")]


def test_check_config_lists_every_problem() -> None:
    config = {
        "method": "FETCH", "headers": {"A": 1, "B": "ok"}, "query": {"q": [1]}, "body": {1: "x"},
        "timeoutMs": 0, "expectStatus": [200, 99, True], "idempotencyKey": 5, "extra": 1,
    }
    problems = check_config(config, "steps[1].config")
    assert {(p.path, p.message.split(" ")[0]) for p in problems} == {
        ("steps[1].config.extra", "unknown"),
        ("steps[1].config.url", "required:"),
        ("steps[1].config.method", "must"),
        ("steps[1].config.headers.A", "must"),
        ("steps[1].config.query.q", "must"),
        ("steps[1].config.body", "must"),
        ("steps[1].config.timeoutMs", "must"),
        ("steps[1].config.expectStatus[1]", "must"),
        ("steps[1].config.expectStatus[2]", "must"),
        ("steps[1].config.idempotencyKey", "must"),
    }
    assert ("steps[1].config.extra", "unknown field 'extra'") in [(p.path, p.message) for p in problems]


@pytest.mark.parametrize(
    ("config", "path"),
    [
        ({"url": ""}, "c.url"),
        ({"url": 3}, "c.url"),
        ({"url": "x", "timeoutMs": True}, "c.timeoutMs"),
        ({"url": "x", "timeoutMs": 1.5}, "c.timeoutMs"),
        ({"url": "x", "expectStatus": []}, "c.expectStatus"),
        ({"url": "x", "expectStatus": 200}, "c.expectStatus"),
        ({"url": "x", "headers": ["A"]}, "c.headers"),
        ({"url": "x", "query": "a=1"}, "c.query"),
        ({"url": "x", "body": float("nan")}, "c.body"),
        ({"url": "x", "method": 1}, "c.method"),
    ],
)
def test_check_config_single_problems(config: dict[str, Any], path: str) -> None:
    assert [p.path for p in check_config(config, "c")] == [path]
