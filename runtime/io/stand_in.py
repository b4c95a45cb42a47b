"""A stand-in for the network: something that answers a step's outbound calls itself.

With ``Services.stand_in`` set (``open_runtime(stand_in=...)``), no call-service request and
no gRPC call leaves the process. The HTTP executor builds its request exactly as it would
(URL, headers, ``Idempotency-Key``, body) and hands it to ``StandIn.http`` instead of the
client; the ``httpx.Response`` it gets back is the service's answer, and the executor's own
code takes it from there (status checks, which failures are retried, ``Retry-After``, the
output, the evidence). An ``httpx.TransportError`` raised by the stand-in is a connection
failure, and a stand-in that takes longer than the attempt's ``timeoutMs`` is a timeout, as
on the network. The gRPC executor hands over a ``GrpcCall`` (before any descriptor is
looked up: the stand-in answers in JSON) and reads a ``GrpcAnswer`` the same way.
Approval notifications go through the HTTP executor, so the stand-in answers them too
(``ctx.step_type == "notify"``).

Runbook tests (``runtime.testing``) use it to serve canned replies on a virtual clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import httpx

if TYPE_CHECKING:
    from runtime.io.context import StepContext


@attrs.frozen
class GrpcCall:
    """A unary gRPC call as the executor would make it; ``message`` is the request as JSON."""

    target: str
    service: str
    method: str
    message: Mapping[str, Any]
    metadata: tuple[tuple[str, str], ...]


@attrs.frozen
class GrpcAnswer:
    """``code``: a status name (``OK``, ``UNAVAILABLE``...); ``message``: the response as JSON
    when OK; ``details``: the status message otherwise."""

    code: str = "OK"
    message: Any = None
    details: str = ""


class StandIn(Protocol):
    async def http(self, ctx: StepContext, request: httpx.Request) -> httpx.Response: ...

    async def grpc(self, ctx: StepContext, call: GrpcCall) -> GrpcAnswer: ...
