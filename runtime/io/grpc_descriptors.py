"""Message types for a gRPC call without generated code: server reflection or a protoset.

``Descriptors`` (one per runtime) finds the descriptor of a service and caches it:

- per (target, service), from the target's reflection service: ``grpc.reflection.v1`` first,
  ``grpc.reflection.v1alpha`` when the target answers UNIMPLEMENTED for v1 (the two speak
  the same messages; grpcio-reflection's v1alpha classes encode both). The file defining
  the service is asked for, then every dependency the answer did not include;
- per protoset file (a serialized ``FileDescriptorSet``, e.g. ``protoc --include_imports
  --descriptor_set_out``), read again when its size or modification time changes.

A protoset path comes from a runbook, so reading it is guarded: the file must be a regular
file of at most ``MAX_PROTOSET_BYTES`` (8 MiB) and, when ``GRPC_PROTOSET_DIR`` is set, lie
under that directory once symbolic links are resolved (a relative path is taken from
there). It is opened non-blocking and checked with ``fstat`` before a byte is read, so a
named pipe or a device (``/dev/zero``) is refused at once, and at most the cap plus one byte
is ever read, in a worker thread abandoned at the step's deadline. Every way a path can
fail (absent, unreadable, not a regular file, too large, outside the directory, not a
descriptor set, an empty one) gives the same message, code ``bad_protoset``: a runbook
cannot use the engine to learn which paths exist.

Dependencies missing from a protoset are taken from protobuf's own well-known types
(``google/protobuf/*.proto``) when they are among them. ``method_types`` turns a service
descriptor and a method name into the request and response classes
(``message_factory.GetMessageClass``). Problems are ``StepFailed`` errors, not retryable:
``bad_protoset`` for anything about a protoset, ``config`` for a service or method the
reflection service does not have; a failing reflection call raises the ``grpc.RpcError``
for the caller to map.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Mapping
from functools import partial
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

__all__ = ["MAX_PROTOSET_BYTES", "Descriptors", "MethodTypes", "method_types"]

REFLECTION_PATHS: Final = (
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
)
_MAX_ROUNDS: Final = 32  # dependency look-ups; a real import graph is far shallower
MAX_PROTOSET_BYTES: Final = 8 * 1024 * 1024
_OPEN_FLAGS: Final = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_CHUNK: Final = 1024 * 1024

Files = dict[str, descriptor_pb2.FileDescriptorProto]
Stamp = tuple[int, int, int, int]  # size, modification time, inode, device


class _Unusable(Exception):
    """The protoset cannot be used; deliberately without saying why."""


@attrs.frozen
class MethodTypes:
    """What one unary method needs: its path and its request and response classes."""

    path: str  # /pkg.Service/Method
    request: type[Message]
    response: type[Message]
    pool: descriptor_pool.DescriptorPool


class Descriptors:
    """Service descriptors by (target, service) and by protoset file, for one runtime."""

    def __init__(self, protoset_dir: str | None = None) -> None:
        self.protoset_dir = protoset_dir  # GRPC_PROTOSET_DIR: protosets are read from there only
        self._reflected: dict[tuple[str, str], ServiceDescriptor] = {}
        self._protosets: dict[str, tuple[Stamp, descriptor_pool.DescriptorPool]] = {}

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

    async def from_protoset(self, path: str, service: str, timeout_s: float) -> ServiceDescriptor:
        """The service from the protoset at ``path``, read (again, if it changed) within ``timeout_s``."""
        cached = self._protosets.get(path)
        read = partial(_read_protoset_file, path, self.protoset_dir, cached[0] if cached else None)
        found: tuple[Stamp, bytes | None] | None = None
        with trio.move_on_after(timeout_s):
            try:
                found = await trio.to_thread.run_sync(read, abandon_on_cancel=True)
            except _Unusable:
                pass
        if found is None:
            raise self._unusable(path)
        stamp, data = found
        source = f"protoset {path!r}"
        if data is not None:
            files = _parse_protoset(data)
            if files is None:
                raise self._unusable(path)
            cached = self._protosets[path] = (stamp, _build_pool(files, source, code="bad_protoset"))
        assert cached is not None  # read now, or unchanged since it was
        return _find_service(cached[1], service, source, code="bad_protoset")

    def _unusable(self, path: str) -> StepFailed:
        where = f" under GRPC_PROTOSET_DIR ({self.protoset_dir})" if self.protoset_dir else ""
        return StepFailed(f"protoset {path!r} cannot be used: a protoset is a regular file of at most "
                          f"{MAX_PROTOSET_BYTES // (1024 * 1024)} MiB{where} holding a non-empty serialized "
                          "FileDescriptorSet (protoc --include_imports --descriptor_set_out), readable "
                          "within the step's timeout", code="bad_protoset")


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


def _read_protoset_file(path: str, root: str | None, known: Stamp | None) -> tuple[Stamp, bytes | None]:
    """(stamp, the bytes) of a protoset, or (stamp, None) when it is still ``known``; raises
    ``_Unusable`` for anything but a regular file within the cap (and under ``root``). Opened
    non-blocking and checked before reading: a pipe or a device never blocks, never streams."""
    try:
        fd = os.open(_inside(path, root), _OPEN_FLAGS)
    except (OSError, ValueError):
        raise _Unusable from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_PROTOSET_BYTES:
            raise _Unusable
        stamp = (info.st_size, info.st_mtime_ns, info.st_ino, info.st_dev)
        return (stamp, None) if stamp == known else (stamp, _read_at_most(fd, MAX_PROTOSET_BYTES))
    except OSError:
        raise _Unusable from None
    finally:
        os.close(fd)


def _inside(path: str, root: str | None) -> str:
    """``path`` itself, or under ``root``: resolved there (links too), and refused outside it."""
    if root is None:
        return path
    base = os.path.realpath(root)
    real = os.path.realpath(os.path.join(base, path))
    if os.path.commonpath([real, base]) != base:
        raise _Unusable
    return real


def _read_at_most(fd: int, limit: int) -> bytes:
    """The file's bytes; ``_Unusable`` past ``limit`` (a file may hold more than its size says)."""
    chunks: list[bytes] = []
    total = 0
    while chunk := os.read(fd, _CHUNK):
        total += len(chunk)
        if total > limit:
            raise _Unusable
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_protoset(data: bytes) -> Files | None:
    """The files of a serialized FileDescriptorSet; None if it is not one, or holds none."""
    try:
        descriptor_set = descriptor_pb2.FileDescriptorSet.FromString(data)
    except DecodeError:
        return None
    files: Files = {proto.name: proto for proto in descriptor_set.file}
    if not files:
        return None
    _add_well_known(files, _missing(files))
    return files


def _build_pool(files: Mapping[str, descriptor_pb2.FileDescriptorProto], source: str,
                code: str = "config") -> descriptor_pool.DescriptorPool:
    """A fresh pool holding ``files``, each added after the files it imports."""
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(name: str, chain: tuple[str, ...]) -> None:
        if name in added:
            return
        if name in chain:
            raise StepFailed(f"{source}: files import each other in a cycle: {' -> '.join((*chain, name))}",
                             code=code)
        proto = files.get(name)
        if proto is None:
            raise StepFailed(f"{source} lacks {name!r}, imported by {chain[-1]!r}", code=code)
        for dependency in proto.dependency:
            add(dependency, (*chain, name))
        try:
            pool.Add(proto)
        except (TypeError, ValueError) as exc:
            raise StepFailed(f"{source}: file {name!r} cannot be used: {exc}", code=code) from exc
        added.add(name)

    for name in sorted(files):
        add(name, ())
    return pool


def _find_service(pool: descriptor_pool.DescriptorPool, service: str, source: str,
                  code: str = "config") -> ServiceDescriptor:
    try:
        found: ServiceDescriptor = pool.FindServiceByName(service)
    except KeyError:
        raise StepFailed(f"{source} does not define service {service!r}", code=code) from None
    return found


