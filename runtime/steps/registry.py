"""The step types a runtime knows: the five built-in ones and the embedding program's own.

A ``StepType`` says how the engine runs a step (``kind``) and how its config is checked at
validation. Task types run an executor in a StepActor; the engine itself handles the other
kinds (an approval or an event wait parks the step in its ExecutionActor, a conditional is
decided inline, a loop runs its iterations as supervised children).
"""

from __future__ import annotations

import enum
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from runtime.errors import Problem
from runtime.steps import approval, call_service, conditional, wait_for_event
from runtime.steps.context import Executor


class StepKind(enum.Enum):
    TASK = "task"
    EVENT = "event"
    APPROVAL = "approval"
    CONDITIONAL = "conditional"
    LOOP = "loop"


ConfigCheck = Callable[[Mapping[str, Any], str, "StepTypes"], list[Problem]]


@attrs.frozen
class StepType:
    name: str
    kind: StepKind
    check_config: ConfigCheck
    executor: Executor | None = None


def _no_check(config: Mapping[str, Any], path: str, types: StepTypes) -> list[Problem]:
    return []


def _builtin() -> dict[str, StepType]:
    from runtime.steps import loop

    return {
        "call-service": StepType(
            "call-service", StepKind.TASK, lambda c, p, t: call_service.check_config(c, p),
            call_service.call_service,
        ),
        "wait-for-event": StepType("wait-for-event", StepKind.EVENT, lambda c, p, t: wait_for_event.check_config(c, p)),
        "human-approval": StepType("human-approval", StepKind.APPROVAL, lambda c, p, t: approval.check_config(c, p)),
        "conditional": StepType("conditional", StepKind.CONDITIONAL, lambda c, p, t: conditional.check_config(c, p)),
        "loop": StepType("loop", StepKind.LOOP, loop.check_config),
    }


class StepTypes:
    """Name -> StepType; custom task types are added with ``register``."""

    def __init__(self) -> None:
        self._types = _builtin()

    def register(self, name: str, executor: Any) -> None:
        if name in self._types and self._types[name].kind is not StepKind.TASK:
            raise ValueError(f"step type '{name}' is built in and cannot be replaced")
        self._types[name] = StepType(name, StepKind.TASK, _no_check, as_executor(name, executor))

    def get(self, name: str) -> StepType | None:
        return self._types.get(name)

    def __getitem__(self, name: str) -> StepType:
        return self._types[name]

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
