"""The loop step's runner: its iterations, each a supervised child running the body's attempts.

A loop runs its body once per item (``items``) or while a condition holds (``while``, with
``index`` and ``previous`` in scope), at most ``concurrency`` at a time. A failure of an
iteration is reported, not raised; with ``failFast`` the others are cancelled.
``maxIterations`` is checked again here: exceeding it fails the step with ``loop_limit``
before anything is truncated. The config checks are ``runtime.kinds.loop``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import trio

from runtime.core.messages import StepFinished, StepProgressed
from runtime.io.attempts import Outcome, json_outcome, run_attempts
from runtime.io.context import Executor, StepContext
from runtime.io.task_run import TaskRun
from runtime.kinds.loop import MAX_ITERATIONS
from runtime.language.conditions import PatternError, evaluate
from runtime.language.templates import TemplateError, render
from runtime.model import LogEntry, RetryPolicy, StepError
from runtime.model.wire import from_json, to_json


async def run_loop(run: TaskRun) -> None:
    """The loop step's runner: its iterations, progress reports, then one StepFinished."""
    loop = LoopRun(run)
    outcome = await loop.run()
    if outcome.error is None:  # each iteration's output is within the cap; all of them may not be
        outcome = json_outcome(outcome.output, run.services.max_output_bytes)
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
            try:
                if not evaluate(self.config["while"], {**self.run_.scope, **extra}):
                    return Outcome(output=results)
            except PatternError as exc:
                return Outcome(error=StepError(exc.code, f"while: {exc}", False))
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
