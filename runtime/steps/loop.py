"""loop: config checks and the loop's runner.

A loop runs its body once per item (``items``) or while a condition holds (``while``, with
``index`` and ``previous`` in scope). Each iteration is its own supervised child: it runs
the body's attempts with the body's retry policy, and a failure is reported, not raised.
``maxIterations`` (default and hard cap 1000) is checked at validation and again here;
exceeding it fails the step with ``loop_limit`` before anything is truncated. In the
execution core a loop is a task step like any other (``runtime.steps.task``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import trio

from runtime.conditions import condition_problems, evaluate
from runtime.core.messages import StepFinished, StepProgressed
from runtime.errors import Problem
from runtime.limits import MAX_CONCURRENCY, count_problem, duration_problem
from runtime.model import LogEntry, RetryPolicy, StepError
from runtime.step import Outcome, run_attempts
from runtime.steps.base import TaskRun, TypeLookup, check_retry_policy, positive_int, unknown_fields
from runtime.steps.context import Executor, StepContext
from runtime.templates import TemplateError, render
from runtime.wire import from_json, to_json

MAX_ITERATIONS = 1000
_FIELDS = frozenset({"items", "while", "maxIterations", "concurrency", "failFast", "step"})
_BODY_FIELDS = frozenset({"type", "config", "retryPolicy", "timeoutMs"})


def check_config(config: Mapping[str, Any], path: str, types: TypeLookup) -> list[Problem]:
    problems = unknown_fields(config, _FIELDS, path)
    if ("items" in config) == ("while" in config):
        problems.append(Problem(path, "a loop needs exactly one of 'items' or 'while'"))
    if "items" in config and not isinstance(config["items"], list | str):
        problems.append(Problem(f"{path}.items", "must be a list or a template resolving to one"))
    if "while" in config:
        problems += condition_problems(config["while"], f"{path}.while")
    limit = config.get("maxIterations", MAX_ITERATIONS)
    if not positive_int(limit):
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
    return problems + _body_problems(body, f"{path}.step", types)


def _body_problems(body: Mapping[str, Any], path: str, types: TypeLookup) -> list[Problem]:
    problems = unknown_fields(body, _BODY_FIELDS, path)
    name = body.get("type")
    body_type = types.get(name) if isinstance(name, str) else None
    if body_type is None:
        problems.append(Problem(f"{path}.type", f"unknown step type '{name}'"))
    elif body_type.executor is None:
        problems.append(Problem(f"{path}.type", f"a loop body cannot be of type '{body_type.name}' (only call-service and custom types)"))
    elif not isinstance(body.get("config", {}), Mapping):
        problems.append(Problem(f"{path}.config", "must be a mapping (object)"))
    else:
        problems += body_type.check_config(body.get("config", {}), f"{path}.config", types)
    if "retryPolicy" in body:
        problems += check_retry_policy(body["retryPolicy"], f"{path}.retryPolicy")
    if "timeoutMs" in body and (problem := duration_problem(body["timeoutMs"])):
        problems.append(Problem(f"{path}.timeoutMs", problem))
    return problems


async def run_loop(run: TaskRun) -> None:
    """The loop step's runner: its iterations, progress reports, then one StepFinished."""
    loop = LoopRun(run)
    outcome = await loop.run()
    await run.report(StepFinished(run.step.id, run.attempt_id, outcome.output, outcome.error,
                                  tuple(loop.logs), tuple(loop.evidence)))


class LoopRun:
    """One run of a loop step."""

    def __init__(self, run: TaskRun) -> None:
        self.run_ = run
        self.step_id = run.step.id
        self.timeout_ms = run.step.timeout_ms  # the loop step's own timeoutMs: the whole loop
        self.config = run.step.config
        self.limit = min(int(self.config.get("maxIterations", MAX_ITERATIONS)), MAX_ITERATIONS)
        self.body: Mapping[str, Any] = self.config["step"]  # rendered per iteration, with item and index
        self.logs: list[LogEntry] = []
        self.evidence: list[Any] = []
        self.executor: Executor | None = None
        self.policy = run.default_policy

    async def run(self) -> Outcome:
        outcome = Outcome(error=StepError("timeout", f"loop did not finish within {self.timeout_ms} ms", False))
        with trio.move_on_after(self.timeout_ms / 1000 if self.timeout_ms else math.inf):
            try:
                body_type = self.run_.types.get(self.body["type"])
                if body_type is None or body_type.executor is None:  # validated: only if unregistered since
                    return Outcome(error=StepError("executor", f"loop body type '{self.body['type']}' is unknown"))
                self.executor, self.policy = body_type.executor, self._policy()
                if "items" in self.config:
                    outcome = await self._run_items()
                else:
                    outcome = await self._run_while()
            except TemplateError as exc:
                outcome = Outcome(error=StepError("template", str(exc), False))
        return outcome

    def _policy(self) -> RetryPolicy:
        policy = self.run_.default_policy
        if "retryPolicy" in self.body:
            policy = from_json({**to_json(policy), **self.body["retryPolicy"]}, RetryPolicy)
        return policy

    async def _progress(self, done: int, total: int | None) -> None:
        await self.run_.report(StepProgressed(self.step_id, self.run_.attempt_id, {"done": done, "total": total}))

    async def _run_items(self) -> Outcome:
        config = self.config
        items = render(config["items"], self.run_.scope, self.run_.services.secrets.lookup(self.run_.tenant_id))
        if not isinstance(items, list):
            return Outcome(error=StepError("template", f"loop items resolved to {type(items).__name__}, not a list"))
        if len(items) > self.limit:
            return Outcome(error=StepError("loop_limit", f"{len(items)} items exceed maxIterations {self.limit}"))
        results: list[Any] = [None] * len(items)
        errors: dict[int, StepError] = {}
        done = 0
        # Slots are taken in item order by this task, so iterations start in item order
        # (with concurrency 1 they run strictly one after the other, first item first).
        slots = trio.Semaphore(int(config.get("concurrency", 1)))
        fail_fast = bool(config.get("failFast", True))
        await self._progress(0, len(items))

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
            await self._progress(done, len(items))

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
            if not evaluate(self.config["while"], {**self.run_.scope, **extra}):
                return Outcome(output=results)
            if index == self.limit:
                break
            outcome = await self._iterate(index, extra)
            if outcome.error is not None:
                return self._result(results, {index: outcome.error})
            results.append(outcome.output)
            previous = outcome.output
            await self._progress(index + 1, None)
        return Outcome(error=StepError("loop_limit", f"'while' still true after maxIterations {self.limit}"))

    async def _iterate(self, index: int, extra: Mapping[str, Any]) -> Outcome:
        scope = {**self.run_.scope, **extra}
        try:
            config = render(self.body.get("config", {}), scope, self.run_.services.secrets.lookup(self.run_.tenant_id))
        except TemplateError as exc:
            return Outcome(error=StepError("template", str(exc), False))
        reports = _IterationReports(self, index)

        def make(attempt: int) -> StepContext:
            return self.run_.context(attempt, config, scope, iteration=index)

        assert self.executor is not None
        outcome, ctx = await run_attempts(self.executor, make, self.policy, self.body.get("timeoutMs"), 1, reports)
        self.logs += ctx.logs
        self.evidence += ctx.evidence
        return outcome

    def _result(self, results: list[Any], errors: dict[int, StepError]) -> Outcome:
        if not errors:
            return Outcome(output=results)
        index = min(errors)
        error = errors[index]
        return Outcome(output=results, error=StepError(error.code, f"iteration {index} failed: {error.message}", False))


class _IterationReports:
    """An iteration's retries: a failed attempt's logs and evidence (e.g. a 503 response) are
    kept, not only the last attempt's, and the retry is logged like a step retry."""

    def __init__(self, loop: LoopRun, index: int) -> None:
        self._loop = loop
        self._index = index

    async def retrying(self, attempt: int, error: StepError, delay_s: float, ctx: StepContext) -> None:
        loop = self._loop
        loop.logs += ctx.logs
        loop.evidence += ctx.evidence
        loop.logs.append(LogEntry(
            ctx.execution_id, ctx.services.now(), "warning",
            f"iteration {self._index} retrying in {delay_s:.3f} s: {error.message}",
            loop.step_id, {"index": self._index, "attempt": attempt, "code": error.code},
        ))

    async def attempt_started(self, attempt: int) -> None:
        pass  # an iteration's attempts are counted in its own logs, not on the step
