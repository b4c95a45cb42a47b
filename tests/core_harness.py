"""A driver for the pure execution core: a runbook, the state, a clock, and what the
effects did (committed records, attempts spawned and running, replies, the timer)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs

from runtime.core import ExecutionState, Plan, apply_all, created
from runtime.core import effects as fx
from runtime.core.messages import Begin, Continue, Message, StepFinished
from runtime.documents.validate import build_runbook
from runtime.model import Execution
from runtime.model.records import Change
from runtime.shell.step_types import StepTypes
from runtime.store.memory import MemoryStore

T0 = datetime(2026, 1, 1, tzinfo=UTC)


async def _noop(ctx: Any) -> Any:
    return None


def plan_of(doc: dict[str, Any], max_running: int = 5) -> Plan:
    types = StepTypes()
    types.register("task", _noop)
    runbook = attrs.evolve(build_runbook(doc, types, 0), version=1)
    return Plan.build(runbook, types.kind_of, max_running)


@attrs.define
class Reply:
    """A reply token that counts its answers."""

    name: str
    answers: list[Any] = attrs.Factory(list)


class Driver:
    """Applies messages as the actor shell would, and keeps what the effects did."""

    def __init__(self, doc: dict[str, Any], *, input: Any = None, context: dict[str, Any] | None = None) -> None:
        self.plan = plan_of(doc)
        self.now = T0
        self.store = MemoryStore()  # what was committed, through the same Change values
        change = created(self.plan.runbook, execution_id="ex1", input=input or {},
                         context={"tenantId": "t1", **(context or {})}, input_hash="h", idempotency_key=None,
                         dedup=False, replay_of=None, now=self.now, actor="tester", reason=None)
        self.store.commit([change])
        assert change.new_execution is not None
        self.state = ExecutionState.of(self.plan, change.new_execution)
        self.running: dict[str, fx.SpawnAttempt] = {}  # attempt id -> its spawn, while it runs
        self.spawned: list[fx.SpawnAttempt] = []
        self.changes: list[Change] = []
        self.effects: list[fx.Effect] = []
        self.timer: datetime | None = None
        self.subscribed: dict[str, fx.Subscribe] = {}
        self.incarnation = 0
        self.begin()

    @property
    def execution(self) -> Execution:
        return self.state.execution

    def committed(self) -> Execution:
        found = self.store.get_execution("ex1")
        assert found is not None
        return found

    def begin(self) -> list[fx.Effect]:
        self.incarnation += 1
        return self.send(Begin(self.incarnation))

    def send(self, *messages: Message) -> list[fx.Effect]:
        self.state, effects = apply_all(self.state, messages, self.now)
        self._perform(effects)
        return effects

    def _perform(self, effects: Iterable[fx.Effect]) -> None:
        follow: list[Message] = []
        for effect in effects:
            self.effects.append(effect)
            match effect:
                case fx.Commit(change=change):
                    self.store.commit([change])
                    self.changes.append(change)
                case fx.SpawnAttempt():
                    self.running[effect.attempt_id] = effect
                    self.spawned.append(effect)
                case fx.CancelAttempt(attempt_id=attempt_id):
                    self.running.pop(attempt_id, None)
                case fx.ArmTimer(at=at):
                    self.timer = at
                case fx.Subscribe():
                    self.subscribed[effect.step_id] = effect
                case fx.Unsubscribe(step_id=step_id):
                    self.subscribed.pop(step_id, None)
                case fx.AnswerState(reply=reply) | fx.Answer(reply=reply) | fx.Refuse(reply=reply):
                    reply.answers.append(effect)
                case fx.Continue():
                    follow.append(Continue())
        if follow:
            self.send(*follow)

    def attempt_of(self, step_id: str) -> fx.SpawnAttempt:
        found = [spawn for spawn in self.running.values() if spawn.step_id == step_id]
        assert len(found) == 1, f"{step_id}: {len(found)} attempts running"
        return found[0]

    def finish(self, step_id: str, output: Any = None, error: Any = None) -> list[fx.Effect]:
        spawn = self.attempt_of(step_id)
        del self.running[spawn.attempt_id]
        return self.send(StepFinished(step_id, spawn.attempt_id, output, error))

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)
