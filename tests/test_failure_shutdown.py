"""Leaving ``open_runtime`` while the store is down ends within ``shutdown_timeout_ms``, and an
outer cancel scope stops it sooner; what was not committed was never acknowledged.

The SQLite cases use a real store whose commits fail while ``down`` is set (as those of an
unreachable database do); the PostgreSQL cases put a TCP proxy between the store and the
real server and cut it (connections reset, or bytes held back so a commit hangs).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio

from actors import Reply, open_mailbox
from runtime import Runtime, Settings, StoreUnavailable, open_runtime
from runtime.model.records import Change, ChangeResult
from runtime.shell.persistence import Commit, PersistenceActor
from runtime.shell.shutdown import CLOSE_TIMEOUT_S
from runtime.store.postgres import PostgresStore
from runtime.store.sqlite import SqliteStore
from tests.conftest import DSN, taken_over
from tests.tcp_proxy import tcp_proxy
from tests.test_persistence import FlakyStore

GATE = {"id": "gate", "steps": [{"id": "approve", "type": "human-approval", "config": {"approvers": ["boss"]}}]}
LEASE_TTL_MS = 1500  # postgres: the lease the closed runtime could not release expires soon
SLACK_S = 1.5  # scheduling noise on a shared machine, on top of the bounds under test


class SwitchableSqlite(SqliteStore):
    """A real SQLite store whose commits fail while ``down`` is set."""

    down = False

    def commit(self, changes: Sequence[Change]) -> list[ChangeResult]:
        if self.down:
            raise StoreUnavailable(f"sqlite store {self.path}: taken down by the test")
        return super().commit(changes)


async def outcome(results: dict[str, Any], name: str, call: Callable[[], Awaitable[Any]]) -> None:
    try:
        results[name] = await call()
    except Exception as exc:
        results[name] = exc


async def eventually(predicate: Callable[[], bool], within_s: float = 10) -> None:
    with trio.fail_after(within_s):
        while not predicate():  # noqa: ASYNC110 (state of threads and other tasks: polled)
            await trio.sleep(0.01)


def queued(rt: Runtime) -> int:
    stats = rt.persistence.mailbox_statistics()
    return stats.current_buffer_used if stats is not None else 0


def not_committed_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if " not committed (" in r.getMessage()]


async def park_one(rt: Runtime) -> str:
    await rt.register_runbook(GATE)
    kept = await rt.start("gate", {"n": 1})
    with trio.fail_after(10):
        async for execution in rt.watch(kept.id):
            if execution.status == "awaiting_approval":
                break
    return kept.id


async def two_changes_stuck(rt: Runtime, kept: str, callers: trio.Nursery, results: dict[str, Any]) -> None:
    """A start (the caller's own commit) and an approval (its execution's commit), both
    waiting in the persistence actor for a store that does not take them."""
    callers.start_soon(outcome, results, "start", lambda: rt.start("gate", {"n": 2}))
    await eventually(lambda: rt.persistence.stats.failures >= 1)
    callers.start_soon(outcome, results, "approve",
                       lambda: rt.submit_approval(kept, "approve", approver="boss", decision="approve"))
    await eventually(lambda: queued(rt) >= 1)


async def check_only_the_acknowledged_state(store: Any, kept: str, settings: Settings | None = None) -> None:
    async with open_runtime(store, settings=settings) as rt:
        await taken_over(rt, kept)  # postgres: once the lease the closed runtime kept has expired
        page = await rt.list_executions()
        assert [e.id for e in page.items] == [kept]  # the unacknowledged start is not there
        assert await trio.to_thread.run_sync(rt.store.retained_events, rt.now()) == []
        execution = await rt.fetch(kept)
        assert execution.status == "awaiting_approval" and not execution.steps["approve"].approvals
        await rt.submit_approval(kept, "approve", approver="boss", decision="approve")
        assert (await rt.wait(kept)).status == "completed"


async def test_leaving_while_the_store_is_down_ends_within_the_bound(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    store = SwitchableSqlite(tmp_path / "runbooks.db")
    results: dict[str, Any] = {}
    async with trio.open_nursery() as callers:
        async with open_runtime(store, settings=Settings(shutdown_timeout_ms=300)) as rt:
            kept = await park_one(rt)
            store.down = True
            await two_changes_stuck(rt, kept, callers, results)
            leaving = trio.current_time()
        took = trio.current_time() - leaving
    assert took < 0.3 + SLACK_S, took
    assert isinstance(results["start"], StoreUnavailable)  # an error, never a success
    assert isinstance(results["approve"], Exception)
    assert not_committed_lines(caplog) == [
        "shutdown: 2 changes were not committed (the store did not take them within 0.3 s; last store error: "
        f"StoreUnavailable: sqlite store {store.path}: taken down by the test); their senders got "
        "StoreUnavailable, none was acknowledged"]
    await check_only_the_acknowledged_state(SqliteStore(store.path), kept)


async def test_an_outer_cancel_scope_stops_the_exit(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    store = SwitchableSqlite(tmp_path / "runbooks.db")
    results: dict[str, Any] = {}
    async with trio.open_nursery() as callers:
        with trio.CancelScope() as outer:
            async with open_runtime(store, settings=Settings(shutdown_timeout_ms=600_000)) as rt:
                kept = await park_one(rt)
                store.down = True
                await two_changes_stuck(rt, kept, callers, results)
                leaving = trio.current_time()
                outer.deadline = leaving + 0.3  # passes while the runtime waits for the store
        took = trio.current_time() - leaving
    assert outer.cancelled_caught
    assert took < 0.3 + SLACK_S, took
    assert isinstance(results["start"], StoreUnavailable)
    assert len(not_committed_lines(caplog)) == 1
    await check_only_the_acknowledged_state(SqliteStore(store.path), kept)


async def test_a_store_committing_inline_is_left_at_once(autojump_clock: Any) -> None:
    """The memory store commits in the caller's task: leaving does not wait for it, and a
    caller still retrying gets an error once the runtime has closed."""
    store = FlakyStore()
    results: dict[str, Any] = {}
    async with trio.open_nursery() as callers:
        async with open_runtime(store) as rt:
            kept = await park_one(rt)
            store.down = 10**9
            callers.start_soon(outcome, results, "start", lambda: rt.start("gate", {"n": 2}))
            await trio.sleep(30)
            leaving = trio.current_time()
        assert trio.current_time() == leaving
    assert isinstance(results["start"], StoreUnavailable)
    assert [e.id for e in store.load_unfinished()] == [kept]


async def test_giving_up_refuses_the_batch_in_flight_what_is_queued_and_what_comes_later(
        autojump_clock: Any) -> None:
    store = FlakyStore()
    store.down = 10**9
    actor = PersistenceActor(store)
    address, mailbox = open_mailbox("persistence", 64)
    replies: list[Reply[ChangeResult]] = []
    errors: list[BaseException] = []

    async def send() -> None:
        reply: Reply[ChangeResult] = Reply()
        replies.append(reply)
        await address.send(Commit(Change(logs=()), reply))
        try:
            await reply.wait()
        except StoreUnavailable as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(actor.run, mailbox)
        nursery.start_soon(send)
        await trio.sleep(1)  # the first batch is being retried
        for _ in range(3):
            nursery.start_soon(send)
        await trio.sleep(1)
        assert actor.give_up("closing") == 4
        await trio.lowlevel.checkpoint()
        nursery.start_soon(send)  # after giving up: refused at once
        await trio.sleep(1)
        assert len(errors) == 5 and all(str(e) == "closing" for e in errors)
        assert store.batches == []  # nothing was written, nothing was acknowledged
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- PostgreSQL behind a cut proxy



@pytest.mark.postgres
@pytest.mark.parametrize("cut", ["refuse", "blackhole"])
async def test_leaving_while_postgres_is_unreachable_ends_within_the_bound(
        schema: str, cut: str, caplog: pytest.LogCaptureFixture) -> None:
    """``refuse``: the server is gone (connections reset). ``blackhole``: the network is gone
    and the commit in flight hangs; the shutdown leaves its worker thread behind."""
    caplog.set_level(logging.WARNING)
    info = psycopg.conninfo.conninfo_to_dict(DSN)
    results: dict[str, Any] = {}
    async with tcp_proxy(str(info.get("host", "127.0.0.1")), int(info.get("port", 5432))) as proxy:
        proxied = psycopg.conninfo.make_conninfo(DSN, host="127.0.0.1", port=str(proxy.port))
        store = PostgresStore(proxied, pool_max=2, schema=schema, timeout=2.0)
        async with trio.open_nursery() as callers:
            async with open_runtime(store, settings=Settings(shutdown_timeout_ms=500, lease_ttl_ms=LEASE_TTL_MS)) as rt:
                kept = await park_one(rt)
                getattr(proxy, cut)()
                # a commit with no read before it (a start reads its runbook first, and a
                # read fails at once): an event nobody waits for, to be retained
                callers.start_soon(outcome, results, "publish", lambda: rt.publish_event("x", "k"))
                await trio.sleep(0.3)
                assert "publish" not in results  # still waiting: not acknowledged
                leaving = trio.current_time()
            took = trio.current_time() - leaving
            callers.cancel_scope.cancel()
    assert took < 0.5 + CLOSE_TIMEOUT_S + SLACK_S, took  # the bound, and the second the store gets to close
    assert isinstance(results["publish"], StoreUnavailable)
    assert len(not_committed_lines(caplog)) == 1
    assert any("leases not released" in r.getMessage() for r in caplog.records)
    await check_only_the_acknowledged_state(PostgresStore(DSN, pool_max=2, schema=schema), kept,
                                            Settings(lease_ttl_ms=LEASE_TTL_MS))
