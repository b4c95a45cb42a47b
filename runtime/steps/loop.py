"""loop: config checks and the loop actor.

A loop runs its body once per item (``items``) or while a condition holds (``while``, with
``index`` and ``previous`` in scope). Each iteration is its own supervised child: it runs
the body's attempts with the body's retry policy, and a failure is reported, not raised.
``maxIterations`` (default and hard cap 1000) is checked at validation and again here;
exceeding it fails the step with ``loop_limit`` before anything is truncated.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import trio

from runtime.conditions import condition_problems, evaluate
from runtime.errors import Problem
from runtime.limits import MAX_CONCURRENCY, count_problem, duration_problem
from runtime.messages import StepFinished, StepProgressed, StepRetrying
from runtime.model import LogEntry, RetryPolicy, StepError
from runtime.step import Outcome, run_attempts
from runtime.steps.context import Executor, StepContext
from runtime.templates import TemplateError, render

if TYPE_CHECKING:
    from runtime.steps.registry import StepTypes

MAX_ITERATIONS = 1000
_FIELDS = {"items", "while", "maxIterations", "concurrency", "failFast", "step"}
_BODY_FIELDS = {"type", "config", "retryPolicy", "timeoutMs"}

MakeIterationContext = Callable[[int, Any, int, Mapping[str, Any]], StepContext]
Report = Callable[[Any], Awaitable[None]]


def check_config(config: Mapping[str, Any], path: str, types: StepTypes) -> list[Problem]:
    from runtime.steps.registry import StepKind
    from runtime.validate import check_retry_policy

    problems = [Problem(f"{path}.{key}", f"unknown field '{key}'") for key in config if key not in _FIELDS]
    if ("items" in config) == ("while" in config):
        problems.append(Problem(path, "a loop needs exactly one of 'items' or 'while'"))
    if "items" in config and not isinstance(config["items"], list | str):
        problems.append(Problem(f"{path}.items", "must be a list or a template resolving to one"))
    if "while" in config:
        problems += condition_problems(config["while"], f"{path}.while")
    limit = config.get("maxIterations", MAX_ITERATIONS)
    if not _positive_int(limit):
        problems.append(Problem(f"{path}.maxIterations", "must be a positive integer"))
    elif limit > MAX_ITERATIONS:
        problems.append(Problem(f"{path}.maxIterations", f"loop maxIterations {limit} exceeds the cap of {MAX_ITERATIONS}"))
    if "concurrency" in config and (problem := count_problem(config["concurrency"], 1, MAX_CONCURRENCY)):
        problems.append(Problem(f"{path}.concurrency", problem))
    if "failFast" in config and not isinstance(config["failFast"], bool):
        problems.append(Problem(f"{path}.failFast", "must be true or false"))
    body = config.get("step")
    if not isinstance(body, Mapping):
        return [*problems, Problem(f"{path}.step", "required: the loop body {type, config, retryPolicy, timeoutMs}")]
    problems += [Problem(f"{path}.step.{k}", f"unknown field '{k}'") for k in body if k not in _BODY_FIELDS]
    body_type_name = body.get("type")
    body_type = types.get(body_type_name) if isinstance(body_type_name, str) else None
    if body_type is None:
        problems.append(Problem(f"{path}.step.type", f"unknown step type '{body.get('type')}'"))
    elif body_type.kind is not StepKind.TASK:
        problems.append(Problem(f"{path}.step.type", f"a loop body cannot be of type '{body_type.name}' (only call-service and custom types)"))
    elif not isinstance(body.get("config", {}), Mapping):
        problems.append(Problem(f"{path}.step.config", "must be a mapping (object)"))
    else:
        problems += body_type.check_config(body.get("config", {}), f"{path}.step.config", types)
    if "retryPolicy" in body:
        problems += check_retry_policy(body["retryPolicy"], f"{path}.step.retryPolicy")
    if "timeoutMs" in body and (problem := duration_problem(body["timeoutMs"])):
        problems.append(Problem(f"{path}.step.timeoutMs", problem))
    return problems


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


class LoopRun:
    """One run of a loop step; reports progress and one StepFinished."""

    def __init__(
        self,
        step_id: str,
        config: Mapping[str, Any],
        scope: Mapping[str, Any],
        executor: Executor,
        policy: RetryPolicy,
        make_context: MakeIterationContext,
        report: Report,
        timeout_ms: int | None = None,
    ) -> None:
        self.step_id, self.config, self.scope = step_id, config, scope
        self.timeout_ms = timeout_ms  # the loop step's own timeoutMs: the whole loop, every iteration
        self.executor, self.policy, self.make_context, self.report = executor, policy, make_context, report
        self.limit = min(int(config.get("maxIterations", MAX_ITERATIONS)), MAX_ITERATIONS)
        self.body = config["step"]
        self.logs: list[Any] = []
        self.evidence: list[Any] = []

    async def run(self) -> None:
        outcome = Outcome(error=StepError("timeout", f"loop did not finish within {self.timeout_ms} ms", False))
        with trio.move_on_after(self.timeout_ms / 1000 if self.timeout_ms else math.inf):
            try:
                if "items" in self.config:
                    outcome = await self._run_items()
                else:
                    outcome = await self._run_while()
            except TemplateError as exc:
                outcome = Outcome(error=StepError("template", str(exc), False))
        await self.report(StepFinished(self.step_id, outcome.output, outcome.error, tuple(self.logs), tuple(self.evidence)))

    async def _run_items(self) -> Outcome:
        items = render(self.config["items"], self.scope)
        if not isinstance(items, list):
            return Outcome(error=StepError("template", f"loop items resolved to {type(items).__name__}, not a list"))
        if len(items) > self.limit:
            return Outcome(error=StepError("loop_limit", f"{len(items)} items exceed maxIterations {self.limit}"))
        results: list[Any] = [None] * len(items)
        errors: dict[int, StepError] = {}
        done = 0
        # Slots are taken in item order by this task, so iterations start in item order
        # (with concurrency 1 they run strictly one after the other, first item first).
        slots = trio.Semaphore(int(self.config.get("concurrency", 1)))
        fail_fast = bool(self.config.get("failFast", True))
        await self.report(StepProgressed(self.step_id, {"done": 0, "total": len(items)}))

        async def iteration(index: int, item: Any) -> None:
            nonlocal done
            try:
                outcome = await self._iterate(index, {"item": item, "index": index})
                if outcome.error is not None:
                    errors[index] = outcome.error
                    if fail_fast:  # before the slot is freed: no further item may start
                        iterations.cancel_scope.cancel()
            finally:
                slots.release()
            results[index] = outcome.output
            done += 1
            await self.report(StepProgressed(self.step_id, {"done": done, "total": len(items)}))

        async with trio.open_nursery() as iterations:
            for index, item in enumerate(items):
                await slots.acquire()
                iterations.start_soon(iteration, index, item, name=f"loop {self.step_id}[{index}]")
        return self._result(results, errors)

    async def _run_while(self) -> Outcome:
        results: list[Any] = []
        previous: Any = None
        for index in range(self.limit + 1):
            extra = {"index": index, "previous": previous}
            if not evaluate(self.config["while"], {**self.scope, **extra}):
                return Outcome(output=results)
            if index == self.limit:
                break
            outcome = await self._iterate(index, extra)
            if outcome.error is not None:
                return self._result(results, {index: outcome.error})
            results.append(outcome.output)
            previous = outcome.output
            await self.report(StepProgressed(self.step_id, {"done": index + 1, "total": None}))
        return Outcome(error=StepError("loop_limit", f"'while' still true after maxIterations {self.limit}"))

    async def _iterate(self, index: int, extra: Mapping[str, Any]) -> Outcome:
        scope = {**self.scope, **extra}
        try:
            config = render(self.body.get("config", {}), scope)
        except TemplateError as exc:
            return Outcome(error=StepError("template", str(exc), False))
        latest: list[StepContext] = []

        def make(attempt: int) -> StepContext:
            ctx = self.make_context(index, scope, attempt, config)
            latest[:] = [ctx]
            return ctx

        async def on_attempt(message: Any) -> None:
            # A failed attempt's logs and evidence (e.g. a 503 response) are kept, not only
            # the last attempt's; the retry itself is logged like a step retry.
            if isinstance(message, StepRetrying):
                self.logs += message.logs
                self.evidence += message.evidence
                ctx = latest[0]
                self.logs.append(LogEntry(
                    ctx.execution_id, ctx.services.now(), "warning",
                    f"iteration {index} retrying in {message.delay_s:.3f} s: {message.error.message}",
                    self.step_id, {"index": index, "attempt": message.attempt, "code": message.error.code},
                ))

        outcome, ctx = await run_attempts(
            self.executor, make, self.policy, self.body.get("timeoutMs"), 1, on_attempt, self.step_id,
        )
        self.logs += ctx.logs
        self.evidence += ctx.evidence
        return outcome

    def _result(self, results: list[Any], errors: dict[int, StepError]) -> Outcome:
        if not errors:
            return Outcome(output=results)
        index = min(errors)
        error = errors[index]
        return Outcome(output=results, error=StepError(error.code, f"iteration {index} failed: {error.message}", False))
