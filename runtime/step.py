"""The StepActor: runs the attempts of one task step (or one loop iteration).

Each attempt runs the executor under the per-attempt deadline; a retryable failure waits out
the backoff (exponential, capped, with jitter) and tries again; the outcome is reported to
the ExecutionActor as exactly one ``StepFinished``. An executor that raises anything
(an ``Exception``) fails its attempt; it never takes down the execution or the process.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from runtime.errors import StepFailed
from runtime.jsonsafe import clean_text, first_problem
from runtime.messages import StepAttemptStarted, StepFinished, StepRetrying
from runtime.model import RetryPolicy, StepError
from runtime.steps.context import Executor, StepContext
from runtime.templates import TemplateError

Report = Callable[[Any], Awaitable[None]]
MakeContext = Callable[[int], StepContext]


@attrs.frozen
class Outcome:
    output: Any = None
    error: StepError | None = None


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
    """One attempt: (outcome, retry-after hint)."""
    try:
        if not timeout_ms:  # no deadline: no cancel scope to enter and leave (the hot path)
            return json_outcome(await executor(ctx)), None
        with trio.fail_after(timeout_ms / 1000):
            return json_outcome(await executor(ctx)), None
    except trio.TooSlowError:
        return Outcome(error=StepError("timeout", f"attempt {ctx.attempt} timed out after {timeout_ms} ms", True)), None
    except StepFailed as exc:
        return Outcome(error=StepError(clean_text(exc.error_code), clean_text(exc.message), exc.retryable)), \
            exc.retry_after_s
    except TemplateError as exc:
        return Outcome(error=StepError("template", clean_text(str(exc)), False)), None
    except Exception as exc:  # an executor bug fails the attempt, never the process
        return Outcome(error=StepError("executor", clean_text(f"{type(exc).__name__}: {exc}"), True)), None


def json_outcome(output: Any) -> Outcome:
    """An executor's return value as the outcome: a value JSON cannot hold (a set, a datetime,
    NaN, a lone surrogate...) fails the step, not retried, before it reaches the store."""
    problem = first_problem(output, "output")
    if problem is None:
        return Outcome(output=output)
    return Outcome(error=StepError("output_not_json", f"the step's output cannot be stored as JSON: "
                                                      f"{problem.path}: {problem.message}", False))


async def run_attempts(
    executor: Executor,
    make_context: MakeContext,
    policy: RetryPolicy,
    timeout_ms: int | None,
    first_attempt: int,
    report: Report | None,
    step_id: str,
) -> tuple[Outcome, StepContext]:
    """Attempts until success, a non-retryable failure or the retry budget is spent."""
    attempt = first_attempt
    while True:
        ctx = make_context(attempt)
        outcome, retry_after = await run_attempt(executor, ctx, timeout_ms)
        retries_used = attempt - first_attempt
        if outcome.error is None or not outcome.error.retryable or retries_used >= policy.max_retries:
            return outcome, ctx
        delay = backoff_s(policy, attempt, retry_after)
        if report is not None:
            await report(StepRetrying(step_id, attempt, outcome.error, delay, tuple(ctx.logs), tuple(ctx.evidence)))
        await trio.sleep(delay)
        attempt += 1
        if report is not None:
            await report(StepAttemptStarted(step_id, attempt))


async def step_actor(
    step_id: str,
    executor: Executor,
    make_context: MakeContext,
    policy: RetryPolicy,
    timeout_ms: int | None,
    first_attempt: int,
    report: Report,
) -> None:
    """A task step: its attempts, then exactly one StepFinished to its execution."""
    outcome, ctx = await run_attempts(executor, make_context, policy, timeout_ms, first_attempt, report, step_id)
    await report(StepFinished(step_id, outcome.output, outcome.error, tuple(ctx.logs), tuple(ctx.evidence)))
