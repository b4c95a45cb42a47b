"""What every kind shares, and what the kinds import without importing each other.

``KindDefaults`` gives a kind the answers every kind shares (a decision for a step that is
not an approval is a conflict; an event for a step that does not wait is not taken), and
the checks below are the pieces the config checks share (unknown fields, a retry policy).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from runtime.core import effects as fx
from runtime.core.kinds import StepOps
from runtime.core.messages import DecideApproval, DeliverEvent, StepMessage
from runtime.language.templates import TemplateError, render
from runtime.model import Step, StepError, StepState, StepStatus
from runtime.model.errors import Conflict, Problem
from runtime.model.limits import MAX_RETRIES, count_problem, duration_problem, multiplier_problem
from runtime.model.suggest import unknown_field


class KindDefaults:
    """The hooks every kind shares unless it says otherwise."""

    uses_slot = False

    def resume(self, ops: StepOps, step: Step, state: StepState) -> None:
        pass  # nothing held in memory for this kind: its committed state says it all

    def scope_changed(self, ops: StepOps, step: Step) -> None:
        pass  # nothing of a parked step of this kind depends on other steps' outputs

    def message(self, ops: StepOps, step: Step, message: StepMessage) -> None:
        if isinstance(message, DecideApproval):
            state = ops.step_state(step.id)
            raise Conflict(f"step '{step.id}' is not awaiting approval (it is {state.status.value})")
        if isinstance(message, DeliverEvent):
            ops.emit(fx.Answer(message.reply, False))

    def timeout(self, ops: StepOps, step: Step) -> None:
        pass  # a kind without deadlines of its own

    def cancel(self, ops: StepOps, step: Step) -> None:
        pass  # nothing to release

    def decides(self, step: Step) -> Sequence[str]:
        return ()

    @staticmethod
    def rendered(ops: StepOps, step: Step) -> dict[str, Any] | None:
        """The step's config rendered in its scope, for a kind that starts without a task;
        None if a template fails: the step has then started and failed (``template``)."""
        try:
            config: dict[str, Any] = render(step.config, ops.scope(step.id))
        except TemplateError as exc:
            ops.mark_started(step, StepStatus.RUNNING)
            ops.fail(step.id, StepError("template", str(exc), False))
            return None
        return config


# -- checks the config checkers share


def positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def unknown_fields(config: Mapping[str, Any], known: set[str] | frozenset[str], path: str) -> list[Problem]:
    return [unknown_field(path, key, known) for key in config if key not in known]


_RETRY_FIELDS: dict[str, Callable[[Any], str | None]] = {
    "maxRetries": lambda value: count_problem(value, 0, MAX_RETRIES),
    "initialDelayMs": lambda value: duration_problem(value, allow_zero=True),
    "backoffMultiplier": multiplier_problem,
    "maxDelayMs": lambda value: duration_problem(value, allow_zero=True),
    "jitter": lambda value: None if isinstance(value, bool) else "must be true or false",
}


def check_retry_policy(policy: Any, path: str) -> list[Problem]:
    if not isinstance(policy, Mapping):
        return [Problem(path, "must be a mapping (object)")]
    problems = []
    items: dict[str, Any] = dict(policy)
    for key, value in items.items():
        check = _RETRY_FIELDS.get(key)
        if check is None:
            problems.append(unknown_field(path, key, _RETRY_FIELDS))
        elif (problem := check(value)) is not None:
            problems.append(Problem(f"{path}.{key}", problem))
    return problems
