"""``call-service`` with ``protocol: grpc``: one unary gRPC call per attempt.

``call_grpc`` is the executor's gRPC half (its config is checked by
``runtime.kinds.grpc_config``).

With a stand-in (``runtime.io.stand_in``) the call, in JSON, goes to it instead: no channel
and no descriptors; its answer's status is read as a server's. A call needs no generated code: the request and response types come from the target's
reflection service, or from ``protoset`` (runtime/io/grpc_descriptors.py). ``message``
is read with protobuf's JSON mapping (``json_format.ParseDict``: proto field names and
lowerCamelCase names both work); the output is the response in the canonical protobuf JSON
mapping, as grpcurl prints it: keys are the fields' ``json_name`` (lowerCamelCase,
``host_name`` becomes ``hostName``), and every field is present, defaults included (a
``false`` or ``0`` is there to compare, not missing). 64-bit integers are strings and enums
their names, as the JSON mapping has them.

Metadata: the config's ``metadata`` plus ``x-tenant-id``, ``x-execution-id``, a fresh
``x-request-id``, ``idempotency-key`` (the same on every attempt and after a restart),
``x-runbooks-hop`` (the execution's hop plus one, as HTTP's ``X-Runbooks-Hop``) and the
W3C ``traceparent`` when tracing is on. The engine's keys replace same-named config keys.

Outcomes, as step error codes::

    grpc_status   UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED   retryable
    grpc_status   any other status but OK (named in the message)                not retryable
    config        the config, the service or the method is unusable
    bad_protoset  the protoset cannot be used (runtime/io/grpc_descriptors.py)          not retryable
    forbidden_target  CALL_SERVICE_ALLOWED_HOSTS refuses the host (checked after DNS
                  resolution, or before it when every pattern is a name pattern; the channel
                  then connects to a checked address), or the host holds a secret value
                  (it would go out through DNS)                                   not retryable
    connection    the host name does not resolve (with an allowlist)            retryable

Every status received (OK or not) is a ``grpc_response`` evidence item: target, service,
method, status name, request id and the SHA-256 of the serialized response message (of the
status message when the status is not OK). ``timeoutMs`` bounds the whole attempt,
descriptor look-up included; a Trio cancellation aborts the call in flight.
"""

from __future__ import annotations

import hashlib
import ipaddress
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

import grpc
import httpcore
import trio
from google.protobuf import json_format
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message

from runtime.io import tracing
from runtime.io.grpc_bridge import unary_call
from runtime.io.grpc_descriptors import MethodTypes, method_types
from runtime.io.stand_in import GrpcAnswer, GrpcCall, StandIn
from runtime.kinds.grpc_config import check_config, parse_target
from runtime.model.errors import StepFailed
from runtime.model.wire import canonical_json
from runtime.security.outbound import ForbiddenTarget, checked_addresses

if TYPE_CHECKING:
    from runtime.io.context import Services, StepContext

__all__ = ["RETRYABLE", "call_grpc"]

DEFAULT_TIMEOUT_MS: Final = 30_000
RETRYABLE: Final = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                              grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED})
_ENGINE_KEYS: Final = ("x-tenant-id", "x-execution-id", "x-request-id")


async def call_grpc(ctx: StepContext, idempotency_key: str) -> Any:
    """Make the configured unary call once; return the response as JSON or raise ``StepFailed``."""
    config = ctx.config
    problems = check_config(config, "config", templates=False)
    if problems:
        detail = "; ".join(f"{p.path}: {p.message}" for p in problems)
        raise StepFailed(f"invalid gRPC call-service config: {detail}", code="config")
    target = str(config["target"]).strip()
    if ctx.services.secrets.holds(parse_target(target)[0]):
        raise StepFailed(f"gRPC {target}: the host holds a secret value; a secret is never put in a host name "
                         "(resolving it would send the secret out through DNS)", code="forbidden_target")
    deadline = trio.current_time() + int(config.get("timeoutMs", DEFAULT_TIMEOUT_MS)) / 1000
    if ctx.services.stand_in is not None:
        return await _call_stand_in(ctx, ctx.services.stand_in, target, idempotency_key, deadline)
    channel = await _channel(ctx.services, target, bool(config.get("tls", False)), deadline)
    types = await _method_types(ctx, channel, target, deadline)
    request = _request(types, config.get("message") or {})
    request_id = uuid.uuid4().hex
    ctx.log.info("calling gRPC service", target=target, method=types.path)
    started = trio.current_time()
    try:
        answer = await unary_call(channel, types.path, request.SerializeToString(), timeout_s=_left(deadline),
                                  metadata=_metadata(ctx, request_id, idempotency_key))
    except grpc.RpcError as exc:
        raise _failed(ctx, types.path, target, request_id, _status(exc), _details(exc)) from None
    ctx.log.info("gRPC service answered", status="OK", elapsedMs=round((trio.current_time() - started) * 1000))
    _evidence(ctx, types.path, target, request_id, "OK", answer)
    return _output(types, answer, target)


async def _call_stand_in(ctx: StepContext, stand_in: StandIn, target: str, idempotency_key: str,
                         deadline: float) -> Any:
    """The call answered by the stand-in (runtime.io.stand_in), in JSON: no channel, no
    descriptors; the answer's status is read as a server's would be."""
    config, request_id = ctx.config, uuid.uuid4().hex
    call = GrpcCall(target, str(config["service"]), str(config["method"]), dict(config.get("message") or {}),
                    tuple(_metadata(ctx, request_id, idempotency_key)))
    path = f"/{call.service}/{call.method}"
    ctx.log.info("calling gRPC service", target=target, method=path)
    answer = GrpcAnswer("DEADLINE_EXCEEDED", details="Deadline Exceeded")
    with trio.move_on_at(deadline):
        answer = await stand_in.grpc(ctx, call)
    code = grpc.StatusCode[answer.code]
    if code is not grpc.StatusCode.OK:
        raise _failed(ctx, path, target, request_id, code, answer.details or "(no status message)")
    ctx.log.info("gRPC service answered", status="OK")
    _evidence(ctx, path, target, request_id, "OK", canonical_json(answer.message).encode())
    return answer.message


async def _channel(services: Services, target: str, tls: bool, deadline: float) -> grpc.Channel:
    """The channel to ``target``. With an allowlist (CALL_SERVICE_ALLOWED_HOSTS) the host is
    resolved here and every address checked, and the channel connects to a checked address
    (TLS still verifies the name, and the ``:authority`` is still ``target``): gRPC's own
    resolver never sees the name, so a DNS answer cannot differ between check and connect."""
    allowlist = services.allowed_hosts
    if allowlist is None:
        return services.grpc_channels.get(target, tls)
    host, port = parse_target(target)
    try:
        with trio.move_on_at(deadline) as scope:
            addresses = await checked_addresses(allowlist, host, port)
    except ForbiddenTarget as exc:
        raise StepFailed(f"gRPC {target}: {exc}", code="forbidden_target") from None
    except httpcore.ConnectError as exc:  # the name does not resolve
        raise StepFailed(f"gRPC {target}: {exc}", retryable=True, code="connection") from None
    if scope.cancelled_caught:
        raise StepFailed(f"gRPC {target}: the name '{host}' did not resolve in time", retryable=True, code="timeout")
    return services.grpc_channels.get(_address_target(addresses, port), tls, authority=target, server_name=host)


def _address_target(addresses: list[str], port: int) -> str:
    """A gRPC target naming checked addresses only: the IPv4 ones when there are any (a
    gRPC address list holds one family), else the IPv6 ones; gRPC tries them in turn."""
    parsed = [ipaddress.ip_address(address) for address in addresses]
    v4 = [a for a in parsed if a.version == 4]
    if v4:
        return "ipv4:" + ",".join(f"{a}:{port}" for a in v4)
    return "ipv6:" + ",".join(f"[{a}]:{port}" for a in parsed)


async def _method_types(ctx: StepContext, channel: grpc.Channel, target: str, deadline: float) -> MethodTypes:
    method = str(ctx.config["method"])
    service = await _service(ctx, channel, target, _left(deadline))
    if method not in service.methods_by_name and not ctx.config.get("protoset"):
        # descriptors are cached for the runtime's life: a server redeployed with a new
        # method is asked again once before the method is declared missing
        ctx.services.grpc_descriptors.forget(target, service.full_name)
        service = await _service(ctx, channel, target, _left(deadline))
    return method_types(service, method)


async def _service(ctx: StepContext, channel: grpc.Channel, target: str, timeout_s: float) -> ServiceDescriptor:
    service = str(ctx.config["service"])
    protoset = ctx.config.get("protoset")
    if protoset:
        return await ctx.services.grpc_descriptors.from_protoset(str(protoset), service, timeout_s)
    try:
        return await ctx.services.grpc_descriptors.from_reflection(channel, target, service, timeout_s)
    except grpc.RpcError as exc:
        code = _status(exc)
        raise StepFailed(f"reflection of {service} at {target} failed: {code.name}: {_details(exc)}",
                         retryable=code in RETRYABLE, code="grpc_status", data={"status": code.name}) from None


def _left(deadline: float) -> float:
    return max(deadline - trio.current_time(), 0.001)


def _request(types: MethodTypes, message: Mapping[str, Any]) -> Message:
    request = types.request()
    try:
        json_format.ParseDict(dict(message), request, descriptor_pool=types.pool)
    except json_format.ParseError as exc:
        raise StepFailed(f"config.message does not fit {types.request.DESCRIPTOR.full_name}: {exc}",
                         code="config") from exc
    return request


def _metadata(ctx: StepContext, request_id: str, idempotency_key: str) -> list[tuple[str, str]]:
    # The engine's keys replace same-named config keys: a runbook cannot act as another
    # tenant. An idempotency-key given as plain metadata is kept unless idempotencyKey is set.
    metadata = {str(k): str(v) for k, v in (ctx.config.get("metadata") or {}).items()}
    for key, value in zip(_ENGINE_KEYS, (ctx.tenant_id, ctx.execution_id, request_id), strict=True):
        metadata[key] = value
    if "idempotencyKey" in ctx.config or "idempotency-key" not in metadata:
        metadata["idempotency-key"] = idempotency_key
    metadata["x-runbooks-hop"] = str(ctx.hop + 1)
    tracing.inject(metadata)
    return list(metadata.items())


def _failed(ctx: StepContext, path: str, target: str, request_id: str, code: grpc.StatusCode,
            details: str) -> StepFailed:
    ctx.log.warning("gRPC service answered", status=code.name, details=details)
    _evidence(ctx, path, target, request_id, code.name, details.encode())
    return StepFailed(f"{path[1:]} at {target} answered {code.name}: {details}",
                      retryable=code in RETRYABLE, code="grpc_status", data={"status": code.name})


def _status(error: grpc.RpcError) -> grpc.StatusCode:
    code = getattr(error, "code", None)
    found = code() if callable(code) else None
    return found if isinstance(found, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


def _details(error: grpc.RpcError) -> str:
    details = getattr(error, "details", None)
    text = details() if callable(details) else None
    return str(text) if text else "(no status message)"


def _evidence(ctx: StepContext, path: str, target: str, request_id: str, status: str,
              body: bytes) -> None:
    service, _, method = path[1:].rpartition("/")
    ctx.add_evidence("grpc_response", {
        "target": target, "service": service, "method": method, "status": status,
        "bodySha256": hashlib.sha256(body).hexdigest(), "requestId": request_id,
    })


def _output(types: MethodTypes, answer: bytes, target: str) -> Any:
    try:
        response = types.response.FromString(answer)
    except DecodeError as exc:
        raise StepFailed(f"{types.path[1:]} at {target} answered OK with a message that is not a "
                         f"{types.response.DESCRIPTOR.full_name}: {exc}", code="executor") from exc
    return json_format.MessageToDict(response, always_print_fields_with_no_presence=True,
                                     descriptor_pool=types.pool)
