"""A real local gRPC service for tests: grpcio's server (a thread pool) on 127.0.0.1:0.

The service is defined at run time from descriptors built in Python (``descriptor_pb2``),
so no generated code exists anywhere, as in a runbook's world::

    demo.inventory.Inventory
      rpc Lookup(HostRequest) returns (HostReply)          unary
      rpc Watch(HostRequest) returns (stream HostReply)    server streaming

    async with fake_grpc() as svc:                        # reflection on (v1alpha, as grpcio has it)
        svc.script("Lookup", Abort(grpc.StatusCode.UNAVAILABLE, "down"), Reply({"owner": "sre"}))
        ...  # call svc.target
        assert svc.count("Lookup") == 2

``fake_grpc(reflection=None)`` serves without reflection (write a protoset with
``svc.write_protoset(path)``); ``reflection="v1"`` also serves ``grpc.reflection.v1``.
A scripted method answers its script in order and then repeats the last entry; unscripted,
``Lookup`` answers ``{"host_name": <the request's>, "owner": "nobody"}``. Every call is
recorded on arrival with its metadata; ``delay_s`` makes a handler wait (woken early when
the call ends), and ``call.cancelled`` tells whether the server saw the call cancelled.
"""

from __future__ import annotations

import pathlib
import threading
from collections.abc import AsyncIterator, Mapping
from concurrent import futures
from contextlib import asynccontextmanager
from typing import Any

import attrs
import grpc
import trio
from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    json_format,
    message_factory,
    timestamp_pb2,
)
from grpc_reflection.v1alpha import reflection as reflection_service
from grpc_reflection.v1alpha import reflection_pb2

__all__ = ["SERVICE", "Abort", "FakeGrpc", "Reply", "fake_grpc", "reply_bytes"]

PACKAGE = "demo.inventory"
SERVICE = f"{PACKAGE}.Inventory"
FILE = "demo/inventory.proto"
COMMON = "demo/common.proto"
_TYPES = {"string": 9, "bool": 8, "int32": 5, "int64": 3, "message": 11, "enum": 14}


def _field(message: Any, name: str, number: int, kind: str, type_name: str = "", repeated: bool = False,
           json_name: str = "") -> None:
    field = message.field.add(name=name, number=number, type=_TYPES[kind], label=3 if repeated else 1)
    if type_name:
        field.type_name = type_name
    if json_name:
        field.json_name = json_name


def _files() -> tuple[descriptor_pb2.FileDescriptorProto, descriptor_pb2.FileDescriptorProto]:
    common = descriptor_pb2.FileDescriptorProto(name=COMMON, package=PACKAGE, syntax="proto3")
    health = common.enum_type.add(name="Health")
    for number, name in enumerate(("HEALTH_UNKNOWN", "HEALTH_UP", "HEALTH_DOWN")):
        health.value.add(name=name, number=number)
    main = descriptor_pb2.FileDescriptorProto(name=FILE, package=PACKAGE, syntax="proto3",
                                              dependency=[COMMON, "google/protobuf/timestamp.proto"])
    request = main.message_type.add(name="HostRequest")
    _field(request, "host_name", 1, "string")
    _field(request, "limit", 2, "int32")
    _field(request, "since", 3, "message", ".google.protobuf.Timestamp")
    reply = main.message_type.add(name="HostReply")
    _field(reply, "host_name", 1, "string")
    _field(reply, "owner", 2, "string")
    _field(reply, "tags", 3, "string", repeated=True)
    _field(reply, "healthy", 4, "bool")
    _field(reply, "health", 5, "enum", f".{PACKAGE}.Health")
    _field(reply, "checks", 6, "int64")
    _field(reply, "seen_at", 7, "message", ".google.protobuf.Timestamp", json_name="lastSeen")  # [json_name = ...]
    service = main.service.add(name="Inventory")
    service.method.add(name="Lookup", input_type=f".{PACKAGE}.HostRequest", output_type=f".{PACKAGE}.HostReply")
    service.method.add(name="Watch", input_type=f".{PACKAGE}.HostRequest", output_type=f".{PACKAGE}.HostReply",
                       server_streaming=True)
    return common, main


def _pool() -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    pool.Add(descriptor_pb2.FileDescriptorProto.FromString(timestamp_pb2.DESCRIPTOR.serialized_pb))
    for proto in _files():
        pool.Add(proto)
    return pool


POOL = _pool()
HostRequest = message_factory.GetMessageClass(POOL.FindMessageTypeByName(f"{PACKAGE}.HostRequest"))
HostReply = message_factory.GetMessageClass(POOL.FindMessageTypeByName(f"{PACKAGE}.HostReply"))


def reply_bytes(fields: Mapping[str, Any]) -> bytes:
    """The bytes the service sends for ``Reply(fields)`` (hash them to check evidence)."""
    return json_format.ParseDict(dict(fields), HostReply()).SerializeToString()


@attrs.frozen
class Reply:
    fields: Mapping[str, Any] = attrs.field(factory=dict)
    delay_s: float = 0.0


@attrs.frozen
class Abort:
    code: grpc.StatusCode
    details: str = ""
    delay_s: float = 0.0


@attrs.define(eq=False)
class Call:
    """One call as the service saw it; metadata keys are lower-case."""

    method: str
    request: dict[str, Any]
    metadata: dict[str, str]
    cancelled: threading.Event = attrs.Factory(threading.Event)
    ended: threading.Event = attrs.Factory(threading.Event)


@attrs.define(eq=False)
class FakeGrpc:
    target: str = ""
    calls: list[Call] = attrs.Factory(list)
    reflection_calls: dict[str, int] = attrs.Factory(dict)
    _scripts: dict[str, list[Reply | Abort]] = attrs.Factory(dict)
    _token: Any = None
    _arrived: trio.Event = attrs.Factory(trio.Event)
    _lock: threading.Lock = attrs.Factory(threading.Lock)

    def script(self, method: str, *answers: Reply | Abort) -> None:
        if not answers:
            raise ValueError("script() needs at least one answer")
        self._scripts[method] = list(answers)

    def count(self, method: str) -> int:
        return sum(1 for call in self.calls if call.method == method)

    def calls_to(self, method: str) -> list[Call]:
        return [call for call in self.calls if call.method == method]

    async def wait_for(self, method: str, count: int = 1) -> None:
        while self.count(method) < count:
            await self._arrived.wait()

    def write_protoset(self, path: pathlib.Path, *, include_imports: bool = True) -> pathlib.Path:
        """A serialized FileDescriptorSet of the service (``protoc --descriptor_set_out``)."""
        return write_protoset(path, include_imports=include_imports)

    # ---- server side (grpcio's threads) ----
    def _record(self, call: Call) -> None:
        with self._lock:
            self.calls.append(call)
        try:
            self._token.run_sync_soon(self._wake)
        except trio.RunFinishedError:
            pass

    def _wake(self) -> None:
        self._arrived.set()
        self._arrived = trio.Event()

    def _next(self, method: str) -> Reply | Abort | None:
        with self._lock:
            script = self._scripts.get(method)
            if not script:
                return None
            return script.pop(0) if len(script) > 1 else script[0]

    def _handle(self, method: str, request: Any, context: grpc.ServicerContext) -> Any:
        call = Call(method, json_format.MessageToDict(request, preserving_proto_field_name=True),
                    {key: value for key, value in context.invocation_metadata() if isinstance(value, str)})
        context.add_callback(call.ended.set)
        self._record(call)
        answer = self._next(method) or Reply({"host_name": request.host_name, "owner": "nobody"})
        if answer.delay_s:
            call.ended.wait(answer.delay_s)
            if not context.is_active():
                call.cancelled.set()
                return HostReply()
        if isinstance(answer, Abort):
            context.abort(answer.code, answer.details)
        return json_format.ParseDict(dict(answer.fields), HostReply())

    def _handlers(self) -> grpc.GenericRpcHandler:
        def lookup(request: Any, context: grpc.ServicerContext) -> Any:
            return self._handle("Lookup", request, context)

        def watch(request: Any, context: grpc.ServicerContext) -> Any:
            yield self._handle("Watch", request, context)

        return grpc.method_handlers_generic_handler(SERVICE, {
            "Lookup": grpc.unary_unary_rpc_method_handler(
                lookup, request_deserializer=HostRequest.FromString, response_serializer=HostReply.SerializeToString),
            "Watch": grpc.unary_stream_rpc_method_handler(
                watch, request_deserializer=HostRequest.FromString, response_serializer=HostReply.SerializeToString),
        })


def _add_reflection(server: grpc.Server, service: FakeGrpc, versions: str) -> None:
    servicer = reflection_service.ReflectionServicer([SERVICE, reflection_service.SERVICE_NAME], pool=POOL)

    def counted(version: str) -> Any:
        def info(requests: Any, context: grpc.ServicerContext) -> Any:
            service.reflection_calls[version] = service.reflection_calls.get(version, 0) + 1
            yield from servicer.ServerReflectionInfo(requests, context)
        return grpc.stream_stream_rpc_method_handler(
            info, request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString)

    names = ["v1alpha"] + (["v1"] if versions == "v1" else [])
    server.add_generic_rpc_handlers([
        grpc.method_handlers_generic_handler(f"grpc.reflection.{name}.ServerReflection",
                                             {"ServerReflectionInfo": counted(name)})
        for name in names
    ])


@asynccontextmanager
async def fake_grpc(*, reflection: str | None = "v1alpha") -> AsyncIterator[FakeGrpc]:
    """Serve a fresh ``FakeGrpc`` for the block; ``reflection``: "v1alpha", "v1" (both), None."""
    service = FakeGrpc(token=trio.lowlevel.current_trio_token())
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="fake-grpc"))
    server.add_generic_rpc_handlers([service._handlers()])
    if reflection is not None:
        _add_reflection(server, service, reflection)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    service.target = f"127.0.0.1:{port}"
    try:
        yield service
    finally:
        stopped = server.stop(grace=0)
        await trio.to_thread.run_sync(stopped.wait, 5)


def write_protoset(path: pathlib.Path, *, include_imports: bool = True) -> pathlib.Path:
    """A serialized FileDescriptorSet of the fake's service (``protoc --descriptor_set_out``)."""
    common, main = _files()
    files = [common, main]
    if include_imports:
        files.insert(0, descriptor_pb2.FileDescriptorProto.FromString(timestamp_pb2.DESCRIPTOR.serialized_pb))
    path.write_bytes(descriptor_pb2.FileDescriptorSet(file=files).SerializeToString())
    return path
