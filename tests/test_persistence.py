"""The PersistenceActor: group commit, acknowledgement after commit, retry while the store is down."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import trio

from actors import open_mailbox
from runtime import Settings, StoreUnavailable, open_runtime
from runtime.model.records import Change, ChangeResult
from runtime.shell.persistence import Commit, PersistenceActor
from runtime.store.memory import MemoryStore
from tests.conftest import chain


async def echo(ctx: Any) -> Any:
    """A custom step that answers nothing."""
    return {}


class FlakyStore(MemoryStore):
    """A memory store whose commits fail while ``down`` is set, or raise ``refuse`` for marked changes."""

    def __init__(self) -> None:
        super().__init__()
        self.down = 0
        self.batches: list[int] = []

    def commit(self, changes: Sequence[Change]) -> list[ChangeResult]:
        if self.down:
            self.down -= 1
            raise StoreUnavailable("database is down")
        if any(c.runbook is not None and c.runbook.id == "refused" for c in changes):
            raise ValueError("refused change")
        self.batches.append(len(changes))
        return super().commit(changes)


async def test_a_store_that_fails_n_times_delays_but_loses_nothing(autojump_clock: Any) -> None:
    store = FlakyStore()
    async with open_runtime(store, settings=Settings(default_max_retries=0)) as rt:
        async def echo(ctx: Any) -> Any:
            return ctx.step_id

        rt.register_executor("echo", echo)
        await rt.register_runbook(chain("a", "b", "c"))
        ex = await rt.start("chain")
        store.down = 5  # the next five commits fail
        final = await rt.wait(ex.id)
        assert final.status == "completed"
        assert rt.persistence.stats.failures == 5
        assert rt.persistence.stats.healthy
        assert store.get_execution(ex.id) == final  # what was acknowledged is what was committed
        assert trio.current_time() == pytest.approx(0.05 + 0.1 + 0.2 + 0.4 + 0.8)


async def test_ready_reports_a_failing_store(autojump_clock: Any) -> None:
    store = FlakyStore()
    async with open_runtime(store) as rt, trio.open_nursery() as nursery:
        rt.register_executor("echo", echo)
        store.down = 10**6
        nursery.start_soon(rt.register_runbook, chain("a"))
        await trio.sleep(1)
        with pytest.raises(ConnectionError):
            await rt.ready()
        store.down = 0
        await trio.sleep(10)
        await rt.ready()


async def test_changes_waiting_together_commit_as_one_batch() -> None:
    store = FlakyStore()
    actor = PersistenceActor(store)
    address, mailbox = open_mailbox("persistence", 64)
    replies = []
    from actors import Reply

    for _ in range(25):
        reply: Reply[ChangeResult] = Reply()
        replies.append(reply)
        address.send_nowait(Commit(Change(logs=()), reply))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(actor.run, mailbox)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert store.batches == [25]
    assert all(reply.done for reply in replies)


async def test_a_refused_change_fails_only_its_sender() -> None:
    store = FlakyStore()
    async with open_runtime(store) as rt, trio.open_nursery() as nursery:
        rt.register_executor("echo", echo)
        results: dict[str, Any] = {}

        async def register(name: str) -> None:
            try:
                results[name] = (await rt.register_runbook(chain("a") | {"id": name})).version
            except ValueError as exc:
                results[name] = str(exc)

        for name in ("ok1", "refused", "ok2"):
            nursery.start_soon(register, name)
    assert results == {"ok1": 1, "refused": "refused change", "ok2": 1}
