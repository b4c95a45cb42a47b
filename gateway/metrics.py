"""Prometheus metrics of one gateway: a registry per app, never the process-global one.

``create_metrics()`` returns the metrics object and the ``batch_observer`` to give
``open_runtime`` (persistence batch sizes and commit latencies); ``GatewayMetrics.attach``
then follows a runtime through ``runtime.observers`` (executions started and finished,
steps by type and outcome, step durations) and reads its open executions at scrape time.
Observers run inside the engine's actors, so they never raise.

The execution counters add up: ``started`` counts each time this process begins running an
execution, so that ``started = finished + open`` at any moment:

- a new execution (``execution.started``);
- a finished execution re-opened by a step retry (``execution.retried``; also counted in
  ``retried``): it will finish again, and each finish is counted;
- an unfinished execution this process resumes: recovered from the store at start-up
  (counted when the metrics attach) or taken over from another process
  (``execution.taken_over``); also counted in ``resumed``.

The one exception: with PostgreSQL leases, an execution another process takes away from
this one stops here without finishing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from runtime import Execution, Runtime, StepState

logger = logging.getLogger("runbooks.gateway")

BatchObserver = Callable[[int, float], None]
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_STEP_BUCKETS = (0.005, 0.025, 0.1, 0.5, 1, 5, 15, 60, 300, 1800, 3600, 6 * 3600, 24 * 3600)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.executions_started = Counter(
            "runbooks_executions_started",
            "Executions this process began running: new, re-opened by a step retry, or resumed.", registry=r)
        self.executions_retried = Counter(
            "runbooks_executions_retried", "Finished executions re-opened by a step retry (also in started).",
            registry=r)
        self.executions_resumed = Counter(
            "runbooks_executions_resumed",
            "Unfinished executions resumed here: recovered at start-up or taken over (also in started).", registry=r)
        self.executions_finished = Counter(
            "runbooks_executions_finished", "Executions that reached a final status (each time), by status.",
            ["status"], registry=r)
        self.steps_finished = Counter(
            "runbooks_steps_finished", "Steps finished, by step type and outcome (final step status).",
            ["type", "outcome"], registry=r)
        self.step_duration = Histogram(
            "runbooks_step_duration_seconds", "Step duration (completedAt - startedAt), by step type.",
            ["type"], buckets=_STEP_BUCKETS, registry=r)
        self.batch_size = Histogram(
            "runbooks_persistence_batch_size", "Changes committed per persistence batch (group commit).",
            buckets=_SIZE_BUCKETS, registry=r)
        self.commit_latency = Histogram(
            "runbooks_persistence_commit_seconds", "Time to commit one persistence batch.",
            buckets=_LATENCY_BUCKETS, registry=r)
        self.open_executions = Gauge(
            "runbooks_open_executions", "Unfinished executions this process runs (live or parked).", registry=r)
        self.waiting_for_owner = Gauge(
            "runbooks_executions_waiting_for_capable_owner",
            "Unfinished executions no process runs that this one cannot take (a step type it lacks).", registry=r)
        self.runbooks_registered = Counter(
            "runbooks_runbooks_registered", "Runbook versions registered.", registry=r)
        self.http_requests = Counter(
            "runbooks_http_requests", "HTTP requests, by method, route (URL rule) and status.",
            ["method", "route", "status"], registry=r)
        self.http_duration = Histogram(
            "runbooks_http_request_duration_seconds", "Time to answer (to the response headers), by route.",
            ["method", "route"], buckets=_LATENCY_BUCKETS, registry=r)

        self.source_messages = Counter(
            "runbooks_source_messages", "Messages of event sources, by source and outcome (published, duplicate, "
            "refused).", ["source", "outcome"], registry=r)
        self.source_refusals = Counter(
            "runbooks_source_refusals", "Refused messages of event sources, by source and reason (missing, "
            "malformed, stale, mismatch: the signature; unmappable; too_large).", ["source", "reason"], registry=r)

        self.quota_refusals = Counter(
            "runbooks_quota_refusals", "Starts refused by a tenant's quota (429), by tenant and reason "
            "(maxActive, startsPerSecond).", ["tenant", "reason"], registry=r)

    def attach_sources(self, intake: Any) -> None:
        """Count the messages of the event sources (``Intake.observers``)."""
        intake.observers.append(self.on_source_message)

    def on_source_message(self, source_id: str, outcome: str, reason: str) -> None:
        self.source_messages.labels(source_id, outcome).inc()
        if outcome == "refused":
            self.source_refusals.labels(source_id, reason).inc()

    def observe_batch(self, size: int, seconds: float) -> None:
        """The ``batch_observer`` of ``open_runtime``."""
        self.batch_size.observe(size)
        self.commit_latency.observe(seconds)

    def attach(self, runtime: Runtime) -> None:
        """Follow ``runtime``: its observers and its open executions."""
        runtime.observers.append(self.on_runtime_event)
        self.open_executions.set_function(lambda: runtime.open_executions)
        self.waiting_for_owner.set_function(lambda: runtime.waiting_for_owner)
        recovered = runtime.open_executions  # running since start-up, before anyone counted
        self.executions_started.inc(recovered)
        self.executions_resumed.inc(recovered)

    def on_runtime_event(self, what: str, data: Any) -> None:
        try:
            self._record(what, data)
        except Exception:  # an observer must never break the engine
            logger.exception("metrics observer failed on %s", what)

    def _record(self, what: str, data: Any) -> None:
        if what == "execution.started":
            self.executions_started.inc()
        elif what == "execution.retried":
            self.executions_started.inc()
            self.executions_retried.inc()
        elif what == "execution.taken_over":
            self.executions_started.inc()
            self.executions_resumed.inc()
        elif what == "execution.finished" and isinstance(data, Execution):
            self.executions_finished.labels(data.status.value).inc()
        elif what == "step.finished":
            _, _, state = data
            self._step_finished(state)
        elif what == "quota.exceeded":
            tenant, reason = data
            self.quota_refusals.labels(tenant, reason).inc()
        elif what == "runbook.registered":
            self.runbooks_registered.inc()

    def _step_finished(self, state: StepState) -> None:
        self.steps_finished.labels(state.type, state.status.value).inc()
        if state.started_at is not None and state.completed_at is not None:
            seconds = (state.completed_at - state.started_at).total_seconds()
            self.step_duration.labels(state.type).observe(max(seconds, 0.0))

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.http_requests.labels(method, route, str(status)).inc()
        self.http_duration.labels(method, route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def create_metrics() -> tuple[GatewayMetrics, BatchObserver]:
    """A fresh metrics object and the ``batch_observer`` to pass to ``open_runtime``."""
    metrics = GatewayMetrics()
    return metrics, metrics.observe_batch
