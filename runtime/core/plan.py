"""``Plan``: what the core derives once from a runbook version and shares between executions.

Step order and positions, each step's kind, which conditional decides which step, who
depends on whom, and the concurrency limit. Built once per runbook version (and per
runtime, since the kinds of custom types are the embedding program's).
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from runtime.core.kinds import StepKind
from runtime.model import Execution, Runbook, Step, StepStatus


class UnknownStepType(LookupError):
    """The runbook needs a step type this runtime has not registered (yet)."""

    def __init__(self, type_name: str) -> None:
        super().__init__(f"step type '{type_name}' is not registered in this runtime")
        self.type_name = type_name


@attrs.frozen(eq=False)
class Plan:
    runbook: Runbook
    by_id: dict[str, Step]
    positions: dict[str, int]
    kinds: dict[str, StepKind]
    branch_owners: dict[str, tuple[str, ...]]  # step -> the conditionals that decide it
    dependents: dict[str, tuple[str, ...]]  # step -> the steps that depend on it
    max_running: int

    @property
    def steps(self) -> tuple[Step, ...]:
        return self.runbook.steps

    @classmethod
    def build(cls, runbook: Runbook, kind_of: Callable[[str], StepKind | None], max_running: int) -> Plan:
        """Raises ``UnknownStepType`` for a type ``kind_of`` does not know."""
        kinds: dict[str, StepKind] = {}
        for step in runbook.steps:
            kind = kind_of(step.type)
            if kind is None:
                raise UnknownStepType(step.type)
            kinds[step.id] = kind
        owners: dict[str, list[str]] = {}
        dependents: dict[str, list[str]] = {}
        for step in runbook.steps:
            for target in dict.fromkeys(kinds[step.id].decides(step)):
                owners.setdefault(target, []).append(step.id)
            for dep in step.depends_on or ():
                dependents.setdefault(dep, []).append(step.id)
        return cls(
            runbook=runbook,
            by_id={s.id: s for s in runbook.steps},
            positions={s.id: i for i, s in enumerate(runbook.steps)},
            kinds=kinds,
            branch_owners={k: tuple(v) for k, v in owners.items()},
            dependents={k: tuple(v) for k, v in dependents.items()},
            max_running=runbook.max_concurrent_steps or max_running,
        )


def steps_to_retry(plan: Plan, execution: Execution, step_id: str) -> set[str]:
    """The step, the steps its failure cancelled, and everything downstream that did not succeed."""
    reset = {step_id} | {sid for sid, s in execution.steps.items() if s.status is StepStatus.CANCELLED}
    frontier = list(reset)
    while frontier:
        for child in plan.dependents.get(frontier.pop(), ()):
            if child not in reset and execution.steps[child].status is not StepStatus.SUCCEEDED:
                reset.add(child)
                frontier.append(child)
    return reset
