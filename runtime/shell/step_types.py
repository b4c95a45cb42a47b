"""The step types a runtime knows: the six built-in ones and the embedding program's own.

Each entry is a ``StepType`` (``runtime.io.task_run``): the spec of its kind from
``runtime.kinds`` (how the execution core runs it, its config rules) and, for task types,
its runner from ``runtime.io``. A custom type registered with ``register`` is a task with
the program's executor.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping
from typing import Any

from runtime.core.kinds import StepKind
from runtime.io import http
from runtime.io import loop as loop_runner
from runtime.io.attempts import executor_runner
from runtime.io.context import Executor
from runtime.io.task_run import StepType
from runtime.kinds import (
    approval,
    call_service,
    conditional,
    loop,
    run_runbook,
    task,
    wait_for_event,
)
from runtime.model.errors import StepFailed


def _builtin(required_separation: bool) -> dict[str, StepType]:
    return {
        "call-service": StepType("call-service", call_service.SPEC, executor_runner(http.call_service),
                                 http.call_service),
        "wait-for-event": StepType("wait-for-event", wait_for_event.SPEC),
        "human-approval": StepType("human-approval", approval.spec(required_separation)),
        "conditional": StepType("conditional", conditional.SPEC),
        "loop": StepType("loop", loop.SPEC, loop_runner.run_loop),
        "run-runbook": StepType("run-runbook", run_runbook.SPEC),
    }


class StepTypes(Mapping[str, StepType]):
    """A read-only mapping of name -> StepType (``sorted(types)``, ``len``, ``in``, ``items()``
    work as for a dict); custom task types are added with ``register``. ``required_separation``:
    separation of duties on every approval step (``REQUIRE_SEPARATION_OF_DUTIES``)."""

    def __init__(self, required_separation: bool = False) -> None:
        self._types = _builtin(required_separation)

    def register(self, name: str, executor: Any) -> None:
        existing = self._types.get(name)
        if existing is not None and existing.builtin and existing.executor is None:
            raise ValueError(f"step type '{name}' is built in and cannot be replaced")
        function = as_executor(name, executor)
        self._types[name] = StepType(name, task.SPEC, executor_runner(function), function, builtin=False)

    def kind_of(self, name: str) -> StepKind | None:
        found = self._types.get(name)
        return found.spec.kind if found is not None else None

    def __getitem__(self, name: str) -> StepType:
        return self._types[name]

    def __contains__(self, name: object) -> bool:
        return name in self._types

    def __iter__(self) -> Iterator[str]:
        return iter(self._types)

    def __len__(self) -> int:
        return len(self._types)

    def names(self) -> list[str]:
        return sorted(self._types)


def as_executor(name: str, executor: Any) -> Executor:
    """An ``async def f(ctx)`` or an object with ``async def execute(self, ctx)``. Any other
    callable is taken as one that returns an awaitable (``lambda ctx: fetch(ctx)``); if it
    returns something else (a plain function's result), the step fails at once, saying so,
    rather than being retried for an error that no retry can cure."""
    if inspect.iscoroutinefunction(executor):
        return executor  # type: ignore[no-any-return]
    method = getattr(executor, "execute", None)
    if method is not None and inspect.iscoroutinefunction(method):
        return method  # type: ignore[no-any-return]
    if callable(executor):
        return _awaiting(name, executor)
    raise TypeError(f"executor for '{name}' must be an async function or have an async execute(ctx) method")


def _awaiting(name: str, executor: Any) -> Executor:
    async def run(ctx: Any) -> Any:
        result = executor(ctx)
        if not inspect.isawaitable(result):
            raise StepFailed(f"the executor of step type '{name}' returned {type(result).__name__}, not an "
                             "awaitable: register an async function (async def f(ctx)) or an object with an "
                             "async execute(ctx) method", code="executor_not_async")
        return await result
    return run
