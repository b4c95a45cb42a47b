"""Sizes are capped: a step output over MAX_OUTPUT_BYTES (counted as JSON) fails the step
``output_too_large``; a call-service response body is read as it streams and never held
whole past the cap (the probe: a 30 MB answer became a step output); an event payload over
MAX_EVENT_BYTES is refused (413 over HTTP); retained events are capped in bytes per tenant
as well as in number (memory and PostgreSQL stores)."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import pytest
import trio

from runtime import LimitExceeded, Settings, StepContext, ValidationError, open_runtime
from runtime.store.postgres import PostgresStore
from tests.conftest import DSN
from tests.gateway_fixtures import running_gateway

MIB = 1024 * 1024
PROBE_BYTES = 30 * 1000 * 1000  # the probe's answer
CHUNK = b"x" * 65536


@asynccontextmanager
async def huge_service(total: int = PROBE_BYTES) -> AsyncIterator[str]:
    """Answers every request with ``total`` bytes of JSON-typed text, streamed, as long as the
    client reads."""
    async def answer(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.receive_some(65536)
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
                                  + str(total).encode() + b"\r\n\r\n")
            sent = 0
            try:
                while sent < total:
                    await stream.send_all(CHUNK[:total - sent])
                    sent += len(CHUNK)
            except trio.BrokenResourceError:
                pass  # the client stopped reading

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, answer, 0, host="127.0.0.1"))
        try:
            yield f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        finally:
            nursery.cancel_scope.cancel()


async def test_the_probe_a_30_mb_answer_fails_the_step_and_is_never_held_whole() -> None:
    async with huge_service() as url, open_runtime("memory", settings=Settings(default_max_retries=0)) as rt:
        await rt.register_runbook({"id": "big", "steps": [{"id": "get", "type": "call-service",
                                                           "config": {"url": f"{url}/big"}}]})
        tracemalloc.start()
        try:
            with trio.fail_after(60):
                final = await rt.wait((await rt.start("big")).id)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    error = final.steps["get"].error
    assert (error.code, error.retryable) == ("output_too_large", False)
    assert "over the cap of 1048576 bytes (MAX_OUTPUT_BYTES)" in error.message
    assert peak < 8 * MIB  # the cap and what reading it costs, never the 30 MB


async def step_output(value: Any, **settings: Any) -> Any:
    async def produce(ctx: StepContext) -> Any:
        return value

    async with open_runtime("memory", settings=Settings(default_max_retries=0, **settings),
                            executors={"produce": produce}) as rt:
        await rt.register_runbook({"id": "out", "steps": [{"id": "s", "type": "produce"}]})
        return (await rt.wait((await rt.start("out")).id)).steps["s"]


async def test_an_output_over_the_cap_as_json_fails_the_step() -> None:
    quotes = '"' * (600 * 1024)  # 600 KiB of text, 1.2 MiB as JSON (each quote escaped)
    refused = await step_output({"text": quotes})
    assert refused.status == "failed" and refused.error.code == "output_too_large"
    assert "MAX_OUTPUT_BYTES" in refused.error.message
    kept = await step_output({"text": "x" * (600 * 1024)})
    assert kept.status == "succeeded"
    assert (await step_output("x" * 2000, max_output_bytes=1024)).error.code == "output_too_large"


async def test_a_loop_whose_outputs_together_pass_the_cap_fails_output_too_large() -> None:
    async def produce(ctx: StepContext) -> Any:
        return "x" * (400 * 1024)

    async with open_runtime("memory", executors={"produce": produce}) as rt:
        await rt.register_runbook({"id": "lp", "steps": [{"id": "each", "type": "loop", "config": {
            "items": [1, 2, 3], "step": {"type": "produce"}}}]})
        step = (await rt.wait((await rt.start("lp")).id)).steps["each"]
    assert step.error is not None and step.error.code == "output_too_large"


BIG_PAYLOAD = {"blob": "x" * (300 * 1024)}  # over 256 KiB, under the 1 MiB body limit


async def test_an_event_payload_over_the_cap_is_refused_in_the_embedded_api() -> None:
    async with open_runtime("memory") as rt:
        with pytest.raises(ValidationError) as caught:
            await rt.publish_event("big", "k", BIG_PAYLOAD)
        assert (await rt.publish_event("small", "k", {"blob": "x" * 1000})).retained
    assert caught.value.code == "tooLarge" and caught.value.title == "event payload too large"
    assert "MAX_EVENT_BYTES" in caught.value.problems[0].message


async def test_an_event_payload_over_the_cap_is_413_at_the_gateway() -> None:
    async with running_gateway() as gw:
        refused = await gw.client.post("/api/v1/events", json={"type": "big", "correlationKey": "k",
                                                               "payload": BIG_PAYLOAD})
        limited = await gw.client.post("/api/v1/events", json={"type": "ok", "correlationKey": "k",
                                                               "payload": {"n": 1}})
    assert refused.status_code == 413 and refused.headers["content-type"] == "application/problem+json"
    problem = refused.json()
    assert (problem["type"], problem["title"]) == ("urn:runbooks:problem:too-large", "event payload too large")
    assert limited.status_code == 202


async def publish_until_refused(rt: Any, tenant: str) -> tuple[int, LimitExceeded]:
    for n in range(100):
        try:
            await rt.publish_event("unclaimed", f"k-{n}", {"blob": "y" * 30_000}, tenant_id=tenant)
        except LimitExceeded as refused:
            return n, refused
    raise AssertionError("never refused")


async def test_retained_events_are_capped_in_bytes_per_tenant() -> None:
    settings = Settings(max_retained_event_bytes_per_tenant=100_000)
    async with open_runtime("memory", settings=settings) as rt:
        kept, refused = await publish_until_refused(rt, "a")
        assert (await rt.publish_event("unclaimed", "k", {"blob": "y" * 30_000}, tenant_id="b")).retained
    assert kept == 3  # 3 x 30 KB fit in 100,000 bytes, the 4th would not
    assert refused.setting == "MAX_RETAINED_EVENT_BYTES_PER_TENANT" and refused.limit == 100_000


@pytest.mark.postgres
async def test_retained_events_are_capped_in_bytes_per_tenant_on_postgresql(schema: str) -> None:
    settings = Settings(max_retained_event_bytes_per_tenant=100_000)
    async with open_runtime(PostgresStore(DSN, pool_max=2, schema=schema), settings=settings) as rt:
        kept, refused = await publish_until_refused(rt, "a")
    assert kept == 3 and refused.setting == "MAX_RETAINED_EVENT_BYTES_PER_TENANT"


def test_the_caps_are_settings_of_the_gateway() -> None:
    from gateway.config import Config

    config = Config.from_env({"MAX_OUTPUT_BYTES": "2048", "MAX_EVENT_BYTES": "4096",
                              "MAX_RETAINED_EVENT_BYTES_PER_TENANT": "8192"})
    settings = config.settings()
    assert (settings.max_output_bytes, settings.max_event_bytes, settings.max_retained_event_bytes_per_tenant) == (
        2048, 4096, 8192)
    defaults = Config.from_env({}).settings()
    assert (defaults.max_output_bytes, defaults.max_event_bytes) == (MIB, 256 * 1024)
    assert json.dumps(defaults.max_retained_event_bytes_per_tenant) == str(64 * MIB)
