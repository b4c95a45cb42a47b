"""call-service with ``protocol: grpc`` through the engine, against a real grpcio server
started here (tests/fake_grpc.py: reflection on, or off with a protoset). Real clock:
delays are a few hundred ms at most."""

from __future__ import annotations

import hashlib
import pathlib
import threading
from collections.abc import AsyncIterator
from typing import Any

import attrs
import grpc
import pytest
import trio

from runtime import Runtime, Settings, open_runtime
from runtime.model.wire import sha256_hex
from runtime.security.outbound import HostAllowlist
from tests.fake_grpc import SERVICE, Abort, FakeGrpc, Reply, fake_grpc, reply_bytes
from tests.gateway_fixtures import free_port

FAST = {"initialDelayMs": 10, "backoffMultiplier": 2, "jitter": False}


@pytest.fixture
async def svc() -> AsyncIterator[FakeGrpc]:
    async with fake_grpc() as service:
        yield service


def lookup(target: str, rid: str = "grpc", *, retries: int = 0, **config: Any) -> dict[str, Any]:
    step_config = {"protocol": "grpc", "target": target, "service": SERVICE, "method": "Lookup",
                   "message": {"host_name": "${input.host}"}, **config}
    return {"id": rid, "steps": [{"id": "call", "type": "call-service", "config": step_config,
                                  "retryPolicy": {"maxRetries": retries, **FAST}}]}


async def run(rt: Runtime, doc: dict[str, Any], *, limit_s: float = 10, host: str = "db1", **start: Any) -> Any:
    await rt.register_runbook(doc)
    execution = await rt.start(doc["id"], input={"host": host}, **start)
    with trio.fail_after(limit_s):
        return await rt.wait(execution.id)


# ---- calls -----------------------------------------------------------------------------------


async def test_a_unary_call_through_reflection_returns_the_reply_as_json(rt: Runtime, svc: FakeGrpc) -> None:
    svc.script("Lookup", Reply({"host_name": "db1", "owner": "sre", "tags": ["pci"], "checks": "12",
                                "seen_at": "2024-05-01T09:00:00Z"}))
    doc = lookup(svc.target, message={"host_name": "${input.host}", "limit": 3, "since": "2024-05-01T10:00:00Z"})
    final = await run(rt, doc)
    assert final.status == "completed", final.error
    # the canonical JSON mapping, as grpcurl prints it: each field's json_name (lowerCamelCase, or
    # the .proto's own json_name option), every field without presence (false, the zero enum),
    # int64 as a string
    assert final.steps["call"].output == {"hostName": "db1", "owner": "sre", "tags": ["pci"], "healthy": False,
                                          "health": "HEALTH_UNKNOWN", "checks": "12",
                                          "lastSeen": "2024-05-01T09:00:00Z"}
    (call,) = svc.calls_to("Lookup")
    assert call.request == {"host_name": "db1", "limit": 3, "since": "2024-05-01T10:00:00Z"}


async def test_the_message_takes_json_names_too_and_the_output_is_the_execution_output(
        rt: Runtime, svc: FakeGrpc) -> None:
    final = await run(rt, lookup(svc.target, message={"hostName": "web7"}))
    assert final.output == {"hostName": "web7", "owner": "nobody", "tags": [], "healthy": False,
                            "health": "HEALTH_UNKNOWN", "checks": "0"}


async def test_reflection_v1_is_preferred_and_v1alpha_is_the_fallback(rt: Runtime) -> None:
    async with fake_grpc(reflection="v1") as both:
        assert (await run(rt, lookup(both.target, "both"))).status == "completed"
        assert both.reflection_calls == {"v1": 1}
    async with fake_grpc(reflection="v1alpha") as old:
        assert (await run(rt, lookup(old.target, "old"))).status == "completed"
        assert old.reflection_calls == {"v1alpha": 1}


async def test_descriptors_and_the_channel_are_reused(rt: Runtime, svc: FakeGrpc) -> None:
    doc = lookup(svc.target)
    doc["steps"].append({**doc["steps"][0], "id": "again"})
    final = await run(rt, doc)
    assert final.status == "completed"
    assert svc.count("Lookup") == 2
    assert svc.reflection_calls == {"v1alpha": 1}  # one look-up per (target, service)
    assert len(rt.services.grpc_channels) == 1


async def test_the_channels_are_closed_with_the_runtime(svc: FakeGrpc) -> None:
    async with open_runtime("memory") as runtime:
        assert (await run(runtime, lookup(svc.target))).status == "completed"
        channels = runtime.services.grpc_channels
        assert len(channels) == 1
    assert len(channels) == 0
    with pytest.raises(RuntimeError, match="closed"):
        channels.get(svc.target, False)


async def test_without_reflection_a_protoset_gives_the_types(rt: Runtime, tmp_path: pathlib.Path) -> None:
    async with fake_grpc(reflection=None) as bare:
        refused = await run(rt, lookup(bare.target, "no-protoset", retries=3))
        protoset = bare.write_protoset(tmp_path / "inventory.protoset")
        final = await run(rt, lookup(bare.target, "with-protoset", protoset=str(protoset)))
        assert bare.count("Lookup") == 1
    step = refused.steps["call"]
    assert (refused.status, step.attempts, step.error.code, step.error.retryable) == ("failed", 1, "config", False)
    assert "offers no reflection service" in step.error.message and "protoset" in step.error.message
    assert final.status == "completed"
    assert final.steps["call"].output["owner"] == "nobody"


async def test_a_protoset_without_its_imports_uses_protobufs_well_known_types(
        rt: Runtime, tmp_path: pathlib.Path) -> None:
    async with fake_grpc(reflection=None) as bare:
        protoset = bare.write_protoset(tmp_path / "bare.protoset", include_imports=False)
        doc = lookup(bare.target, protoset=str(protoset), message={"host_name": "x", "since": "2024-01-01T00:00:00Z"})
        final = await run(rt, doc)
    assert final.status == "completed", final.error


async def test_a_protoset_that_is_not_one_fails_without_retry(rt: Runtime, svc: FakeGrpc,
                                                              tmp_path: pathlib.Path) -> None:
    junk = tmp_path / "junk.protoset"
    junk.write_bytes(b"\xff\xff\xff not a descriptor set")
    missing = await run(rt, lookup(svc.target, "missing", retries=2, protoset=str(tmp_path / "absent")))
    broken = await run(rt, lookup(svc.target, "broken", retries=2, protoset=str(junk)))
    for final in (missing, broken):  # alike: the message never tells whether a path exists
        assert (final.steps["call"].error.code, final.steps["call"].attempts) == ("bad_protoset", 1)
        assert "a protoset is a regular file of at most 8 MiB" in final.steps["call"].error.message
    assert svc.count("Lookup") == 0


async def test_an_unknown_method_or_a_streaming_one_fails_before_any_call(rt: Runtime, svc: FakeGrpc) -> None:
    unknown = await run(rt, lookup(svc.target, "unknown", method="Delete"))
    streaming = await run(rt, lookup(svc.target, "streaming", method="Watch"))
    no_service = await run(rt, lookup(svc.target, "nosvc", service="demo.inventory.Nope"))
    assert "has no method 'Delete' (methods: Lookup, Watch)" in unknown.steps["call"].error.message
    assert "streaming method" in streaming.steps["call"].error.message
    assert "NOT_FOUND" in no_service.steps["call"].error.message
    assert all(f.steps["call"].error.code == "config" for f in (unknown, streaming, no_service))
    assert svc.calls == []
    # the cached descriptors are checked with the server once more before a method is missing
    assert svc.reflection_calls == {"v1alpha": 3}


async def test_a_message_that_does_not_fit_the_request_type_fails_without_retry(rt: Runtime, svc: FakeGrpc) -> None:
    final = await run(rt, lookup(svc.target, retries=2, message={"host_name": "a", "colour": "red"}))
    step = final.steps["call"]
    assert (step.error.code, step.attempts) == ("config", 1)
    assert "demo.inventory.HostRequest" in step.error.message and "colour" in step.error.message


# ---- statuses, retries, deadlines -------------------------------------------------------------


async def test_unavailable_is_retried_with_the_same_idempotency_key(rt: Runtime, svc: FakeGrpc) -> None:
    svc.script("Lookup", Abort(grpc.StatusCode.UNAVAILABLE, "draining"), Reply({"owner": "dba"}))
    final = await run(rt, lookup(svc.target, retries=2))
    assert final.status == "completed"
    assert final.steps["call"].attempts == 2
    calls = svc.calls_to("Lookup")
    assert len(calls) == 2
    assert {c.metadata["idempotency-key"] for c in calls} == {f"{final.id}:call"}
    assert len({c.metadata["x-request-id"] for c in calls}) == 2


@pytest.mark.parametrize("code", ["DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED"])
async def test_the_other_retryable_statuses(rt: Runtime, svc: FakeGrpc, code: str) -> None:
    svc.script("Lookup", Abort(grpc.StatusCode[code], "later"), Reply({"owner": "dba"}))
    final = await run(rt, lookup(svc.target, retries=1))
    assert final.status == "completed" and svc.count("Lookup") == 2


async def test_invalid_argument_fails_at_once_naming_the_status(rt: Runtime, svc: FakeGrpc) -> None:
    svc.script("Lookup", Abort(grpc.StatusCode.INVALID_ARGUMENT, "host_name is required"))
    final = await run(rt, lookup(svc.target, retries=3))
    step = final.steps["call"]
    assert final.status == "failed" and svc.count("Lookup") == 1
    assert (step.attempts, step.error.code, step.error.retryable) == (1, "grpc_status", False)
    assert step.error.message == (f"{SERVICE}/Lookup at {svc.target} answered INVALID_ARGUMENT: "
                                  "host_name is required")
    assert final.error.code == "grpc_status"


async def test_the_deadline_is_timeout_ms_per_attempt(rt: Runtime, svc: FakeGrpc) -> None:
    svc.script("Lookup", Reply({"owner": "late"}, delay_s=5))
    start = trio.current_time()
    final = await run(rt, lookup(svc.target, retries=1, timeoutMs=300))
    elapsed = trio.current_time() - start
    step = final.steps["call"]
    assert final.status == "failed"
    assert (step.attempts, step.error.code, step.error.retryable) == (2, "grpc_status", True)
    assert "DEADLINE_EXCEEDED" in step.error.message
    assert 0.6 <= elapsed < 3
    with trio.fail_after(3):
        for call in svc.calls_to("Lookup"):  # the server saw each deadline pass
            await trio.to_thread.run_sync(call.ended.wait, 2)
    assert all(call.cancelled.is_set() for call in svc.calls_to("Lookup"))


async def test_an_unreachable_target_is_unavailable_and_retryable(rt: Runtime) -> None:
    final = await run(rt, lookup(f"127.0.0.1:{free_port()}", retries=1, timeoutMs=2000))
    step = final.steps["call"]
    assert (step.attempts, step.error.code, step.error.retryable) == (2, "grpc_status", True)
    assert "UNAVAILABLE" in step.error.message


async def test_tls_against_a_plaintext_server_does_not_connect(rt: Runtime, svc: FakeGrpc) -> None:
    final = await run(rt, lookup(svc.target, tls=True, timeoutMs=2000))
    assert final.status == "failed"
    assert "UNAVAILABLE" in final.steps["call"].error.message
    assert svc.calls == []


def _client_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if not t.name.startswith("fake-grpc")}


async def test_cancel_aborts_the_call_in_flight_and_leaves_no_thread(rt: Runtime, svc: FakeGrpc) -> None:
    assert (await run(rt, lookup(svc.target, "warm"))).status == "completed"  # reflection done, cached
    await trio.sleep(0.2)
    baseline = _client_threads()
    svc.script("Lookup", Reply({"owner": "never"}, delay_s=30))
    await rt.register_runbook(lookup(svc.target))
    execution = await rt.start("grpc", input={"host": "db1"})
    with trio.fail_after(5):
        await svc.wait_for("Lookup", 2)
    started = trio.current_time()
    await rt.cancel(execution.id, reason="operator abort")
    final = await rt.wait(execution.id)
    assert trio.current_time() - started < 0.5
    assert final.status == "cancelled" and final.steps["call"].status == "cancelled"
    call = svc.calls_to("Lookup")[-1]
    assert await trio.to_thread.run_sync(call.ended.wait, 2), "the server did not see the call end"
    assert await trio.to_thread.run_sync(call.cancelled.wait, 2), "the server did not see a cancellation"
    with trio.fail_after(3):
        while _client_threads() - baseline:  # noqa: ASYNC110 (grpcio's threads are not Trio's to wait on)
            await trio.sleep(0.05)
    assert rt.open_executions == 0


# ---- metadata and evidence --------------------------------------------------------------------


async def test_metadata_carries_the_config_and_the_engine_keys(rt: Runtime, svc: FakeGrpc) -> None:
    doc = lookup(svc.target, metadata={"x-team": "sre-${input.host}", "x-tenant-id": "spoofed"})
    final = await run(rt, doc, context={"tenantId": "acme"})
    (call,) = svc.calls
    assert call.metadata["x-team"] == "sre-db1"
    assert call.metadata["x-tenant-id"] == "acme"  # the engine's keys cannot be overridden
    assert call.metadata["x-execution-id"] == final.id
    assert len(call.metadata["x-request-id"]) == 32
    assert call.metadata["idempotency-key"] == f"{final.id}:call"
    assert "traceparent" not in call.metadata  # tracing is off


async def test_an_explicit_idempotency_key_and_one_key_per_loop_iteration(rt: Runtime, svc: FakeGrpc) -> None:
    explicit = await run(rt, lookup(svc.target, "explicit", idempotencyKey="lookup-{executionId}"))
    assert svc.calls[0].metadata["idempotency-key"] == f"lookup-{explicit.id}"
    body = lookup(svc.target)["steps"][0]
    body["config"]["message"] = {"host_name": "${item}"}
    doc = {"id": "scan", "steps": [{"id": "scan", "type": "loop", "config": {
        "items": ["a", "b"], "step": {"type": "call-service", "config": body["config"]}}}]}
    final = await run(rt, doc)
    assert final.status == "completed"
    assert [o["hostName"] for o in final.steps["scan"].output] == ["a", "b"]
    keys = {c.request["host_name"]: c.metadata["idempotency-key"] for c in svc.calls[1:]}
    assert keys == {"a": f"{final.id}:scan:0", "b": f"{final.id}:scan:1"}


async def test_every_status_received_is_evidence(rt: Runtime, svc: FakeGrpc) -> None:
    reply = {"owner": "dba", "tags": ["x"]}
    svc.script("Lookup", Abort(grpc.StatusCode.UNAVAILABLE, "draining"), Reply(reply))
    final = await run(rt, lookup(svc.target, retries=1))
    items = await rt.evidence(final.id)
    assert [(e.step_id, e.kind, e.data["status"]) for e in items] == [
        ("call", "grpc_response", "UNAVAILABLE"), ("call", "grpc_response", "OK")]
    assert [e.data["bodySha256"] for e in items] == [hashlib.sha256(b"draining").hexdigest(),
                                                     hashlib.sha256(reply_bytes(reply)).hexdigest()]
    for item, call in zip(items, svc.calls_to("Lookup"), strict=True):
        assert item.sha256 == sha256_hex(item.data)
        assert item.data["requestId"] == call.metadata["x-request-id"]
        assert (item.data["target"], item.data["service"], item.data["method"]) == (svc.target, SERVICE, "Lookup")


async def test_the_attempt_is_logged(rt: Runtime, svc: FakeGrpc) -> None:
    final = await run(rt, lookup(svc.target))
    messages = [e.message for e in await rt.logs(final.id, step_id="call")]
    assert "calling gRPC service" in messages and "gRPC service answered" in messages


# ---- validation ------------------------------------------------------------------------------


async def test_grpc_config_problems_are_reported_together(rt: Runtime) -> None:
    doc = {"id": "bad", "steps": [{"id": "call", "type": "call-service", "config": {
        "protocol": "grpc", "url": "/x", "target": "nohost", "service": "not a name",
        "metadata": {"X-Up": "1", "a-bin": "x", "ok": 3}, "tls": "yes", "timeoutMs": 0, "message": [1]}}]}
    problems = {(p.path, p.message) for p in rt.validate_runbook(doc)}
    prefix = "steps[0].config"
    assert {path for path, _ in problems} == {
        f"{prefix}.url", f"{prefix}.method", f"{prefix}.target", f"{prefix}.service", f"{prefix}.metadata.X-Up",
        f"{prefix}.metadata.a-bin", f"{prefix}.metadata.ok", f"{prefix}.tls", f"{prefix}.timeoutMs",
        f"{prefix}.message"}
    assert (f"{prefix}.url", "unknown field 'url' for protocol grpc") in problems
    assert (f"{prefix}.target", "must be host:port") in problems


async def test_templated_grpc_fields_are_checked_when_the_step_runs(rt: Runtime, svc: FakeGrpc) -> None:
    doc = lookup("${input.target}")
    assert rt.validate_runbook(doc) == []
    await rt.register_runbook(doc)
    good = await rt.start("grpc", input={"host": "a", "target": svc.target})
    bad = await rt.start("grpc", input={"host": "b", "target": "no-port"})
    with trio.fail_after(10):
        assert (await rt.wait(good.id)).status == "completed"
        failed = await rt.wait(bad.id)
    assert failed.steps["call"].error.code == "config"
    assert "config.target: must be host:port" in failed.steps["call"].error.message


@pytest.mark.parametrize("target", ["db:50051", "10.0.0.7:443", "[::1]:8443", "svc.ns.svc.cluster.local:9000"])
async def test_good_targets_are_accepted(rt: Runtime, target: str) -> None:
    assert rt.validate_runbook(lookup(target)) == []


async def test_settings_do_not_matter_for_grpc(svc: FakeGrpc) -> None:
    # CALL_SERVICE_BASE_URL is for HTTP URLs only: a gRPC target is always host:port
    async with open_runtime("memory", settings=Settings(call_service_base_url="http://127.0.0.1:9")) as runtime:
        assert (await run(runtime, lookup(svc.target))).status == "completed"


# ---- the outbound allowlist ------------------------------------------------------------------


def _resolving(allowed: str, names: dict[str, list[str]]) -> Settings:
    """CALL_SERVICE_ALLOWED_HOSTS=``allowed``, with a resolver that knows ``names`` only."""
    async def resolve(host: str, port: int) -> list[str]:
        return names[host]

    return Settings(call_service_allowed_hosts=attrs.evolve(HostAllowlist.parse(allowed), resolve=resolve))


async def test_a_target_the_allowlist_refuses_fails_without_a_call_or_a_retry(svc: FakeGrpc) -> None:
    settings = Settings(call_service_allowed_hosts=HostAllowlist.parse("grpc.example.org"))
    async with open_runtime("memory", settings=settings) as runtime:
        final = await run(runtime, lookup(svc.target, retries=3))
    assert final.status == "failed"
    assert final.steps["call"].error.code == "forbidden_target"
    assert final.steps["call"].attempts == 1
    assert svc.count("Lookup") == 0 and not svc.reflection_calls


async def test_a_name_that_resolves_to_a_forbidden_address_is_refused(svc: FakeGrpc) -> None:
    # "*" admits any name, but not one that leads to a loopback or link-local address
    port = svc.target.rpartition(":")[2]
    settings = _resolving("*", {"inventory.internal": ["127.0.0.1"]})
    async with open_runtime("memory", settings=settings) as runtime:
        final = await run(runtime, lookup(f"inventory.internal:{port}"))
    assert final.steps["call"].error.code == "forbidden_target"
    assert "127.0.0.1" in final.steps["call"].error.message
    assert svc.count("Lookup") == 0


async def test_an_allowed_name_is_called_at_the_address_that_was_checked(svc: FakeGrpc) -> None:
    # the system's DNS does not know this name: the call reaches the service only because the
    # channel connects to the address the allowlist checked, not to the name
    port = svc.target.rpartition(":")[2]
    settings = _resolving("127.0.0.1", {"inventory.internal": ["127.0.0.1"]})
    async with open_runtime("memory", settings=settings) as runtime:
        final = await run(runtime, lookup(f"inventory.internal:{port}"))
    assert final.status == "completed", final.error
    assert svc.count("Lookup") == 1


async def test_a_grpc_timeout_past_one_year_is_refused_like_every_duration(rt: Runtime) -> None:
    problems = rt.validate_runbook(lookup("127.0.0.1:50051", timeoutMs=10**15))
    assert [(p.path, "one year" in p.message) for p in problems] == [("steps[0].config.timeoutMs", True)]
