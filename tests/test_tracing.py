"""OpenTelemetry traces (runtime/io/tracing.py) with the SDK's in-memory exporter: one trace per
execution whatever process ran it, a span per attempt, traceparent on outgoing calls."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import Any

import pytest
import trio
import trio.testing
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from runtime import Runtime, Settings, open_runtime
from runtime.io import tracing
from tests.conftest import Recorder
from tests.fake_grpc import SERVICE, fake_grpc
from tests.fake_service import fake_service


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.configure(provider)
    try:
        yield exporter
    finally:
        tracing.configure(None)
        provider.shutdown()


async def run(rt: Runtime, doc: dict[str, Any], **start: Any) -> Any:
    await rt.register_runbook(doc)
    execution = await rt.start(doc["id"], **start)
    with trio.fail_after(10):
        return await rt.wait(execution.id)


def by_name(exporter: InMemorySpanExporter) -> dict[str, list[ReadableSpan]]:
    found: dict[str, list[ReadableSpan]] = {}
    for span in exporter.get_finished_spans():
        found.setdefault(span.name, []).append(span)
    return found


def traceparent(trace_id: int, span_id: int) -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-01"


async def test_an_execution_is_one_trace_of_its_attempts(spans: InMemorySpanExporter, rt: Runtime,
                                                         recorder: Recorder) -> None:
    recorder.fail_times["a"] = 1
    doc = {"id": "traced", "steps": [{"id": "a", "type": "echo", "retryPolicy": {"maxRetries": 1, "initialDelayMs": 1}},
                                     {"id": "b", "type": "echo"}]}
    final = await run(rt, doc, context={"tenantId": "acme"})
    assert final.status == "completed"
    found = by_name(spans)
    assert sorted(found) == ["execution traced", "step a", "step b"]
    (execution,) = found["execution traced"]
    trace_id, span_id = tracing.execution_ids(final.id)
    assert (execution.context.trace_id, execution.context.span_id, execution.parent) == (trace_id, span_id, None)
    assert dict(execution.attributes or {}) == {
        "runbooks.execution.id": final.id, "runbooks.runbook.id": "traced", "runbooks.runbook.version": 1,
        "runbooks.tenant.id": "acme", "runbooks.execution.status": "completed"}
    assert execution.start_time == int(final.started_at.timestamp() * 1e9)
    assert execution.end_time == int(final.completed_at.timestamp() * 1e9)
    attempts = found["step a"] + found["step b"]
    assert all(s.context.trace_id == trace_id and s.parent is not None and s.parent.span_id == span_id
               for s in attempts)
    assert len({s.context.span_id for s in attempts}) == 3
    first, second = sorted(found["step a"], key=lambda s: s.attributes["runbooks.step.attempt"])
    assert dict(first.attributes or {}) == {
        "runbooks.execution.id": final.id, "runbooks.tenant.id": "acme", "runbooks.step.id": "a",
        "runbooks.step.attempt": 1, "runbooks.runbook.id": "traced", "runbooks.runbook.version": 1,
        "runbooks.step.type": "echo", "runbooks.step.outcome": "failed",
        "runbooks.step.error.code": "executor", "runbooks.step.error.retryable": True}
    assert first.status.status_code is trace.StatusCode.ERROR
    assert second.attributes["runbooks.step.outcome"] == "succeeded"
    assert all(execution.start_time <= s.start_time <= s.end_time <= execution.end_time for s in attempts)


async def test_a_failed_execution_span_is_an_error(spans: InMemorySpanExporter, rt: Runtime) -> None:
    final = await run(rt, {"id": "fails", "steps": [{"id": "a", "type": "echo", "config": {"fail": "boom"}}]})
    (execution,) = by_name(spans)["execution fails"]
    assert final.status == "failed"
    assert execution.status.status_code is trace.StatusCode.ERROR
    assert execution.attributes["runbooks.execution.status"] == "failed"
    assert execution.attributes["runbooks.execution.error.code"] == "executor"


async def test_a_cancelled_attempt_says_so(spans: InMemorySpanExporter, rt: Runtime, recorder: Recorder) -> None:
    await rt.register_runbook({"id": "slow", "steps": [{"id": "a", "type": "echo", "config": {"sleep": 60}}]})
    execution = await rt.start("slow")
    with trio.fail_after(5):
        while not recorder.calls:  # noqa: ASYNC110 (the executor records its start)
            await trio.sleep(0.01)
        await rt.cancel(execution.id, reason="enough")
        final = await rt.wait(execution.id)
        await trio.testing.wait_all_tasks_blocked()  # the cancelled attempt unwinds and ends its span
    found = by_name(spans)
    assert found["step a"][0].attributes["runbooks.step.outcome"] == "cancelled"
    assert found["execution slow"][0].attributes["runbooks.execution.status"] == final.status.value == "cancelled"


async def test_loop_iterations_are_attempt_spans_with_their_index(spans: InMemorySpanExporter, rt: Runtime) -> None:
    doc = {"id": "loop", "steps": [{"id": "each", "type": "loop", "config": {
        "items": ["x", "y"], "step": {"type": "echo", "config": {"value": "${item}"}}}}]}
    final = await run(rt, doc)
    iterations = sorted(by_name(spans)["step each"], key=lambda s: s.attributes["runbooks.step.iteration"])
    assert [s.attributes["runbooks.step.iteration"] for s in iterations] == [0, 1]
    assert all(s.attributes["runbooks.step.type"] == "loop" for s in iterations)
    assert all(s.context.trace_id == tracing.execution_ids(final.id)[0] for s in iterations)


async def test_an_execution_resumed_by_another_runtime_stays_in_its_trace(
        spans: InMemorySpanExporter, tmp_path: pathlib.Path) -> None:
    store = f"sqlite:///{tmp_path / 'traced.db'}"
    doc = {"id": "parked", "steps": [{"id": "a", "type": "call-service", "config": {"url": "/a"}},
                                     {"id": "ok", "type": "human-approval", "config": {"approvers": ["boss"]}},
                                     {"id": "b", "type": "call-service", "config": {"url": "/b"}}]}
    async with fake_service() as svc:
        settings = Settings(call_service_base_url=svc.url)
        async with open_runtime(store, settings=settings) as first:
            await first.register_runbook(doc)
            execution = await first.start("parked")
            with trio.fail_after(5):
                async for state in first.watch(execution.id):
                    if state.status.value == "awaiting_approval":
                        break
        assert [s.name for s in spans.get_finished_spans()] == ["step a"]  # not finished: no execution span yet
        async with open_runtime(store, settings=settings) as second:
            await second.submit_approval(execution.id, "ok", approver="boss", decision="approve")
            with trio.fail_after(5):
                final = await second.wait(execution.id)
    found = by_name(spans)
    trace_id, span_id = tracing.execution_ids(execution.id)
    assert {s.context.trace_id for s in spans.get_finished_spans()} == {trace_id}
    assert [s.parent.span_id for s in found["step a"] + found["step b"] if s.parent] == [span_id, span_id]
    (execution_span,) = found["execution parked"]
    assert execution_span.start_time == int(final.started_at.timestamp() * 1e9)  # the start in the first runtime
    assert [r.headers["traceparent"].split("-")[1] for r in svc.requests] == [f"{trace_id:032x}"] * 2


async def test_traceparent_goes_with_http_calls(spans: InMemorySpanExporter) -> None:
    async with fake_service() as svc:
        async with open_runtime("memory", settings=Settings(call_service_base_url=svc.url)) as rt:
            final = await run(rt, {"id": "http", "steps": [{"id": "call", "type": "call-service",
                                                             "config": {"url": "/x"}}]})
    (request,) = svc.requests
    (attempt,) = by_name(spans)["step call"]
    assert request.headers["traceparent"] == traceparent(tracing.execution_ids(final.id)[0], attempt.context.span_id)


async def test_traceparent_goes_with_grpc_calls(spans: InMemorySpanExporter, rt: Runtime) -> None:
    async with fake_grpc() as svc:
        doc = {"id": "grpc", "steps": [{"id": "call", "type": "call-service", "config": {
            "protocol": "grpc", "target": svc.target, "service": SERVICE, "method": "Lookup"}}]}
        final = await run(rt, doc)
    (call,) = svc.calls
    (attempt,) = by_name(spans)["step call"]
    assert call.metadata["traceparent"] == traceparent(tracing.execution_ids(final.id)[0], attempt.context.span_id)


async def test_without_a_provider_nothing_is_traced_or_sent() -> None:
    assert tracing._provider() is None  # the global provider is OpenTelemetry's default proxy
    async with fake_service() as svc:
        async with open_runtime("memory", settings=Settings(call_service_base_url=svc.url)) as rt:
            await run(rt, {"id": "plain", "steps": [{"id": "call", "type": "call-service", "config": {"url": "/x"}}]})
    assert "traceparent" not in svc.requests[0].headers


def test_execution_ids_are_derived_from_the_execution_id() -> None:
    first, again, other = tracing.execution_ids("e-1"), tracing.execution_ids("e-1"), tracing.execution_ids("e-2")
    assert first == again != other
    assert 0 < first[0] < 2**128 and 0 < first[1] < 2**64
