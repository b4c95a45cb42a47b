"""What the execution actor hands a task step's runner, and a step type with its runner.

A ``TaskRun`` is one run of a task step (its attempts until an outcome); a ``Runner`` is
the Trio coroutine that takes it. A ``StepType`` is a name, its ``spec`` (its kind and its
config rules, ``runtime.kinds.spec``), and for task kinds the runner (and, for types that
run one executor per attempt, that executor).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import attrs

from runtime.core.messages import Message
from runtime.io.context import Executor, Services, StepContext
from runtime.kinds.spec import KindSpec
from runtime.model import RetryPolicy, Step


class StepTypes(Protocol):
    """The step types a runtime knows, with their executors (a loop runs its body's)."""

    def get(self, name: str) -> StepType | None: ...

    def names(self) -> list[str]: ...


@attrs.frozen
class TaskRun:
    """What a runner gets for one run of a task step (its attempts until an outcome)."""

    step: Step
    attempt_id: str
    first_attempt: int
    scope: Mapping[str, Any]
    execution_id: str
    tenant_id: str
    services: Services
    policy: RetryPolicy  # the step's retryPolicy, else the runtime's default
    default_policy: RetryPolicy  # the runtime's default (a loop body's starting point)
    types: StepTypes
    report: Callable[[Message], Awaitable[None]]

    def context(self, attempt: int, config: Mapping[str, Any], scope: Mapping[str, Any] | None = None,
                iteration: int | None = None) -> StepContext:
        return StepContext(config=config, scope=self.scope if scope is None else scope,
                           execution_id=self.execution_id, step_id=self.step.id, tenant_id=self.tenant_id,
                           attempt=attempt, services=self.services, iteration=iteration, step_type=self.step.type)


Runner = Callable[[TaskRun], Awaitable[None]]


@attrs.frozen
class StepType:
    name: str
    spec: KindSpec
    runner: Runner | None = None  # for kinds that run a task
    executor: Executor | None = None  # for task types that run one executor per attempt
    builtin: bool = True


