"""``runbooks serve`` as a process runs a runbook with a gRPC step, and exports its trace over
OTLP/HTTP to a local collector stand-in (tests/fake_service.py)."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys

import httpx
import pytest
import trio
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from runtime.io import tracing
from tests.fake_grpc import SERVICE, Reply, fake_grpc
from tests.fake_service import fake_service
from tests.gateway_fixtures import free_port

REPO = pathlib.Path(__file__).resolve().parent.parent


def runbook(target: str) -> dict[str, object]:
    return {"id": "grpc-demo", "steps": [{"id": "lookup", "type": "call-service", "config": {
        "protocol": "grpc", "target": target, "service": SERVICE, "method": "Lookup",
        "message": {"host_name": "${input.host}"}, "metadata": {"x-team": "sre"}}}]}


async def _wait_healthy(client: httpx.AsyncClient, process: trio.Process) -> None:
    with trio.fail_after(30):
        while True:
            try:
                if (await client.get("/health/ready")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert process.poll() is None, f"runbooks serve exited with {process.returncode}"
            await trio.sleep(0.05)  # another process: polled over HTTP


@pytest.mark.slow
async def test_runbooks_serve_runs_a_grpc_step_and_exports_its_trace() -> None:
    async with fake_grpc() as grpc_svc, fake_service() as collector:
        grpc_svc.script("Lookup", Reply({"host_name": "db1", "owner": "dba", "healthy": True}))
        port = free_port()
        env = {**os.environ, "STORAGE_BACKEND": "memory", "HOST": "127.0.0.1", "PORT": str(port),
               "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url, "OTEL_BSP_SCHEDULE_DELAY": "100",
               "RUNBOOKS_INSTANCE_ID": "test-instance"}
        process = await trio.lowlevel.open_process([sys.executable, "-m", "gateway", "serve"], env=env, cwd=REPO,
                                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                await _wait_healthy(client, process)
                assert (await client.post("/api/v1/runbooks", json=runbook(grpc_svc.target))).status_code == 201
                started = await client.post("/api/v1/executions",
                                            json={"runbookId": "grpc-demo", "input": {"host": "db1"}})
                assert started.status_code == 201, started.text
                execution_id = started.json()["id"]
                with trio.fail_after(10):
                    while (execution := (await client.get(f"/api/v1/executions/{execution_id}")).json()  # noqa: ASYNC110
                           )["status"] not in ("completed", "failed"):
                        await trio.sleep(0.05)  # another process: polled over HTTP
                evidence = (await client.get(f"/api/v1/executions/{execution_id}/evidence")).json()["items"]
            process.send_signal(signal.SIGTERM)
            with trio.fail_after(20):
                assert await process.wait() == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert execution["status"] == "completed", execution["error"]
    assert execution["output"] == {"hostName": "db1", "owner": "dba", "tags": [], "healthy": True,
                                   "health": "HEALTH_UNKNOWN", "checks": "0"}
    assert [(e["kind"], e["data"]["status"]) for e in evidence] == [("grpc_response", "OK")]
    (call,) = grpc_svc.calls
    assert call.metadata["x-team"] == "sre" and call.metadata["x-execution-id"] == execution_id
    # the trace, as the collector received it
    exports = [r for r in collector.requests if r.path == "/v1/traces"]
    assert exports and all(r.headers["content-type"] == "application/x-protobuf" for r in exports)
    spans, resources = {}, []
    for export in exports:
        message = ExportTraceServiceRequest.FromString(export.content)
        for resource_spans in message.resource_spans:
            resources.append({a.key: a.value.string_value for a in resource_spans.resource.attributes})
            for scope_spans in resource_spans.scope_spans:
                spans.update({span.name: span for span in scope_spans.spans})
    assert {"execution grpc-demo", "step lookup"} <= set(spans)
    trace_id, span_id = tracing.execution_ids(execution_id)
    assert spans["execution grpc-demo"].trace_id.hex() == f"{trace_id:032x}"
    assert spans["execution grpc-demo"].span_id.hex() == f"{span_id:016x}"
    attempt = spans["step lookup"]
    assert attempt.parent_span_id.hex() == f"{span_id:016x}"
    assert call.metadata["traceparent"] == f"00-{trace_id:032x}-{attempt.span_id.hex()}-01"
    assert {"service.name": "runbooks", "service.instance.id": "test-instance"}.items() <= resources[0].items()
