"""Properties of the execution core under random runbooks and random message sequences.

The world around the core is the harness (tests/core_harness.py): it runs the attempts the
core spawns, answers nothing itself, and can crash the actor at any moment (its tasks are
lost and a new state is built from what was committed). After every transition:

- what was committed is exactly the state (a crash loses nothing acknowledged);
- a step never has two attempts running, and task steps never exceed maxConcurrentSteps;
- the core's bookkeeping matches the step states (running <-> an attempt, parked <-> a wait,
  a run-runbook step running <-> parked with a child and no attempt);
- every reply is answered exactly once;
- a finished execution runs nothing, parks nothing and arms no timer;
- recovering an execution with nothing running reproduces it without a single record.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.core import ExecutionState
from runtime.core import effects as fx
from runtime.core.messages import (
    AttemptRetrying,
    Cancel,
    ChildFinished,
    CompleteStep,
    DecideApproval,
    DeliverEvent,
    Pause,
    Resume,
    RetryStep,
    SkipStep,
    StepFinished,
    Tick,
)
from runtime.model import Event, StepError, StepStatus
from tests.core_harness import Driver, Reply

SS = StepStatus
KINDS = ("task", "task", "human-approval", "wait-for-event", "conditional", "run-runbook")


@st.composite
def runbooks(draw: st.DrawFn) -> dict[str, Any]:
    size = draw(st.integers(1, 7))
    steps: list[dict[str, Any]] = []
    for index in range(size):
        kind = draw(st.sampled_from(KINDS))
        step: dict[str, Any] = {"id": f"s{index}", "type": kind}
        if index and draw(st.booleans()):
            step["dependsOn"] = draw(st.lists(st.sampled_from([f"s{i}" for i in range(index)]), unique=True))
        elif draw(st.booleans()):
            step["dependsOn"] = []
        if draw(st.integers(0, 4)) == 0:
            step["continueOnError"] = True
        if kind == "human-approval":
            step["config"] = {"approvers": ["ann", "bob"], "minApprovals": draw(st.integers(1, 2)),
                              "timeoutMs": draw(st.sampled_from([1000, 60_000])),
                              "timeoutAction": draw(st.sampled_from(["fail", "approve", "reject"]))}
        elif kind == "wait-for-event":
            step["config"] = {"eventType": "ev", "correlationKey": "k", "timeoutMs": 30_000,
                              "filter": {"field": "payload.ok", "operator": "eq", "value": True}}
        elif kind == "run-runbook":
            step["config"] = {"runbookId": "child", "input": {"flag": "${input.flag}"}}
            if draw(st.booleans()):
                step["timeoutMs"] = 45_000
        elif kind == "conditional":
            later = [f"s{i}" for i in range(index + 1, size)]
            step["config"] = {"condition": {"field": "input.flag", "operator": "eq", "value": True}}
            if later:
                step["config"]["trueBranch"] = draw(st.sampled_from(later))
        steps.append(step)
    doc: dict[str, Any] = {"id": "rb", "maxConcurrentSteps": draw(st.integers(1, 3)), "steps": steps}
    if draw(st.booleans()):
        doc["timeoutMs"] = 120_000
    return doc


ACTIONS = ("finish", "finish", "finish", "stale", "retrying", "pause", "resume", "cancel", "decide",
           "decide", "event", "tick", "tick", "crash", "retry", "child", "child", "by_hand")


class World:
    def __init__(self, doc: dict[str, Any], flag: bool) -> None:
        self.d = Driver(doc, input={"flag": flag})
        self.replies: list[Reply] = []
        self.check()

    def reply(self, name: str) -> Reply:
        self.replies.append(Reply(name))
        return self.replies[-1]

    def steps_in(self, *statuses: StepStatus) -> list[str]:
        return [sid for sid, s in self.d.execution.steps.items() if s.status in statuses]

    def act(self, action: str, data: st.DataObject) -> None:
        d = self.d
        running = sorted(d.running.values(), key=lambda s: s.attempt_id)
        if action == "finish" and running:
            spawn = data.draw(st.sampled_from(running))
            del d.running[spawn.attempt_id]
            error = data.draw(st.sampled_from([None, None, StepError("executor", "boom", False)]))
            d.send(StepFinished(spawn.step_id, spawn.attempt_id, {"from": spawn.step_id}, error))
        elif action == "stale" and running:
            spawn = data.draw(st.sampled_from(running))
            d.send(StepFinished(spawn.step_id, "0.0", "stale"))
        elif action == "retrying" and running:
            spawn = data.draw(st.sampled_from(running))
            d.send(AttemptRetrying(spawn.step_id, spawn.attempt_id, spawn.attempt,
                                   StepError("timeout", "slow", True), 0.5))
        elif action == "pause":
            d.send(Pause("ops", None, self.reply("pause")))
        elif action == "resume":
            d.send(Resume("ops", None, self.reply("resume")))
        elif action == "cancel" and data.draw(st.integers(0, 3)) == 0:
            d.send(Cancel("ops", "stop", self.reply("cancel")))
        elif action == "decide":
            step = data.draw(st.sampled_from([s.id for s in d.plan.steps]))
            who = data.draw(st.sampled_from(["ann", "bob", "eve"]))
            decision = data.draw(st.sampled_from(["approve", "approve", "reject"]))
            d.send(DecideApproval(step, who, decision, None, self.reply("decide")))
        elif action == "event":
            step = data.draw(st.sampled_from([s.id for s in d.plan.steps]))
            payload = {"ok": data.draw(st.booleans())}
            d.send(DeliverEvent(step, Event(f"e{len(self.replies)}", "t1", "ev", "k", payload, d.now), self.reply("event")))
        elif action == "child":
            step = data.draw(st.sampled_from([s.id for s in d.plan.steps]))
            child = d.execution.steps[step].child_execution_id or "nobody"
            status = data.draw(st.sampled_from(["completed", "completed", "failed", "cancelled"]))
            d.send(ChildFinished(step, child, status, {"from": child}))
        elif action == "tick" and d.timer is not None:
            d.now = max(d.now, d.timer)
            d.send(Tick(d.timer))
        elif action == "crash":
            self.crash()
        elif action == "retry":
            failed = self.steps_in(SS.FAILED, SS.REJECTED)
            if failed:
                d.send(RetryStep(data.draw(st.sampled_from(failed)), "ops", None, self.reply("retry")))
        elif action == "by_hand":  # any step: refused unless it failed, waits or awaits approval
            step = data.draw(st.sampled_from([s.id for s in d.plan.steps]))
            if data.draw(st.booleans()):
                d.send(CompleteStep(step, "ops", {"by": "hand"}, "done by hand", reply=self.reply("complete")))
            else:
                d.send(SkipStep(step, "ops", "not needed", reply=self.reply("skip")))
        self.check()

    def crash(self) -> None:
        d = self.d
        idle, parked, subscribed = d.state.idle, dict(d.state.parked), dict(d.subscribed)
        before = d.committed()
        d.running.clear()
        d.subscribed.clear()
        d.state = ExecutionState.of(d.plan, before)
        commits = len(d.changes)
        d.begin()
        if idle and not before.status.finished and before.status != "pending":
            assert len(d.changes) == commits, "recovering an idle execution wrote records"
            assert d.state.parked == parked
            assert d.subscribed.keys() == subscribed.keys()

    def check(self) -> None:
        d, ex = self.d, self.d.execution
        assert d.committed() == ex, "the committed state differs from the state"
        by_step = [spawn.step_id for spawn in d.running.values()]
        assert len(by_step) == len(set(by_step)), "a step runs twice at once"
        assert len(by_step) <= d.plan.max_running, "more task steps run than maxConcurrentSteps"
        assert {(s.step_id, s.attempt_id) for s in d.running.values()} == set(d.state.attempts.items())
        children = set(self.steps_in(SS.RUNNING)) & self._of_type("run-runbook")
        assert set(d.state.attempts) == set(self.steps_in(SS.RUNNING, SS.RETRYING)) - self._of_type(
            "conditional") - children
        assert set(d.state.parked) == set(self.steps_in(SS.WAITING, SS.AWAITING_APPROVAL)) | children
        for step_id in children:  # a child per attempt, named in the step
            assert ex.steps[step_id].child_execution_id is not None
        for reply in self.replies:
            assert len(reply.answers) == 1, f"{reply.name} answered {len(reply.answers)} times"
        if ex.status.finished:
            assert not d.running and not d.state.parked and d.timer is None and not d.subscribed

    def _of_type(self, step_type: str) -> set[str]:
        return {s.id for s in self.d.plan.steps if s.type == step_type}

    def drive_to_the_end(self) -> None:
        """Let every step succeed and every wait be answered: the execution always ends."""
        d = self.d
        for _ in range(200):
            if d.execution.status.finished:
                return
            if d.execution.status in ("paused", "pausing"):
                d.send(Resume("ops", None, self.reply("resume")))
            elif children := sorted(set(self.steps_in(SS.RUNNING)) & self._of_type("run-runbook")):
                child = d.execution.steps[children[0]].child_execution_id
                assert child is not None
                d.send(ChildFinished(children[0], child, "completed", "child output"))
            elif d.running:
                spawn = min(d.running.values(), key=lambda s: s.attempt_id)
                del d.running[spawn.attempt_id]
                d.send(StepFinished(spawn.step_id, spawn.attempt_id, "ok"))
            elif d.timer is not None:
                d.now = max(d.now, d.timer)
                d.send(Tick(d.timer))
            else:
                failed = self.steps_in(SS.FAILED, SS.REJECTED)
                assert not failed or d.execution.status.finished, "stuck with a failure but not failed"
                raise AssertionError(f"stuck: {d.execution.status} {[s.status for s in d.execution.steps.values()]}")
            self.check()
        raise AssertionError("the execution did not end")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(doc=runbooks(), flag=st.booleans(), data=st.data())
def test_random_messages_keep_the_invariants_and_every_execution_ends(doc: dict[str, Any], flag: bool,
                                                                     data: st.DataObject) -> None:
    world = World(doc, flag)
    for action in data.draw(st.lists(st.sampled_from(ACTIONS), max_size=40)):
        world.act(action, data)
    world.drive_to_the_end()
    children: dict[str, set[str]] = {}
    for effect in world.d.effects:
        if isinstance(effect, fx.SpawnAttempt):
            assert world.d.plan.kinds[effect.step_id].uses_slot
        if isinstance(effect, fx.StartChild):  # asked again after a crash: the same child
            children.setdefault(f"{effect.step_id}#{effect.attempt}", set()).add(effect.child_id)
    assert all(len(ids) == 1 for ids in children.values()), children
