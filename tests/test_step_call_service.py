"""call-service through the engine (register, start, wait) against a real local HTTP
service (tests/fake_service.py). These tests run on the real clock: delays are a few ms."""

from __future__ import annotations

import hashlib
import pathlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from runtime import Runtime, Settings, ValidationError, open_runtime
from runtime.model.wire import sha256_hex
from tests.conftest import Recorder
from tests.fake_service import FakeService, Response, fake_service, refused_url

FAST = {"initialDelayMs": 10, "backoffMultiplier": 2, "jitter": False}


@pytest.fixture
async def svc() -> AsyncIterator[FakeService]:
    async with fake_service() as service:
        yield service


@pytest.fixture
async def crt(svc: FakeService, recorder: Recorder) -> AsyncIterator[Runtime]:
    settings = Settings(default_max_retries=0, call_service_base_url=svc.url)
    async with open_runtime("memory", settings=settings) as runtime:
        runtime.register_executor("echo", recorder.echo)
        yield runtime


def call(config: dict[str, Any], rid: str = "cs", **step: Any) -> dict[str, Any]:
    return {"id": rid, "steps": [{"id": "call", "type": "call-service", "config": config, **step}]}


async def run(rt: Runtime, doc: dict[str, Any], *, limit_s: float = 5, **start: Any) -> Any:
    await rt.register_runbook(doc)
    execution = await rt.start(doc["id"], **start)
    with trio.fail_after(limit_s):
        return await rt.wait(execution.id)


async def until(rt: Runtime, execution_id: str, predicate: Any) -> Any:
    async for execution in rt.watch(execution_id):
        if predicate(execution):
            return execution
    raise AssertionError("execution finished before the condition held")


# ---- request ---------------------------------------------------------------------------------


async def test_relative_url_resolves_against_base_url_and_json_output(crt: Runtime, svc: FakeService) -> None:
    svc.script("/builds/api/42", Response(json={"status": "green", "artifacts": [1, 2]}))
    final = await run(crt, call({"url": "/builds/api/42"}))
    assert final.status == "completed"
    assert final.steps["call"].output == {"status": "green", "artifacts": [1, 2]}
    assert final.output == {"status": "green", "artifacts": [1, 2]}
    (request,) = svc.requests
    assert (request.method, request.path) == ("GET", "/builds/api/42")  # GET is the default


async def test_absolute_url_is_used_as_is(svc: FakeService) -> None:
    settings = Settings(default_max_retries=0, call_service_base_url="http://127.0.0.1:9/unused")
    async with open_runtime("memory", settings=settings) as rt:
        final = await run(rt, call({"url": f"{svc.url}/abs"}))
    assert final.status == "completed"
    assert final.steps["call"].output == {"ok": True, "path": "/abs"}


async def test_relative_url_without_base_url_fails_without_retry(svc: FakeService) -> None:
    async with open_runtime("memory", settings=Settings(default_max_retries=3)) as rt:
        final = await run(rt, call({"url": "/deploy"}))
    assert final.status == "failed"
    assert final.steps["call"].attempts == 1
    assert "CALL_SERVICE_BASE_URL" in final.error.message
    assert svc.requests == []


async def test_text_response_is_returned_as_text(crt: Runtime, svc: FakeService) -> None:
    svc.script("/motd", Response(text="all systems nominal"))
    final = await run(crt, call({"url": "/motd"}))
    assert final.steps["call"].output == "all systems nominal"


async def test_method_headers_query_and_json_body_are_templated_and_sent(crt: Runtime, svc: FakeService) -> None:
    config = {
        "url": "/deploy/${input.service}",
        "method": "post",
        "headers": {"X-Change": "CHG-${input.change}", "X-Tenant-Id": "spoofed"},
        "query": {"env": "${input.env}", "dry": False},
        "body": {"version": "${input.version}", "hosts": "${input.hosts}", "note": "v${input.version} by {tenantId}"},
    }
    final = await run(crt, call(config), input={"service": "api", "change": 7, "env": "prod", "version": 3,
                                                  "hosts": ["h1", "h2"]}, context={"tenantId": "acme"})
    assert final.status == "completed"
    (request,) = svc.requests
    assert request.method == "POST" and request.path == "/deploy/api"
    assert request.query == {"env": "prod", "dry": "false"}
    assert request.headers["x-change"] == "CHG-7"
    assert request.json == {"version": 3, "hosts": ["h1", "h2"], "note": "v3 by acme"}  # types kept
    # the engine's identity headers cannot be overridden by the runbook
    assert request.headers["x-tenant-id"] == "acme"
    assert request.headers["x-execution-id"] == final.id
    assert request.headers["x-request-id"]


async def test_template_error_fails_the_step_without_a_request(crt: Runtime, svc: FakeService) -> None:
    final = await run(crt, call({"url": "/x/${input.missing}"}, retryPolicy={"maxRetries": 3, **FAST}))
    assert final.status == "failed"
    assert final.steps["call"].error.code == "template"
    assert "input.missing" in final.steps["call"].error.message
    assert svc.requests == []


async def test_the_runtime_sends_through_its_one_client(svc: FakeService) -> None:
    seen: list[str] = []

    async def hook(request: httpx.Request) -> None:
        seen.append(request.url.path)

    async with httpx.AsyncClient(event_hooks={"request": [hook]}) as client:
        settings = Settings(default_max_retries=0, call_service_base_url=svc.url)
        async with open_runtime("memory", settings=settings, http=client) as rt:
            assert rt.services.http is client
            doc = {"id": "two", "steps": [{"id": "a", "type": "call-service", "config": {"url": "/a"}},
                                          {"id": "b", "type": "call-service", "config": {"url": "/b"}}]}
            assert (await run(rt, doc)).status == "completed"
    assert seen == ["/a", "/b"]


# ---- retries and idempotency -----------------------------------------------------------------


async def test_retries_503_503_200_with_the_same_idempotency_key_and_backoff(crt: Runtime, svc: FakeService) -> None:
    svc.script("/deploy", Response(503), Response(503), Response(json={"deployed": True}))
    arrivals: list[float] = []

    async def stamp() -> None:
        for n in (1, 2, 3):
            await svc.wait_for("/deploy", n)
            arrivals.append(trio.current_time())

    doc = call({"url": "/deploy", "method": "POST", "idempotencyKey": "deploy-{executionId}"},
               retryPolicy={"maxRetries": 3, **FAST})
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stamp)
        final = await run(crt, doc)
    assert final.status == "completed"
    assert final.steps["call"].output == {"deployed": True}
    assert final.steps["call"].attempts == 3
    requests = svc.requests_to("/deploy")
    assert len(requests) == 3
    assert {r.headers["idempotency-key"] for r in requests} == {f"deploy-{final.id}"}
    assert len({r.headers["x-request-id"] for r in requests}) == 3  # one per attempt
    assert all(r.headers["x-execution-id"] == final.id for r in requests)
    first_gap, second_gap = arrivals[1] - arrivals[0], arrivals[2] - arrivals[1]
    assert 0.010 <= first_gap < 0.5  # initialDelayMs
    assert 0.020 <= second_gap < 0.5  # times backoffMultiplier
    retry_logs = [e for e in await crt.logs(final.id, step_id="call") if "retrying" in e.message]
    assert [round(float(e.message.split(" in ")[1].split(" s")[0]), 3) for e in retry_logs] == [0.01, 0.02]


async def test_default_idempotency_key_is_execution_and_step(crt: Runtime, svc: FakeService) -> None:
    svc.script("/x", Response(500), Response(json={}))
    final = await run(crt, call({"url": "/x"}, retryPolicy={"maxRetries": 1, **FAST}))
    keys = {r.headers["idempotency-key"] for r in svc.requests_to("/x")}
    assert keys == {f"{final.id}:call"}


async def test_404_fails_without_retry(crt: Runtime, svc: FakeService) -> None:
    svc.script("/gone", Response(404, json={"error": "no such build"}))
    final = await run(crt, call({"url": "/gone"}, retryPolicy={"maxRetries": 3, **FAST}))
    assert final.status == "failed"
    assert svc.count("/gone") == 1
    step = final.steps["call"]
    assert step.status == "failed" and step.attempts == 1
    assert (step.error.code, step.error.retryable) == ("http_status", False)
    assert "404" in step.error.message
    assert final.error.code == "http_status" and final.error.step_id == "call"


async def test_429_is_retried(crt: Runtime, svc: FakeService) -> None:
    svc.script("/rl", Response(429), Response(json={"ok": 1}))
    final = await run(crt, call({"url": "/rl"}, retryPolicy={"maxRetries": 1, **FAST}))
    assert final.status == "completed"
    assert svc.count("/rl") == 2


async def test_5xx_retries_stop_when_the_budget_is_spent(crt: Runtime, svc: FakeService) -> None:
    svc.script("/down", Response(502))
    final = await run(crt, call({"url": "/down"}, retryPolicy={"maxRetries": 2, **FAST}))
    assert final.status == "failed"
    assert svc.count("/down") == 3
    assert (final.steps["call"].error.code, final.steps["call"].error.retryable) == ("http_status", True)
    assert final.steps["call"].attempts == 3


async def test_retry_after_is_honoured_when_sooner_than_the_cap(crt: Runtime, svc: FakeService) -> None:
    # computed backoff would be 30 s; the server asks for 0 s, which is within maxDelayMs
    svc.script("/busy", Response(503, headers={"Retry-After": "0"}), Response(json={"ok": True}))
    policy = {"maxRetries": 1, "initialDelayMs": 30_000, "maxDelayMs": 60_000, "jitter": False}
    start = trio.current_time()
    final = await run(crt, call({"url": "/busy"}, retryPolicy=policy))
    assert final.status == "completed"
    assert trio.current_time() - start < 1


async def test_retry_after_beyond_the_cap_is_ignored(crt: Runtime, svc: FakeService) -> None:
    svc.script("/busy", Response(429, headers={"Retry-After": "3600"}), Response(json={"ok": True}))
    policy = {"maxRetries": 1, "initialDelayMs": 10, "maxDelayMs": 50, "jitter": False}
    start = trio.current_time()
    final = await run(crt, call({"url": "/busy"}, retryPolicy=policy))
    assert final.status == "completed"
    assert trio.current_time() - start < 1


async def test_expect_status_accepts_listed_and_refuses_others(crt: Runtime, svc: FakeService) -> None:
    svc.script("/exists", Response(404, json={"absent": True}))
    svc.script("/created", Response(200, json={}))
    accepted = await run(crt, call({"url": "/exists", "expectStatus": [404]}, rid="accept"))
    assert accepted.status == "completed"
    assert accepted.steps["call"].output == {"absent": True}
    refused = await run(crt, call({"url": "/created", "expectStatus": [201]}, rid="refuse",
                                  retryPolicy={"maxRetries": 2, **FAST}))
    assert refused.status == "failed"
    assert refused.steps["call"].error.code == "http_status"
    assert svc.count("/created") == 1  # a 200 outside expectStatus is not retryable


async def test_any_2xx_is_success_by_default(crt: Runtime, svc: FakeService) -> None:
    svc.script("/accepted", Response(202, text="queued"))
    final = await run(crt, call({"url": "/accepted"}))
    assert final.status == "completed" and final.steps["call"].output == "queued"


async def test_connection_error_is_retried(crt: Runtime) -> None:
    with refused_url() as url:
        final = await run(crt, call({"url": f"{url}/x"}, retryPolicy={"maxRetries": 1, **FAST}))
    step = final.steps["call"]
    assert final.status == "failed"
    assert step.attempts == 2
    assert (step.error.code, step.error.retryable) == ("connection", True)


async def test_slow_endpoint_hits_timeout_ms_and_the_timeout_is_retried(crt: Runtime, svc: FakeService) -> None:
    svc.script("/slow", Response(json={}, delay_s=5))
    start = trio.current_time()
    final = await run(crt, call({"url": "/slow", "timeoutMs": 100}, retryPolicy={"maxRetries": 1, **FAST}))
    elapsed = trio.current_time() - start
    step = final.steps["call"]
    assert final.status == "failed"
    assert (step.error.code, step.error.retryable) == ("timeout", True)
    assert step.attempts == 2 and svc.count("/slow") == 2
    assert 0.2 <= elapsed < 1.5


async def test_default_timeout_is_30_seconds(autojump_clock: Any) -> None:
    # No real I/O here: a mock transport that sleeps on the (virtual) Trio clock.
    async def handler(request: httpx.Request) -> httpx.Response:
        await trio.sleep(3600)
        return httpx.Response(200, json={})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        settings = Settings(default_max_retries=0, call_service_base_url="http://svc.test")
        async with open_runtime("memory", settings=settings, http=client) as rt:
            final = await run(rt, call({"url": "/slow"}), limit_s=3600)
    assert final.steps["call"].error.code == "timeout"
    assert trio.current_time() == pytest.approx(30)


async def test_cancel_during_a_slow_call_aborts_it_promptly(crt: Runtime, svc: FakeService) -> None:
    svc.script("/slow", Response(json={}, delay_s=10))
    await crt.register_runbook(call({"url": "/slow"}))
    ex = await crt.start("cs")
    with trio.fail_after(2):
        await svc.wait_for("/slow")
    start = trio.current_time()
    cancelled = await crt.cancel(ex.id, reason="operator abort")
    final = await crt.wait(ex.id)
    assert trio.current_time() - start < 0.5
    assert cancelled.status == "cancelled" and final.status == "cancelled"
    assert final.steps["call"].status == "cancelled"
    assert final.steps["call"].error.code == "cancelled"
    with trio.fail_after(1):
        await trio.testing.wait_all_tasks_blocked()
    assert crt.open_executions == 0  # the execution actor is gone too


async def test_idempotency_key_is_the_same_after_a_restart(svc: FakeService, tmp_path: pathlib.Path) -> None:
    svc.script("/deploy", Response(json={}, delay_s=10), Response(json={"deployed": 1}))
    store = f"sqlite:///{tmp_path / 'rb.db'}"
    settings = Settings(default_max_retries=0, call_service_base_url=svc.url)
    async with open_runtime(store, settings=settings) as rt:
        await rt.register_runbook(call({"url": "/deploy", "method": "POST"}))
        ex = await rt.start("cs")
        with trio.fail_after(2):
            await svc.wait_for("/deploy")
    # the runtime stopped with the request in flight; the next one resumes the execution
    async with open_runtime(store, settings=settings) as rt:
        with trio.fail_after(5):
            final = await rt.wait(ex.id)
    assert final.status == "completed"
    assert final.steps["call"].output == {"deployed": 1}
    first, second = svc.requests_to("/deploy")
    assert first.headers["idempotency-key"] == second.headers["idempotency-key"] == f"{ex.id}:call"
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


# ---- evidence and logs ------------------------------------------------------------------------


async def test_every_response_is_evidence_with_the_body_sha256_and_status(crt: Runtime, svc: FakeService) -> None:
    failure, success = Response(503, text="try later"), Response(json={"build": "green"})
    svc.script("/b", failure, success)
    final = await run(crt, call({"url": "/b"}, retryPolicy={"maxRetries": 1, **FAST}))
    items = await crt.evidence(final.id)
    assert [(e.step_id, e.kind, e.data["status"]) for e in items] == [("call", "http_response", 503),
                                                                     ("call", "http_response", 200)]
    assert [e.data["bodySha256"] for e in items] == [hashlib.sha256(failure.body()).hexdigest(),
                                                     hashlib.sha256(success.body()).hexdigest()]
    for item, request in zip(items, svc.requests_to("/b"), strict=True):
        assert item.sha256 == sha256_hex(item.data)
        assert item.data["requestId"] == request.headers["x-request-id"]


async def test_step_start_retry_and_end_are_logged_with_the_step_id(crt: Runtime, svc: FakeService) -> None:
    svc.script("/f", Response(500), Response(json={}))
    final = await run(crt, call({"url": "/f"}, retryPolicy={"maxRetries": 1, **FAST}))
    messages = [e.message for e in await crt.logs(final.id, step_id="call")]
    assert messages[0] == "step started"
    assert any(m.startswith("step retrying") for m in messages)
    assert messages[-1] == "step succeeded"
    assert all(e.step_id == "call" for e in await crt.logs(final.id, step_id="call"))


async def test_failed_step_end_is_logged(crt: Runtime, svc: FakeService) -> None:
    svc.script("/f", Response(400))
    final = await run(crt, call({"url": "/f"}))
    entries = await crt.logs(final.id, step_id="call")
    assert entries[-1].level == "error" and entries[-1].message.startswith("step failed")


# ---- loop body -------------------------------------------------------------------------------


async def test_call_service_as_a_loop_body_has_one_key_per_iteration(crt: Runtime, svc: FakeService) -> None:
    svc.script("/scan", Response(503), Response(json={"clean": True}))
    doc = {"id": "scan", "steps": [{"id": "scan", "type": "loop", "config": {
        "items": ["a.example", "b.example"],
        "step": {"type": "call-service", "config": {"url": "/scan", "query": {"host": "${item}"}},
                 "retryPolicy": {"maxRetries": 1, **FAST}}}}]}
    final = await run(crt, doc)
    assert final.status == "completed"
    assert final.steps["scan"].output == [{"clean": True}, {"clean": True}]
    by_host: dict[str, set[str]] = {}
    for request in svc.requests_to("/scan"):
        by_host.setdefault(request.query["host"], set()).add(request.headers["idempotency-key"])
    assert by_host == {"a.example": {f"{final.id}:scan:0"}, "b.example": {f"{final.id}:scan:1"}}
    # a failed attempt's response is evidence too, and its retry is logged
    assert sorted(e.data["status"] for e in await crt.evidence(final.id)) == [200, 200, 503]
    assert any(e.message.startswith("iteration 0 retrying") for e in await crt.logs(final.id, step_id="scan"))


# ---- validation ------------------------------------------------------------------------------


async def test_protocol_is_http_or_grpc(crt: Runtime) -> None:
    doc = call({"url": "/x", "protocol": "smtp"})
    with pytest.raises(ValidationError) as info:
        await crt.register_runbook(doc)
    assert [(p.path, p.message) for p in info.value.problems] == [
        ("steps[0].config.protocol", "unknown protocol: 'http' (the default) or 'grpc'")]
    assert crt.validate_runbook(call({"url": "/x", "protocol": "http"})) == []
    grpc_config = {"protocol": "grpc", "target": "inventory:50051", "service": "demo.Inventory", "method": "Get"}
    assert crt.validate_runbook(call(grpc_config)) == []


async def test_call_service_config_problems_are_reported_together(crt: Runtime) -> None:
    doc = call({"method": "FETCH", "timeoutMs": 0, "expectStatus": [999], "protocol": "smtp"})
    paths = {p.path for p in crt.validate_runbook(doc)}
    assert paths == {"steps[0].config.url", "steps[0].config.method", "steps[0].config.timeoutMs",
                     "steps[0].config.expectStatus[0]", "steps[0].config.protocol"}
