"""OpenTelemetry traces of executions and step attempts (optional: the ``otel`` extra).

Tracing is off, and costs one check per attempt, unless a tracer provider is configured:
``configure(provider)`` (an embedding program, the tests), or the process-wide provider
an embedding program set with ``opentelemetry.trace.set_tracer_provider``, or, for
``runbooks serve``, ``configure_otlp()`` when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set
(spans go out over OTLP/HTTP in batches). Without the opentelemetry packages every
function here does nothing.

One execution is one trace, whichever processes ran it and however long it was parked:
its trace id and the span id of its execution span come from the SHA-256 of the execution
id (``execution_ids``). Each step attempt is a span (``step <stepId>``) whose parent is that
execution span, so it can be emitted by any process at any time; the execution span itself
(``execution <runbookId>``) is emitted once the execution finishes, with its real start and
end (``emit_execution_span``, called by the runtime as it publishes the finished state). ``inject`` writes the W3C
``traceparent`` of the current attempt span into outgoing HTTP headers or gRPC metadata.

Attributes: ``runbooks.execution.id``, ``runbooks.runbook.id``, ``runbooks.runbook.version``,
``runbooks.tenant.id``; on attempts also ``runbooks.step.id``, ``runbooks.step.type``,
``runbooks.step.attempt``, ``runbooks.step.iteration`` (loop bodies) and
``runbooks.step.outcome`` (``succeeded``, ``failed``, ``cancelled``) with
``runbooks.step.error.code`` and ``runbooks.step.error.retryable`` on a failure; on the
execution span ``runbooks.execution.status`` and ``runbooks.execution.error.code``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # the otel extra is not installed: tracing stays off
    trace = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from runtime.io.context import StepContext
    from runtime.model import Execution, StepError

__all__ = [
    "AttemptSpan",
    "attempt_span",
    "available",
    "configure",
    "configure_otlp",
    "emit_execution_span",
    "execution_ids",
    "inject",
    "tracing",
]

SCOPE: Final = "runbooks"
logger = logging.getLogger("runbooks.tracing")
_state: dict[str, Any] = {"provider": None, "tracers": None}


def available() -> bool:
    """Whether the OpenTelemetry SDK and the OTLP/HTTP exporter are installed."""
    names = ("opentelemetry.sdk.trace", "opentelemetry.exporter.otlp.proto.http.trace_exporter")
    try:
        return all(importlib.util.find_spec(name) is not None for name in names)
    except ModuleNotFoundError:
        return False


def configure(provider: Any) -> None:
    """Trace the engine with ``provider`` (an SDK ``TracerProvider``); None: back to the default."""
    _state["provider"] = provider
    _state["tracers"] = None


def configure_otlp(instance_id: str | None = None) -> Callable[[], None]:
    """Export spans over OTLP/HTTP (``OTEL_EXPORTER_OTLP_*`` settings); returns the shutdown."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": "runbooks"}
    if instance_id:
        attributes["service.instance.id"] = instance_id
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    configure(provider)

    def shutdown() -> None:
        configure(None)
        provider.shutdown()  # flushes the spans still queued

    return shutdown


def execution_ids(execution_id: str) -> tuple[int, int]:
    """(trace id, span id of the execution span): the same for an execution in every process."""
    digest = hashlib.sha256(execution_id.encode()).digest()
    trace_id = int.from_bytes(digest[:16], "big") or 1  # all-zero ids are invalid
    span_id = int.from_bytes(digest[16:24], "big") or 1
    return trace_id, span_id


# ---- attempts -------------------------------------------------------------------------------


class AttemptSpan:
    """The span of one attempt (a recording span, or nothing when tracing is off)."""

    def __init__(self, span: Any = None) -> None:
        self._span = span
        self._recorded = False

    def finished(self, error: StepError | None) -> None:
        """Record the attempt's outcome: success, or the step error it failed with."""
        if self._span is None:
            return
        self._recorded = True
        if error is None:
            self._span.set_attribute("runbooks.step.outcome", "succeeded")
            return
        self._span.set_attributes({"runbooks.step.outcome": "failed", "runbooks.step.error.code": error.code,
                                   "runbooks.step.error.retryable": error.retryable})
        self._span.set_status(trace.Status(trace.StatusCode.ERROR, error.message))

    def interrupted(self, exc: BaseException) -> None:
        if self._span is None or self._recorded:
            return
        self._span.set_attribute("runbooks.step.outcome", "cancelled")


_OFF: Final = AttemptSpan()


@contextmanager
def attempt_span(ctx: StepContext) -> Iterator[AttemptSpan]:
    """The span of the attempt ``ctx`` describes, current while the executor runs."""
    tracer = _tracer("step")
    if tracer is None:
        yield _OFF
        return
    span = tracer.start_span(f"step {ctx.step_id}", context=_execution_context(ctx.execution_id),
                             attributes=_attempt_attributes(ctx), start_time=_ns(ctx.services.now()),
                             record_exception=False, set_status_on_exception=False)
    handle = AttemptSpan(span)
    token = otel_context.attach(trace.set_span_in_context(span))
    try:
        yield handle
    except BaseException as exc:  # trio.Cancelled: the step was cancelled mid-attempt
        handle.interrupted(exc)
        raise
    finally:
        otel_context.detach(token)
        span.end(end_time=_ns(ctx.services.now()))


def _attempt_attributes(ctx: StepContext) -> dict[str, Any]:
    execution = ctx.scope.get("execution") or {}
    attributes: dict[str, Any] = {
        "runbooks.execution.id": ctx.execution_id, "runbooks.tenant.id": ctx.tenant_id,
        "runbooks.step.id": ctx.step_id, "runbooks.step.attempt": ctx.attempt,
        "runbooks.runbook.id": execution.get("runbookId", ""),
        "runbooks.runbook.version": execution.get("runbookVersion", 0),
    }
    if ctx.step_type is not None:
        attributes["runbooks.step.type"] = ctx.step_type
    if ctx.iteration is not None:
        attributes["runbooks.step.iteration"] = ctx.iteration
    return attributes


def _execution_context(execution_id: str) -> Any:
    trace_id, span_id = execution_ids(execution_id)
    parent = trace.SpanContext(trace_id, span_id, is_remote=True,
                               trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED))
    return trace.set_span_in_context(trace.NonRecordingSpan(parent), otel_context.Context())


def inject(carrier: MutableMapping[str, str]) -> None:
    """Add ``traceparent`` (and ``tracestate``) of the current span, if there is one."""
    if trace is None or not trace.get_current_span().get_span_context().is_valid:
        return
    TraceContextTextMapPropagator().inject(carrier)


# ---- executions -----------------------------------------------------------------------------


def emit_execution_span(execution: Execution) -> None:
    """The execution's span, with the ids ``execution_ids`` gives and its real times.

    Never raises: a tracing problem is logged, the execution is not affected."""
    try:
        _emit_execution_span(execution)
    except Exception:
        logger.exception("the span of execution %s could not be emitted", execution.id)


def _emit_execution_span(execution: Execution) -> None:
    tracer = _tracer("execution")
    if tracer is None or not hasattr(tracer, "id_generator"):
        return  # (the ids can be chosen only through the SDK's tracer)
    ids = _FixedIds(*execution_ids(execution.id))
    default_ids, tracer.id_generator = tracer.id_generator, ids
    try:
        span = tracer.start_span(
            f"execution {execution.runbook_id}", context=otel_context.Context(),
            attributes=_execution_attributes(execution),
            start_time=_ns(execution.started_at or execution.created_at),
        )
    finally:
        tracer.id_generator = default_ids
    if execution.error is not None:
        span.set_status(trace.Status(trace.StatusCode.ERROR, execution.error.message))
    span.end(end_time=_ns(execution.completed_at or execution.started_at or execution.created_at))


def _execution_attributes(execution: Execution) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "runbooks.execution.id": execution.id, "runbooks.runbook.id": execution.runbook_id,
        "runbooks.runbook.version": execution.runbook_version, "runbooks.tenant.id": execution.tenant_id,
        "runbooks.execution.status": execution.status.value,
    }
    if execution.error is not None:
        attributes["runbooks.execution.error.code"] = execution.error.code
    return attributes


class _FixedIds:
    """An SDK id generator that hands out one chosen trace id and span id."""

    def __init__(self, trace_id: int, span_id: int) -> None:
        self._trace_id, self._span_id = trace_id, span_id

    def generate_trace_id(self) -> int:
        return self._trace_id

    def generate_span_id(self) -> int:
        return self._span_id

    def is_trace_id_random(self) -> bool:
        return False


# ---- providers ------------------------------------------------------------------------------


def tracing() -> bool:
    """Whether attempts are traced (a tracer provider is configured)."""
    return _provider() is not None


def _tracer(kind: str) -> Any:
    """The engine's tracer for ``kind`` ("step" or "execution"), or None when tracing is off."""
    provider = _provider()
    if provider is None:
        return None
    tracers = _state["tracers"]
    if tracers is None or tracers[0] is not provider:
        tracers = (provider, {"step": provider.get_tracer(SCOPE),
                              "execution": provider.get_tracer(f"{SCOPE}.executions")})
        _state["tracers"] = tracers
    return tracers[1][kind]


def _provider() -> Any:
    if trace is None:
        return None
    if _state["provider"] is not None:
        return _state["provider"]
    provider = trace.get_tracer_provider()
    if isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
        return None  # nobody configured one: do nothing
    return provider


def _ns(at: datetime) -> int:
    return int(at.timestamp() * 1_000_000_000)
