"""While the store cannot be read, an execution that wakes up (a decision, an event, a
deadline) and must be read back waits for the store with backoff instead of crashing its
actor; one whose last commit is still in memory needs no read at all."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from runtime import Execution, Settings, StoreUnavailable, open_runtime
from runtime.store.memory import MemoryStore

GATE = {"id": "gate", "steps": [
    {"id": "approve", "type": "human-approval", "config": {"approvers": ["boss"]}},
    {"id": "wait", "type": "wait-for-event", "config": {"eventType": "go", "correlationKey": "k"}},
]}


class ReadsDown(MemoryStore):
    """A memory store whose execution reads fail the next ``down`` times."""

    down = 0

    def get_execution(self, execution_id: str) -> Execution | None:
        if self.down:
            self.down -= 1
            raise StoreUnavailable("database is down")
        return super().get_execution(execution_id)


async def parked(rt: Any, execution_id: str, step: str, status: str) -> None:
    async for execution in rt.watch(execution_id):
        if execution.steps[step].status == status:
            break
    while rt.directory.live:  # noqa: ASYNC110 (the actor leaves on its own once it has nothing to run)
        await trio.sleep(0.001)


TIMED = {"id": "timed", "steps": [
    {"id": "approve", "type": "human-approval",
     "config": {"approvers": ["boss"], "timeoutMs": 60_000, "timeoutAction": "approve"}},
    {"id": "wait", "type": "wait-for-event", "config": {"eventType": "go", "correlationKey": "k"}},
]}


async def test_an_execution_woken_while_the_store_is_down_waits_for_it(autojump_clock: Any) -> None:
    store = ReadsDown()
    async with open_runtime(store, settings=Settings(finished_cache_size=0)) as rt:  # nothing kept: read back
        await rt.register_runbook(TIMED)
        execution = await rt.start("timed")
        await parked(rt, execution.id, "approve", "awaiting_approval")

        states = rt.watch(execution.id)
        await states.__anext__()  # (the watch reads the current state once, while the store is up)
        store.down = 6  # more than the actor's restarts allow (3 in 10 s)
        before = trio.current_time()
        async for state in states:  # the deadline wakes it; its read waits for the store
            if state.steps["wait"].status == "waiting":
                break
        await states.aclose()
        assert trio.current_time() - before == pytest.approx(60 + 0.05 + 0.1 + 0.2 + 0.4 + 0.8 + 1.6)
        assert store.down == 0

        store.down = 6
        assert (await rt.publish_event("go", "k")).delivered == 1
        final = await rt.wait(execution.id)
        assert final.status == "completed" and final.steps["approve"].status == "succeeded"


async def test_an_execution_woken_from_memory_needs_no_read(autojump_clock: Any) -> None:
    store = ReadsDown()
    async with open_runtime(store) as rt:
        await rt.register_runbook(GATE)
        execution = await rt.start("gate")
        await parked(rt, execution.id, "approve", "awaiting_approval")

        store.down = 6
        before = trio.current_time()
        answer = await rt.submit_approval(execution.id, "approve", approver="boss", decision="approve")
        assert answer.steps["approve"].status == "succeeded"
        assert trio.current_time() == before  # no read, no backoff
        assert store.down == 6
