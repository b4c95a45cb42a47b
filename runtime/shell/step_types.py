"""The step types a runtime knows: the six built-in ones and the embedding program's own.

Each entry is a ``StepType`` (``runtime.io.task_run``): its kind (how the execution core runs
it), its config check, and for task types its runner. A custom type registered with
``register`` is a task with the program's executor.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from runtime.core.kinds import StepKind
from runtime.io import http
from runtime.io import loop as loop_runner
from runtime.io.attempts import executor_runner
from runtime.io.context import Executor
from runtime.io.task_run import StepType
from runtime.kinds import approval, call_service, conditional, loop, run_runbook, wait_for_event
from runtime.kinds.base import TypeLookup
from runtime.kinds.task import TASK
from runtime.model.errors import Problem


def _no_check(config: Mapping[str, Any], path: str, types: TypeLookup) -> list[Problem]:
    return []


def _builtin() -> dict[str, StepType]:
    def only(check: Any) -> Any:
        return lambda config, path, types: check(config, path)

    return {
        "call-service": StepType("call-service", TASK, only(call_service.check_config),
                                 executor_runner(http.call_service), http.call_service),
        "wait-for-event": StepType("wait-for-event", wait_for_event.EVENT, only(wait_for_event.check_config)),
        "human-approval": StepType("human-approval", approval.APPROVAL, only(approval.check_config)),
        "conditional": StepType("conditional", conditional.CONDITIONAL, only(conditional.check_config)),
        "loop": StepType("loop", TASK, loop.check_config, loop_runner.run_loop),
        "run-runbook": StepType("run-runbook", run_runbook.RUN_RUNBOOK, only(run_runbook.check_config)),
    }


class StepTypes:
    """Name -> StepType; custom task types are added with ``register``."""

    def __init__(self) -> None:
        self._types = _builtin()

    def register(self, name: str, executor: Any) -> None:
        existing = self._types.get(name)
        if existing is not None and existing.builtin and existing.executor is None:
            raise ValueError(f"step type '{name}' is built in and cannot be replaced")
        function = as_executor(name, executor)
        self._types[name] = StepType(name, TASK, _no_check, executor_runner(function), function, builtin=False)

    def get(self, name: str) -> StepType | None:
        return self._types.get(name)

    def kind_of(self, name: str) -> StepKind | None:
        found = self._types.get(name)
        return found.kind if found is not None else None

    def __getitem__(self, name: str) -> StepType:
        return self._types[name]

    def __contains__(self, name: object) -> bool:
        return name in self._types

    def names(self) -> list[str]:
        return sorted(self._types)


def as_executor(name: str, executor: Any) -> Executor:
    """An ``async def f(ctx)`` or an object with ``async def execute(self, ctx)``."""
    if inspect.iscoroutinefunction(executor):
        return executor  # type: ignore[no-any-return]
    method = getattr(executor, "execute", None)
    if method is not None and inspect.iscoroutinefunction(method):
        return method  # type: ignore[no-any-return]
    if callable(executor):
        return executor  # type: ignore[no-any-return]
    raise TypeError(f"executor for '{name}' must be an async function or have an async execute(ctx) method")
