"""wait-for-event: config checks, the event -> output rule and the kind: the step parks,
subscribed to its (tenant, event type, correlation key), until an event that passes its
filter arrives (a ``DeliverEvent`` message from the EventRouter) or its deadline passes."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from runtime.core import effects as fx
from runtime.core.kinds import StepOps
from runtime.core.messages import DeliverEvent, StepMessage
from runtime.kinds.base import KindDefaults
from runtime.kinds.spec import KindSpec, ignoring_types
from runtime.language.conditions import condition_problems, event_passes
from runtime.language.templates import TemplateError, render
from runtime.model import Event, Step, StepError, StepState, StepStatus
from runtime.model.errors import Problem
from runtime.model.limits import duration_problem
from runtime.model.suggest import unknown_field
from runtime.model.wire import format_time

DEFAULT_TIMEOUT_MS = 3_600_000
_FIELDS = {"eventType", "correlationKey", "timeoutMs", "filter"}


def check_config(config: Mapping[str, Any], path: str) -> list[Problem]:
    problems = [unknown_field(path, key, _FIELDS) for key in config if key not in _FIELDS]
    for key in ("eventType", "correlationKey"):
        if not isinstance(config.get(key), str) or not config.get(key):
            problems.append(Problem(f"{path}.{key}", "required: a non-empty string"))
    if (problem := duration_problem(config.get("timeoutMs", DEFAULT_TIMEOUT_MS))) is not None:
        problems.append(Problem(f"{path}.timeoutMs", problem))
    if "filter" in config:
        problems += condition_problems(config["filter"], f"{path}.filter")
    return problems


def matches(config: Mapping[str, Any], event: Event) -> bool:
    return event_passes(config.get("filter"), event.payload, event.type)


def output(event: Event) -> dict[str, Any]:
    return {
        "type": event.type,
        "correlationKey": event.correlation_key,
        "payload": event.payload,
        "receivedAt": format_time(event.received_at),
    }


def timeout_ms(step: Step) -> int:
    timeout: int = step.config.get("timeoutMs", step.timeout_ms or DEFAULT_TIMEOUT_MS)
    return timeout


class EventKind(KindDefaults):
    def begin(self, ops: StepOps, step: Step) -> None:
        config = self.rendered(ops, step)
        if config is None:
            return
        deadline = ops.now + timedelta(milliseconds=timeout_ms(step))
        ops.mark_started(step, StepStatus.WAITING, deadline_at=deadline, approvals=())
        self._wait(ops, step, config, deadline)

    def resume(self, ops: StepOps, step: Step, state: StepState) -> None:
        try:
            config = render(step.config, ops.scope(step.id))
        except TemplateError as exc:
            ops.fail(step.id, StepError("template", str(exc), False))
            return
        self._wait(ops, step, config, state.deadline_at)

    def _wait(self, ops: StepOps, step: Step, config: Mapping[str, Any], deadline: Any) -> None:
        ops.waits.park(step.id, deadline)
        ops.waits.subscribe(step.id, config["eventType"], str(config["correlationKey"]), config.get("filter"))

    def message(self, ops: StepOps, step: Step, message: StepMessage) -> None:
        if not isinstance(message, DeliverEvent):
            super().message(ops, step, message)
            return
        if ops.step_state(step.id).status is not StepStatus.WAITING:
            ops.emit(fx.Answer(message.reply, False))
            return
        event = message.event
        if not matches(render(step.config, ops.scope(step.id)), event):
            ops.emit(fx.Answer(message.reply, False))
            return
        ops.waits.unpark(step.id)
        ops.waits.unsubscribe(step.id)
        ops.succeed(step.id, output(event))
        ops.audit("event.received", step_id=step.id, type=event.type, correlationKey=event.correlation_key)
        if message.reply is None:  # a retained event, handed over as the step subscribed
            ops.consume_event(event.id)
        else:
            if message.receipt is not None:  # a source's message: its receipt commits with the step taking it
                ops.take_receipt(message.receipt)
            ops.emit(fx.Answer(message.reply, True))

    def timeout(self, ops: StepOps, step: Step) -> None:
        ops.waits.unpark(step.id)
        ops.waits.unsubscribe(step.id)
        ops.fail(step.id, StepError("timeout", f"no event within {timeout_ms(step)} ms", False))

    def cancel(self, ops: StepOps, step: Step) -> None:
        ops.waits.unpark(step.id)
        ops.waits.unsubscribe(step.id)


EVENT = EventKind()
SPEC = KindSpec(EVENT, ignoring_types(check_config))
