"""An ExecutionActor that crashes is restarted by its supervisor from the committed state."""

from __future__ import annotations

from typing import Any

import pytest

from runtime import Runtime
from runtime.core import StepFinished
from runtime.kinds.task import TaskKind
from tests.conftest import Recorder, chain


async def test_a_crashed_execution_actor_restarts_from_the_committed_state(
        rt: Runtime, recorder: Recorder, monkeypatch: pytest.MonkeyPatch, autojump_clock: Any) -> None:
    original = TaskKind.message
    crashes = []

    def crash_once(self: TaskKind, ops: Any, step: Any, message: Any) -> None:
        if isinstance(message, StepFinished) and message.step_id == "b" and not crashes:
            crashes.append(message)
            raise RuntimeError("a bug in the engine")
        original(self, ops, step, message)

    monkeypatch.setattr(TaskKind, "message", crash_once)
    await rt.register_runbook(chain("a", "b", "c"))
    ex = await rt.start("chain")
    final = await rt.wait(ex.id)
    assert crashes and final.status == "completed"
    assert recorder.order() == ["a", "b", "b", "c"]  # b was in flight: it ran again, a did not
    assert final.steps["b"].attempts == 2
    logs = [e.message for e in await rt.logs(ex.id, step_id="b")]
    assert "step restarted after recovery" in logs


async def test_an_actor_that_keeps_crashing_fails_its_execution_only(
        rt: Runtime, monkeypatch: pytest.MonkeyPatch, autojump_clock: Any) -> None:
    original = TaskKind.message

    def always_crash(self: TaskKind, ops: Any, step: Any, message: Any) -> None:
        if isinstance(message, StepFinished) and ops.execution.runbook_id == "doomed":
            raise RuntimeError("a bug in the engine")
        original(self, ops, step, message)

    monkeypatch.setattr(TaskKind, "message", always_crash)
    await rt.register_runbook({**chain("a"), "id": "doomed"})
    await rt.register_runbook(chain("a", "b"))
    doomed = await rt.start("doomed")
    healthy = await rt.start("chain")
    final = await rt.wait(doomed.id)
    assert final.status == "failed" and final.error.code == "crashed"
    assert "RuntimeError: a bug in the engine" in final.error.message
    assert (await rt.wait(healthy.id)).status == "completed"
