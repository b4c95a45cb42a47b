"""What an executor sees: ``StepContext`` (custom step types and the built-in executors).

``ctx.log.*`` and ``ctx.add_evidence`` are plain calls: they buffer entries on the context,
and the StepActor hands them to the ExecutionActor with the attempt's outcome, so they are
committed together with it.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any

import attrs
import httpx

from runtime.io.grpc_bridge import Channels
from runtime.io.grpc_descriptors import Descriptors
from runtime.io.stand_in import StandIn
from runtime.model import Evidence, LogEntry
from runtime.model.errors import StepFailed
from runtime.model.jsonsafe import JsonProblem, clean_text, first_problem
from runtime.model.wire import sha256_hex
from runtime.security.outbound import HostAllowlist
from runtime.security.secrets import Secrets


@attrs.frozen
class Services:
    """Runtime services the built-in executors use (one per runtime).

    The gRPC channels (one per target and TLS setting) and the message descriptors found
    for them live as long as the runtime; ``close()`` closes the channels.
    """

    http: httpx.AsyncClient
    now: Callable[[], datetime]
    call_service_base_url: str | None = None
    grpc_channels: Channels = attrs.field(factory=Channels)
    grpc_descriptors: Descriptors = attrs.field(factory=Descriptors)
    secrets: Secrets = attrs.field(factory=Secrets)
    allowed_hosts: HostAllowlist | None = None  # None: any host (runtime.security.outbound)
    max_output_bytes: int = 1024 * 1024  # MAX_OUTPUT_BYTES: a step output, a response body
    stand_in: StandIn | None = None  # answers every outbound call instead of the network (runtime.io.stand_in)

    def close(self) -> None:
        self.grpc_channels.close()


class StepLog:
    """``debug/info/warning/error(message, **data)``: execution log entries of this step."""

    def __init__(self, context: StepContext) -> None:
        self._context = context

    def debug(self, message: str, **data: Any) -> None:
        self._context.record_log("debug", message, data)

    def info(self, message: str, **data: Any) -> None:
        self._context.record_log("info", message, data)

    def warning(self, message: str, **data: Any) -> None:
        self._context.record_log("warning", message, data)

    def error(self, message: str, **data: Any) -> None:
        self._context.record_log("error", message, data)


class StepContext:
    """The context of one attempt of one step (or of one loop iteration)."""

    def __init__(
        self,
        *,
        config: Mapping[str, Any],
        scope: Mapping[str, Any],
        execution_id: str,
        step_id: str,
        tenant_id: str,
        attempt: int,
        services: Services,
        iteration: int | None = None,
        step_type: str | None = None,
    ) -> None:
        self.config = config
        self.scope = scope
        self.execution_id = execution_id
        self.step_id = step_id
        self.tenant_id = tenant_id
        self.attempt = attempt
        self.iteration = iteration
        self.step_type = step_type
        self.services = services
        self.log = StepLog(self)
        self.logs: list[LogEntry] = []
        self.evidence: list[Evidence] = []

    @property
    def hop(self) -> int:
        """How many runbooks calling the engine led to this execution (its ``context.hop``)."""
        context = self.scope.get("context")
        hop = context.get("hop") if isinstance(context, Mapping) else None
        return hop if isinstance(hop, int) and not isinstance(hop, bool) and hop > 0 else 0

    def record_log(self, level: str, message: str, data: Mapping[str, Any]) -> None:
        """A log entry; data JSON cannot hold is kept as its (cleaned) ``repr`` with the reason,
        so a diagnostic never fails a step or reaches the store in a form it refuses."""
        fields: dict[str, Any] | None = dict(data) or None
        problem = first_problem(fields, "data")
        if problem is not None:
            fields = {"notJson": f"{problem.path}: {problem.message}", "repr": clean_text(repr(fields)[:2000])}
        text = clean_text(message if isinstance(message, str) else repr(message))
        self.logs.append(LogEntry(self.execution_id, self.services.now(), level, text, self.step_id, fields))

    def add_evidence(self, kind: str, data: Any) -> Evidence:
        """Store an evidence item with the SHA-256 of the canonical JSON of ``data``.

        Evidence is kept exactly, so ``data`` JSON cannot hold fails the attempt (``StepFailed``
        with code ``evidence_not_json``, not retried) instead of being altered.
        """
        problem = first_problem(data, "data")
        if problem is None and (not isinstance(kind, str) or not kind or clean_text(kind) != kind):
            problem = JsonProblem(("kind", "must be a non-empty string without NUL or lone surrogates"))
        if problem is not None:
            raise StepFailed(f"evidence cannot be stored: {problem.path}: {problem.message}", code="evidence_not_json")
        item = Evidence(
            id=uuid.uuid4().hex, execution_id=self.execution_id, step_id=self.step_id, kind=kind,
            sha256=sha256_hex(data), data=data, created_at=self.services.now(),
        )
        self.evidence.append(item)
        return item


Executor = Callable[[StepContext], Awaitable[Any]]
