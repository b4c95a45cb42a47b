"""Running a task step: its attempts, each under the per-attempt deadline, with backoff between.

``run_task`` is the runner of every task type that has an executor (call-service and the
embedding program's types): it renders the step's config, runs attempts until success, a
failure that is not retryable, or the retry budget is spent, and reports the outcome to its
execution as exactly one ``StepFinished`` tagged with the run's attempt id. An executor that
raises anything (an ``Exception``) fails its attempt; it never takes down the execution or
the process. ``run_attempts`` is shared with the loop, which runs a body per iteration.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import attrs
import trio

from runtime.core.messages import AttemptRetrying, AttemptStarted, StepFinished
from runtime.io import tracing
from runtime.io.context import Executor, StepContext
from runtime.io.task_run import TaskRun
from runtime.language.templates import TemplateError, render
from runtime.model import RetryPolicy, StepError
from runtime.model.errors import StepFailed
from runtime.model.jsonsafe import clean_text, first_problem, json_size

MakeContext = Callable[[int], StepContext]


@attrs.frozen
class Outcome:
    output: Any = None
    error: StepError | None = None


class AttemptReports(Protocol):
    """What a run of attempts tells about itself before its outcome."""

    async def retrying(self, attempt: int, error: StepError, delay_s: float, ctx: StepContext) -> None: ...

    async def attempt_started(self, attempt: int) -> None: ...


def backoff_s(policy: RetryPolicy, failed_attempt: int, retry_after_s: float | None = None) -> float:
    """The delay after the ``failed_attempt``-th attempt failed (1-based), in seconds."""
    # the exponent is capped: attempts count across retry_step, and a float power overflows
    delay_ms = policy.initial_delay_ms * policy.backoff_multiplier ** min(failed_attempt - 1, 64)
    delay_ms = min(delay_ms, policy.max_delay_ms)
    if policy.jitter:
        delay_ms *= random.uniform(0.5, 1.0)
    if retry_after_s is not None and retry_after_s * 1000 <= policy.max_delay_ms:
        delay_ms = retry_after_s * 1000  # the server knows best, within our cap
    return max(delay_ms, 0.0) / 1000


async def run_attempt(executor: Executor, ctx: StepContext, timeout_ms: int | None) -> tuple[Outcome, float | None]:
    """One attempt: (outcome, retry-after hint), inside the attempt's trace span (if traced)."""
    if not tracing.tracing():
        return await _attempt(executor, ctx, timeout_ms)
    with tracing.attempt_span(ctx) as span:
        outcome, retry_after = await _attempt(executor, ctx, timeout_ms)
        if outcome.error is not None:  # the span leaves the process: no secret in its message
            outcome = attrs.evolve(outcome, error=ctx.services.secrets.redact_error(outcome.error))
        span.finished(outcome.error)
        return outcome, retry_after


async def _attempt(executor: Executor, ctx: StepContext, timeout_ms: int | None) -> tuple[Outcome, float | None]:
    try:
        cap = ctx.services.max_output_bytes
        if not timeout_ms:  # no deadline: no cancel scope to enter and leave (the hot path)
            return json_outcome(await executor(ctx), cap), None
        with trio.fail_after(timeout_ms / 1000):
            return json_outcome(await executor(ctx), cap), None
    except trio.TooSlowError:
        return Outcome(error=StepError("timeout", f"attempt {ctx.attempt} timed out after {timeout_ms} ms", True)), None
    except StepFailed as exc:
        return Outcome(error=StepError(clean_text(exc.error_code), clean_text(exc.message), exc.retryable)), \
            exc.retry_after_s
    except TemplateError as exc:
        return Outcome(error=StepError("template", clean_text(str(exc)), False)), None
    except Exception as exc:  # an executor bug fails the attempt, never the process
        return Outcome(error=StepError("executor", clean_text(f"{type(exc).__name__}: {exc}"), True)), None


def json_outcome(output: Any, max_bytes: int | None = None) -> Outcome:
    """An executor's return value as the outcome: a value JSON cannot hold (a set, a datetime,
    NaN, a lone surrogate...) fails the step, not retried, before it reaches the store, and so
    does one over ``max_bytes`` as JSON (MAX_OUTPUT_BYTES: ``output_too_large``)."""
    problem = first_problem(output, "output")
    if problem is not None:
        return Outcome(error=StepError("output_not_json", f"the step's output cannot be stored as JSON: "
                                                          f"{problem.path}: {problem.message}", False))
    if max_bytes is not None and (size := json_size(output)) > max_bytes:
        return Outcome(error=output_too_large(size, max_bytes))
    return Outcome(output=output)


def output_too_large(size: int, cap: int) -> StepError:
    return StepError("output_too_large", f"the step's output is {size} bytes as JSON, over the cap of {cap} "
                                         "(MAX_OUTPUT_BYTES)", False)


async def run_attempts(executor: Executor, make_context: MakeContext, policy: RetryPolicy,
                       timeout_ms: int | None, first_attempt: int,
                       reports: AttemptReports | None) -> tuple[Outcome, StepContext]:
    """Attempts until success, a non-retryable failure or the retry budget is spent."""
    attempt = first_attempt
    while True:
        ctx = make_context(attempt)
        outcome, retry_after = await run_attempt(executor, ctx, timeout_ms)
        retries_used = attempt - first_attempt
        if outcome.error is None or not outcome.error.retryable or retries_used >= policy.max_retries:
            return outcome, ctx
        delay = backoff_s(policy, attempt, retry_after)
        if reports is not None:
            await reports.retrying(attempt, outcome.error, delay, ctx)
        await trio.sleep(delay)
        attempt += 1
        if reports is not None:
            await reports.attempt_started(attempt)


class _StepReports:
    """A task step's retries, told to its execution."""

    def __init__(self, run: TaskRun) -> None:
        self._run = run

    async def retrying(self, attempt: int, error: StepError, delay_s: float, ctx: StepContext) -> None:
        run = self._run
        await run.report(AttemptRetrying(run.step.id, run.attempt_id, attempt, error, delay_s,
                                         tuple(ctx.logs), tuple(ctx.evidence)))

    async def attempt_started(self, attempt: int) -> None:
        await self._run.report(AttemptStarted(self._run.step.id, self._run.attempt_id, attempt))


def executor_runner(executor: Executor) -> Callable[[TaskRun], Awaitable[None]]:
    """The runner of a task type with this executor."""

    async def run_task(run: TaskRun) -> None:
        step = run.step
        try:
            config = render(step.config, run.scope, run.services.secrets.lookup(run.tenant_id))
        except TemplateError as exc:
            await run.report(StepFinished(step.id, run.attempt_id, error=StepError("template", str(exc), False)))
            return
        outcome, ctx = await run_attempts(executor, lambda attempt: run.context(attempt, config), run.policy,
                                          step.timeout_ms, run.first_attempt, _StepReports(run))
        await run.report(StepFinished(step.id, run.attempt_id, outcome.output, outcome.error,
                                      tuple(ctx.logs), tuple(ctx.evidence)))

    return run_task
