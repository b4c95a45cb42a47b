"""The execution core on its own: messages in, effects out, no event loop and no clock."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from runtime.core import effects as fx
from runtime.core.messages import (
    AttemptRetrying,
    Cancel,
    DecideApproval,
    DeliverEvent,
    Pause,
    Resume,
    RetryStep,
    StepFinished,
    Tick,
)
from runtime.model import Event, StepError
from runtime.model.errors import Conflict, Forbidden, NotFound
from tests.core_harness import Driver, Reply


def chain(*ids: str, **extra: Any) -> dict[str, Any]:
    return {"id": "rb", "steps": [{"id": i, "type": "task"} for i in ids], **extra}


def kinds_of(effects: list[fx.Effect]) -> list[str]:
    return [type(effect).__name__ for effect in effects]


def approval(**config: Any) -> dict[str, Any]:
    return {"id": "rb", "steps": [{"id": "ok", "type": "human-approval",
                                   "config": {"approvers": ["ann", "bob"], **config}}]}


def waiting(**config: Any) -> dict[str, Any]:
    return {"id": "rb", "steps": [{"id": "w", "type": "wait-for-event",
                                   "config": {"eventType": "ping", "correlationKey": "${input.key}", **config}}]}


def test_begin_starts_the_execution_and_spawns_its_first_step_after_the_commit() -> None:
    d = Driver(chain("a", "b"))
    kinds = kinds_of(d.effects)
    assert kinds.index("Commit") < kinds.index("SpawnAttempt")  # a step starts once its start is durable
    assert d.execution.status == "running" and d.execution.started_at == d.now
    assert d.execution.steps["a"].status == "running" and d.execution.steps["a"].attempts == 1
    assert d.execution.steps["b"].status == "pending"
    assert [s.step_id for s in d.spawned] == ["a"]
    assert d.committed() == d.execution


def test_a_chain_runs_in_order_and_completes_with_the_last_output() -> None:
    d = Driver(chain("a", "b", "c"))
    for step_id in "abc":
        d.finish(step_id, {"out": step_id})
    assert [s.step_id for s in d.spawned] == ["a", "b", "c"]
    assert d.execution.status == "completed" and d.execution.output == {"out": "c"}
    assert d.committed() == d.execution
    assert [c.version for c in d.changes][-1] == ("ex1", d.execution.version)


def test_every_commit_bumps_the_version_once() -> None:
    d = Driver(chain("a", "b"))
    versions = [d.execution.version]
    d.finish("a")
    versions.append(d.execution.version)
    d.finish("b")
    versions.append(d.execution.version)
    assert versions == [2, 3, 4]  # created at 1, then one per transition that changed something


def test_a_report_of_an_attempt_that_is_not_current_is_dropped() -> None:
    d = Driver(chain("a", "b"))
    before = d.execution
    effects = d.send(StepFinished("a", "1.99", {"stale": True}))
    assert d.execution is before  # nothing changed, nothing to commit
    assert kinds_of(effects) == ["Note"]
    assert "not its current attempt" in effects[0].text  # type: ignore[union-attr]


def test_after_a_restart_an_in_flight_step_runs_again_and_the_old_report_is_dropped() -> None:
    d = Driver(chain("a", "b"))
    old = d.attempt_of("a")
    d.running.clear()  # the actor crashed: its tasks are gone
    d.state = type(d.state).of(d.plan, d.committed())  # the committed state, as a restart loads it
    d.begin()
    new = d.attempt_of("a")
    assert new.attempt_id != old.attempt_id and new.attempt == 2
    assert d.execution.steps["a"].attempts == 2
    assert [log.message for log in d.changes[-1].logs] == ["step restarted after recovery", "step started"]
    d.send(StepFinished("a", old.attempt_id, "from before the crash"))
    assert d.execution.steps["a"].status == "running"  # the old run's outcome does not count
    d.finish("a", "now")
    assert d.execution.steps["a"].output == "now"


def test_max_concurrent_steps_bounds_the_task_steps_running() -> None:
    doc = {"id": "rb", "maxConcurrentSteps": 2, "steps": [
        {"id": f"s{i}", "type": "task", "dependsOn": []} for i in range(5)]}
    d = Driver(doc)
    assert len(d.running) == 2
    d.finish("s0")
    assert len(d.running) == 2 and {s.step_id for s in d.running.values()} == {"s1", "s2"}


def test_pause_waits_for_steps_in_flight_and_resume_goes_on_without_counting_the_pause() -> None:
    d = Driver(chain("a", "b", timeoutMs=60_000))
    deadline = d.execution.deadline_at
    reply = Reply("pause")
    d.send(Pause("ops", "lunch", reply))
    assert d.execution.status == "pausing" and len(reply.answers) == 1
    d.finish("a")
    assert d.execution.status == "paused" and not d.running  # b does not start while paused
    d.advance(seconds=30)
    d.send(Resume("ops", None, Reply("resume")))
    assert d.execution.status == "running" and d.execution.paused_duration_ms == 30_000
    assert d.execution.deadline_at - deadline == timedelta(seconds=30)  # the paused time is not counted
    assert d.timer == d.execution.deadline_at  # the timer follows the moved deadline
    assert d.attempt_of("b")


def test_control_that_does_not_fit_is_refused_and_changes_nothing() -> None:
    d = Driver(chain("a"))
    before, count = d.execution, len(d.changes)
    reply = Reply("resume")
    d.send(Resume("ops", None, reply))
    [answer] = reply.answers
    assert isinstance(answer, fx.Refuse) and isinstance(answer.error, Conflict)
    assert str(answer.error) == "cannot resume an execution that is running"
    assert d.execution is before and len(d.changes) == count


def test_cancel_cancels_in_flight_at_once_and_answers_once() -> None:
    d = Driver({"id": "rb", "steps": [{"id": "a", "type": "task", "dependsOn": []},
                                      {"id": "b", "type": "task", "dependsOn": []}]})
    reply = Reply("cancel")
    effects = d.send(Cancel("ops", "wrong change", reply))
    kinds = kinds_of(effects)
    assert kinds.count("CancelAttempt") == 2 and kinds.index("CancelAttempt") < kinds.index("Commit")
    assert d.execution.status == "cancelled" and not d.running
    assert {s.status for s in d.execution.steps.values()} == {"cancelled"}
    assert len(reply.answers) == 1 and isinstance(reply.answers[0], fx.AnswerState)


def test_a_failure_cancels_in_flight_and_leaves_never_started_steps_pending() -> None:
    d = Driver({"id": "rb", "steps": [{"id": "a", "type": "task", "dependsOn": []},
                                      {"id": "b", "type": "task", "dependsOn": []},
                                      {"id": "c", "type": "task", "dependsOn": ["a"]}]})
    d.finish("a", error=StepError("executor", "boom", False))
    states = {sid: s.status for sid, s in d.execution.steps.items()}
    assert states == {"a": "failed", "b": "cancelled", "c": "pending"}
    assert d.execution.status == "failed" and d.execution.error.step_id == "a"


def test_retrying_a_step_commits_the_reset_first_and_then_runs_it() -> None:
    d = Driver(chain("a", "b"))
    d.finish("a", error=StepError("executor", "boom", False))
    reply = Reply("retry")
    d.send(RetryStep("a", "ops", "fixed", reply))
    [answer] = reply.answers
    assert isinstance(answer, fx.AnswerState)
    reset = d.changes[-2]  # the reset, then the transition that started the step again
    assert reset.execution is not None and reset.execution.status == "running"
    assert {sid for _, sid, _, state in reset.steps if state.status == "pending"} == {"a", "b"}
    assert d.execution.steps["a"].attempts == 2 and d.attempt_of("a").attempt == 2
    second = Reply("again")
    d.send(RetryStep("a", "ops", None, second))  # it is running again: a second retry is a conflict
    assert isinstance(second.answers[0], fx.Refuse) and isinstance(second.answers[0].error, Conflict)


def test_a_decision_for_an_unknown_step_or_a_task_is_refused() -> None:
    d = Driver(chain("a"))
    unknown, task = Reply("unknown"), Reply("task")
    d.send(DecideApproval("nope", "ann", "approve", None, unknown), DecideApproval("a", "ann", "approve", None, task))
    assert isinstance(unknown.answers[0].error, NotFound)  # type: ignore[union-attr]
    assert str(task.answers[0].error) == "step 'a' is not awaiting approval (it is running)"  # type: ignore[union-attr]


def test_an_approval_parks_without_a_task_or_a_slot_and_arms_its_deadline() -> None:
    d = Driver(approval(timeoutMs=3_600_000))
    assert not d.spawned and d.state.idle
    assert d.execution.status == "awaiting_approval"
    assert d.timer == d.execution.steps["ok"].deadline_at == d.now + timedelta(hours=1)
    outsider, first, twice = Reply("eve"), Reply("ann"), Reply("ann again")
    d.send(DecideApproval("ok", "eve", "approve", None, outsider))
    assert isinstance(outsider.answers[0].error, Forbidden)  # type: ignore[union-attr]
    d.send(DecideApproval("ok", "ann", "approve", "fine", first))
    d.send(DecideApproval("ok", "ann", "approve", None, twice))
    assert isinstance(twice.answers[0].error, Conflict)  # type: ignore[union-attr]
    assert d.execution.status == "completed"
    assert d.execution.output["approvals"][0]["approver"] == "ann"


def test_an_approval_deadline_fires_its_timeout_action() -> None:
    d = Driver(approval(timeoutMs=1000, timeoutAction="approve"))
    d.advance(seconds=1)
    d.send(Tick(d.timer))  # type: ignore[arg-type]
    assert d.execution.status == "completed" and d.execution.output["autoApproved"] is True
    assert d.timer is None


def test_a_tick_before_any_deadline_changes_nothing() -> None:
    d = Driver(approval(timeoutMs=1000))
    before = d.execution
    assert d.send(Tick(d.now)) == []
    assert d.execution is before


def test_an_event_wait_subscribes_and_takes_only_a_matching_event() -> None:
    d = Driver(waiting(filter={"field": "payload.ok", "operator": "eq", "value": True}), input={"key": "k1"})
    sub = d.subscribed["w"]
    assert (sub.tenant_id, sub.event_type, sub.key) == ("t1", "ping", "k1")
    miss, hit = Reply("miss"), Reply("hit")
    d.send(DeliverEvent("w", Event("e1", "t1", "ping", "k1", {"ok": False}, d.now), miss))
    assert miss.answers == [fx.Answer(miss, False)] and d.execution.steps["w"].status == "waiting"
    d.send(DeliverEvent("w", Event("e2", "t1", "ping", "k1", {"ok": True}, d.now), hit))
    assert hit.answers == [fx.Answer(hit, True)]
    assert d.execution.status == "completed" and "w" not in d.subscribed
    assert d.execution.output["payload"] == {"ok": True}


def test_a_retained_event_handed_over_at_subscription_is_consumed() -> None:
    d = Driver(waiting(), input={"key": "k1"})
    d.send(DeliverEvent("w", Event("e9", "t1", "ping", "k1", {}, d.now)))  # no reply: retained
    assert d.changes[-1].consume_events == ("e9",)
    assert d.execution.status == "completed"


def test_the_execution_timeout_cancels_what_runs() -> None:
    d = Driver(chain("a", timeoutMs=5000))
    d.advance(seconds=5)
    d.send(Tick(d.timer))  # type: ignore[arg-type]
    assert d.execution.status == "timed_out" and d.execution.steps["a"].status == "cancelled"
    assert not d.running and d.timer is None


def test_a_step_started_and_cancelled_in_one_transition_is_never_spawned() -> None:
    doc = {"id": "rb", "steps": [
        {"id": "a", "type": "task", "dependsOn": []},
        {"id": "bad", "type": "human-approval", "dependsOn": [], "config": {"approvers": "${input.missing}"}}]}
    d = Driver(doc)
    assert d.execution.status == "failed" and d.execution.steps["bad"].error.code == "template"
    assert d.spawned == [] and d.execution.steps["a"].status == "cancelled"


def test_a_retrying_report_is_recorded_and_the_run_goes_on() -> None:
    d = Driver(chain("a"))
    spawn = d.attempt_of("a")
    d.send(AttemptRetrying("a", spawn.attempt_id, 1, StepError("http_status", "503", True), 1.5))
    assert d.execution.steps["a"].status == "retrying"
    assert any(entry.action == "step.retrying" for entry in d.changes[-1].audit)
    assert d.committed() == d.execution


@pytest.mark.parametrize("timeout_action, status", [("fail", "failed"), ("reject", "failed")])
def test_approval_timeout_actions_that_fail(timeout_action: str, status: str) -> None:
    d = Driver(approval(timeoutMs=10, timeoutAction=timeout_action))
    d.advance(seconds=1)
    d.send(Tick(d.timer))  # type: ignore[arg-type]
    assert d.execution.status == status
