"""Message types for a gRPC call without generated code: server reflection or a protoset.

``Descriptors`` (one per runtime) finds the descriptor of a service and caches it:

- per (target, service), from the target's reflection service: ``grpc.reflection.v1`` first,
  ``grpc.reflection.v1alpha`` when the target answers UNIMPLEMENTED for v1 (the two speak
  the same messages; grpcio-reflection's v1alpha classes encode both). The file defining
  the service is asked for, then every dependency the answer did not include;
- per protoset file (a serialized ``FileDescriptorSet``, e.g. ``protoc --include_imports
  --descriptor_set_out``), read again when its size or modification time changes.

Dependencies missing from a protoset are taken from protobuf's own well-known types
(``google/protobuf/*.proto``) when they are among them. ``method_types`` turns a service
descriptor and a method name into the request and response classes
(``message_factory.GetMessageClass``). Problems are ``StepFailed`` errors: ``config`` for a
service, method or protoset that is not there or not usable (not retryable); a failing
reflection call raises the ``grpc.RpcError`` for the caller to map.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

import attrs
import grpc
import trio
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message
from grpc_reflection.v1alpha import reflection_pb2

from runtime.io.grpc_bridge import stream_exchange
from runtime.model.errors import StepFailed

__all__ = ["Descriptors", "MethodTypes", "method_types"]

REFLECTION_PATHS: Final = (
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
)
_MAX_ROUNDS: Final = 32  # dependency look-ups; a real import graph is far shallower

Files = dict[str, descriptor_pb2.FileDescriptorProto]


@attrs.frozen
class MethodTypes:
    """What one unary method needs: its path and its request and response classes."""

    path: str  # /pkg.Service/Method
    request: type[Message]
    response: type[Message]
    pool: descriptor_pool.DescriptorPool


class Descriptors:
    """Service descriptors by (target, service) and by protoset file, for one runtime."""

    def __init__(self) -> None:
        self._reflected: dict[tuple[str, str], ServiceDescriptor] = {}
        self._protosets: dict[str, tuple[tuple[int, int], descriptor_pool.DescriptorPool]] = {}

    async def from_reflection(self, channel: grpc.Channel, target: str, service: str,
                              timeout_s: float) -> ServiceDescriptor:
        key = (target, service)
        found = self._reflected.get(key)
        if found is None:
            files = await _reflect(channel, target, service, timeout_s)
            found = _find_service(_build_pool(files, f"the reflection service of {target}"), service,
                                  f"the reflection service of {target}")
            self._reflected[key] = found
        return found

    def forget(self, target: str, service: str) -> None:
        """Drop what reflection gave for (target, service): the next call asks again."""
        self._reflected.pop((target, service), None)

    async def from_protoset(self, path: str, service: str) -> ServiceDescriptor:
        try:
            info = await trio.Path(path).stat()
        except OSError as exc:
            raise StepFailed(f"protoset {path!r} cannot be read: {exc.strerror or exc}", code="config") from exc
        stamp = (info.st_size, info.st_mtime_ns)
        cached = self._protosets.get(path)
        if cached is None or cached[0] != stamp:
            cached = (stamp, _build_pool(await _read_protoset(path), f"protoset {path!r}"))
            self._protosets[path] = cached
        return _find_service(cached[1], service, f"protoset {path!r}")


def method_types(service: ServiceDescriptor, method: str) -> MethodTypes:
    """The request and response classes of ``method``; refuses an unknown or streaming one."""
    found = service.methods_by_name.get(method)
    if found is None:
        known = ", ".join(sorted(service.methods_by_name)) or "none"
        raise StepFailed(f"service {service.full_name} has no method {method!r} (methods: {known})",
                         code="config")
    if found.client_streaming or found.server_streaming:
        raise StepFailed(f"{service.full_name}/{method} is a streaming method; call-service makes unary "
                         "calls only", code="config")
    return MethodTypes(
        path=f"/{service.full_name}/{method}",
        request=message_factory.GetMessageClass(found.input_type),
        response=message_factory.GetMessageClass(found.output_type),
        pool=service.file.pool,
    )


# ---- reflection ------------------------------------------------------------------------------


async def _reflect(channel: grpc.Channel, target: str, service: str, timeout_s: float) -> Files:
    path = REFLECTION_PATHS[0]
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol=service)
    try:
        answers = await stream_exchange(channel, path, [request.SerializeToString()], timeout_s=timeout_s)
    except grpc.RpcError as exc:
        if _code(exc) is not grpc.StatusCode.UNIMPLEMENTED:
            raise
        path = REFLECTION_PATHS[1]
        try:
            answers = await stream_exchange(channel, path, [request.SerializeToString()], timeout_s=timeout_s)
        except grpc.RpcError as again:
            if _code(again) is grpc.StatusCode.UNIMPLEMENTED:
                raise StepFailed(
                    f"{target} offers no reflection service (grpc.reflection.v1 nor v1alpha); "
                    "give config.protoset, a serialized FileDescriptorSet of the service",
                    code="config") from again
            raise
    files: Files = {}
    _add_answers(files, answers, f"service {service!r} on {target}")
    for _ in range(_MAX_ROUNDS):
        _add_well_known(files, _missing(files))
        missing = sorted(_missing(files))
        if not missing:
            return files
        requests = [reflection_pb2.ServerReflectionRequest(file_by_filename=name).SerializeToString()
                    for name in missing]
        answers = await stream_exchange(channel, path, requests, timeout_s=timeout_s)
        _add_answers(files, answers, f"a dependency of {service!r} on {target}")
    raise StepFailed(f"the reflection service of {target} did not give every file {service!r} needs",
                     code="config")


def _code(error: grpc.RpcError) -> grpc.StatusCode | None:
    code = getattr(error, "code", None)
    return code() if callable(code) else None


def _add_answers(files: Files, answers: Iterable[bytes], what: str) -> None:
    for raw in answers:
        answer = reflection_pb2.ServerReflectionResponse.FromString(raw)
        if answer.WhichOneof("message_response") == "error_response":
            error = answer.error_response
            name = _status_name(error.error_code)
            raise StepFailed(f"{what}: the reflection service answered {name}: {error.error_message}",
                             code="config")
        for data in answer.file_descriptor_response.file_descriptor_proto:
            proto = descriptor_pb2.FileDescriptorProto.FromString(data)
            files.setdefault(proto.name, proto)


def _status_name(number: int) -> str:
    for status in grpc.StatusCode:
        if status.value[0] == number:
            return status.name
    return f"status {number}"


def _missing(files: Files) -> set[str]:
    return {dep for proto in files.values() for dep in proto.dependency if dep not in files}


def _add_well_known(files: Files, names: Iterable[str]) -> None:
    """Dependencies protobuf itself ships (google/protobuf/*.proto) when a source left them out."""
    for name in names:
        if name in files:
            continue
        try:
            known = descriptor_pool.Default().FindFileByName(name)
        except KeyError:
            continue
        proto = descriptor_pb2.FileDescriptorProto()
        known.CopyToProto(proto)
        files[name] = proto


# ---- protosets and pools -----------------------------------------------------------------------


async def _read_protoset(path: str) -> Files:
    try:
        data = await trio.Path(path).read_bytes()
    except OSError as exc:
        raise StepFailed(f"protoset {path!r} cannot be read: {exc.strerror or exc}", code="config") from exc
    try:
        descriptor_set = descriptor_pb2.FileDescriptorSet.FromString(data)
    except DecodeError as exc:
        raise StepFailed(f"protoset {path!r} is not a serialized FileDescriptorSet: {exc}",
                         code="config") from exc
    files: Files = {proto.name: proto for proto in descriptor_set.file}
    _add_well_known(files, _missing(files))
    return files


def _build_pool(files: Mapping[str, descriptor_pb2.FileDescriptorProto], source: str) -> descriptor_pool.DescriptorPool:
    """A fresh pool holding ``files``, each added after the files it imports."""
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(name: str, chain: tuple[str, ...]) -> None:
        if name in added:
            return
        if name in chain:
            raise StepFailed(f"{source}: files import each other in a cycle: {' -> '.join((*chain, name))}",
                             code="config")
        proto = files.get(name)
        if proto is None:
            raise StepFailed(f"{source} lacks {name!r}, imported by {chain[-1]!r}", code="config")
        for dependency in proto.dependency:
            add(dependency, (*chain, name))
        try:
            pool.Add(proto)
        except (TypeError, ValueError) as exc:
            raise StepFailed(f"{source}: file {name!r} cannot be used: {exc}", code="config") from exc
        added.add(name)

    for name in sorted(files):
        add(name, ())
    return pool


def _find_service(pool: descriptor_pool.DescriptorPool, service: str, source: str) -> ServiceDescriptor:
    try:
        found: ServiceDescriptor = pool.FindServiceByName(service)
    except KeyError:
        raise StepFailed(f"{source} does not define service {service!r}", code="config") from None
    return found


