"""Retries, backoff, per-attempt timeouts, StepFailed, continueOnError, failure."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from runtime import Runtime, StepFailed
from runtime.io.attempts import backoff_s
from runtime.model import RetryPolicy
from tests.conftest import Recorder


async def run(rt: Runtime, doc: dict[str, Any], **start: Any) -> Any:
    await rt.register_runbook(doc)
    execution = await rt.start(doc["id"], **start)
    return await rt.wait(execution.id)


def one(step: dict[str, Any], rid: str = "one") -> dict[str, Any]:
    return {"id": rid, "steps": [{"id": "s", "type": "echo", **step}]}


async def test_backoff_is_exponential_on_the_mock_clock(rt: Runtime, recorder: Recorder, autojump_clock: Any) -> None:
    recorder.fail_times["s"] = 3
    policy = {"maxRetries": 3, "initialDelayMs": 1000, "backoffMultiplier": 2, "jitter": False}
    final = await run(rt, one({"retryPolicy": policy}))
    assert final.status == "completed"
    assert [(a, t) for _, a, t in recorder.calls] == [(1, 0), (2, 1), (3, 3), (4, 7)]
    assert final.steps["s"].attempts == 4


async def test_backoff_is_capped_by_max_delay(rt: Runtime, recorder: Recorder, autojump_clock: Any) -> None:
    recorder.fail_times["s"] = 3
    policy = {"maxRetries": 5, "initialDelayMs": 10_000, "backoffMultiplier": 10, "maxDelayMs": 15_000, "jitter": False}
    await run(rt, one({"retryPolicy": policy}))
    assert [t for *_, t in recorder.calls] == [0, 10, 25, 40]


def test_jitter_stays_within_half_to_full_delay() -> None:
    policy = RetryPolicy(initial_delay_ms=1000, backoff_multiplier=2, max_delay_ms=60_000, jitter=True)
    delays = [backoff_s(policy, 3) for _ in range(200)]
    assert all(2.0 <= d <= 4.0 for d in delays)
    assert len(set(delays)) > 1


def test_retry_after_is_honoured_when_sooner_than_the_cap() -> None:
    policy = RetryPolicy(initial_delay_ms=1000, max_delay_ms=60_000, jitter=False)
    assert backoff_s(policy, 1, retry_after_s=5) == 5
    assert backoff_s(policy, 1, retry_after_s=600) == 1  # past the cap: our own backoff


async def test_retries_exhausted_fail_the_step_with_the_last_error(rt: Runtime, recorder: Recorder, autojump_clock: Any) -> None:
    recorder.fail_times["s"] = 99
    final = await run(rt, one({"retryPolicy": {"maxRetries": 2, "jitter": False}}))
    assert final.status == "failed"
    assert final.steps["s"].attempts == 3
    assert final.steps["s"].error.message == "planned failure 3"
    assert final.error.step_id == "s"


async def test_step_failed_not_retryable_is_not_retried(rt: Runtime, recorder: Recorder, autojump_clock: Any) -> None:
    final = await run(rt, one({"retryPolicy": {"maxRetries": 5}, "config": {"fail": "bad input"}}))
    assert final.status == "failed"
    assert len(recorder.calls) == 1
    assert final.steps["s"].error.code == "executor"
    assert final.steps["s"].error.retryable is False
    assert StepFailed("x").retryable is False


async def test_unexpected_exception_fails_the_step_not_the_process(rt: Runtime, autojump_clock: Any) -> None:
    async def broken(ctx: Any) -> Any:
        return {}["nope"]

    rt.register_executor("broken", broken)
    final = await run(rt, {"id": "b", "steps": [{"id": "s", "type": "broken", "retryPolicy": {"maxRetries": 1, "jitter": False}}]})
    assert final.status == "failed"
    assert final.steps["s"].error.code == "executor"
    assert "KeyError" in final.steps["s"].error.message
    assert final.steps["s"].attempts == 2  # unexpected exceptions are retryable
    again = await run(rt, one({}, rid="after"))  # the runtime still works
    assert again.status == "completed"


async def test_per_attempt_timeout_hour_long_step(rt: Runtime, recorder: Recorder, autojump_clock: Any) -> None:
    doc = one({"timeoutMs": 3_600_000, "config": {"sleep": 10 * 3600},
               "retryPolicy": {"maxRetries": 1, "initialDelayMs": 1000, "jitter": False}})
    final = await run(rt, doc)
    assert final.status == "failed"
    assert final.steps["s"].error.code == "timeout"
    assert final.steps["s"].attempts == 2
    assert trio.current_time() == pytest.approx(2 * 3600 + 1)


async def test_continue_on_error_lets_dependents_run(rt: Runtime, recorder: Recorder, autojump_clock: Any) -> None:
    doc = {"id": "coe", "steps": [
        {"id": "a", "type": "echo", "continueOnError": True, "config": {"fail": "meh"}},
        {"id": "b", "type": "echo"},
    ]}
    final = await run(rt, doc)
    assert final.status == "completed"
    assert final.steps["a"].status == "failed"
    assert final.steps["b"].status == "succeeded"


async def test_failure_cancels_in_flight_and_leaves_unstarted_pending(rt: Runtime, recorder: Recorder, autojump_clock: Any) -> None:
    doc = {"id": "fail", "steps": [
        {"id": "slow", "type": "echo", "dependsOn": [], "config": {"sleep": 100}},
        {"id": "bad", "type": "echo", "dependsOn": [], "config": {"sleep": 1, "fail": "boom"}},
        {"id": "later", "type": "echo", "dependsOn": ["slow", "bad"]},
    ]}
    final = await run(rt, doc)
    assert final.status == "failed"
    assert final.error.code == "executor" and final.error.message == "boom" and final.error.step_id == "bad"
    assert final.steps["slow"].status == "cancelled"
    assert final.steps["later"].status == "pending"
    assert trio.current_time() == 1  # the slow step was aborted, not awaited
