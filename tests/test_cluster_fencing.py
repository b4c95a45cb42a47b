"""Several runtimes on one PostgreSQL database, in one process, when the hold of a process on
its executions slips: renewals that must not wait behind reads, a late renewal that finds its
lease gone, a process that cannot renew and lets go before anyone may take over, a second
start under the same instance id, a LISTEN connection gone silent, and a dead process's
executions shared among the survivors."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest
import trio
from psycopg import sql

from runtime import Runtime, Settings, open_runtime
from runtime.cluster import node as cluster_node
from runtime.shell import clock as clock_module
from runtime.store.postgres import PostgresStore
from tests.conftest import DSN
from tests.tcp_proxy import TcpProxy, tcp_proxy
from tests.test_cluster import APPROVAL, TTL_MS, _nothing, until

pytestmark = [pytest.mark.postgres]
TTL_S = TTL_MS / 1000
WAIT_LONG = {"id": "wait-long", "timeoutMs": 3_600_000, "steps": [
    {"id": "ev", "type": "wait-for-event", "config": {"eventType": "go", "correlationKey": "${input.key}"}}]}


async def probe(ctx: Any) -> Any:
    return {"ran": ctx.step_id}


@asynccontextmanager
async def node(schema: str, instance: str, *, store: PostgresStore | None = None,
               **settings: Any) -> AsyncIterator[Runtime]:
    store = store or PostgresStore(DSN, pool_max=3, schema=schema)
    options = {"lease_ttl_ms": TTL_MS, "instance_id": instance, "forward_wait_ms": 3000, **settings}
    async with open_runtime(store, settings=Settings(**options), executors={"probe": probe}) as rt:
        yield rt


@contextmanager
def database(schema: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        yield conn


async def eventually(condition: Any, within_s: float = 5) -> None:
    with trio.fail_after(within_s):
        while not condition():  # noqa: ASYNC110 (leases run out in real time)
            await trio.sleep(0.02)


async def held_for(condition: Any, seconds: float) -> bool:
    """Whether ``condition`` holds all along for ``seconds`` (real time: leases run out in it)."""
    with trio.move_on_after(seconds):
        while condition():  # noqa: ASYNC110
            await trio.sleep(0.02)
        return False
    return True


async def awaiting(rt: Runtime) -> str:
    await rt.register_runbook(APPROVAL)
    execution = await rt.start("gate", force=True)
    await until(rt, execution.id, lambda e: e.status == "awaiting_approval")
    return execution.id


# ---------------------------------------------------------------------- renewal
async def test_renewal_is_not_held_back_by_reads_that_take_every_connection(schema: str) -> None:
    async with node(schema, "a") as a, node(schema, "b") as b:
        execution_id = await awaiting(a)
        release = threading.Event()
        store: Any = a.store

        def slow_read() -> None:  # holds one of the read pool's connections (and a worker thread)
            with store._pool.connection():
                release.wait()

        try:
            async with trio.open_nursery() as reads:  # every connection of a's read pool
                for _ in range(store.pool_max):
                    reads.start_soon(a.read, slow_read)
                # two TTLs of reads that do not end: a still renews, b takes nothing
                assert await held_for(lambda: a.owns(execution_id) and not b.owns(execution_id), 2 * TTL_S)
                release.set()
        finally:
            release.set()


async def test_a_late_renewal_tells_the_owner_it_lost_its_lease(schema: str) -> None:
    async with node(schema, "a") as a, node(schema, "b", lease_ttl_ms=60_000) as b:
        assert a.cluster is not None and b.cluster is not None
        execution_id = await awaiting(a)
        with database(schema) as db, db.transaction():  # a's heartbeat ran out (as if it stalled), and b took
            db.execute("UPDATE incarnations SET expires_at = now() - interval '1 second' WHERE owner = %s",
                       (a.cluster.owner,))
            db.execute("UPDATE executions SET owner = %s, epoch = epoch + 1 WHERE id = %s",
                       (b.cluster.owner, execution_id))
        b.directory.start(execution_id, taken_over=True)
        await eventually(lambda: not a.directory.knows(execution_id))  # its next renewal: it let go
        assert b.owns(execution_id)
        decided = await a.submit_approval(execution_id, "ok", approver="boss", decision="approve")
        assert decided.steps["ok"].status == "succeeded"  # forwarded to b, the owner now
        assert (await until(a, execution_id, lambda e: e.status.finished)).status == "completed"


async def test_a_process_that_cannot_renew_lets_go_before_anyone_may_take_over(schema: str) -> None:
    async with node(schema, "a") as a, node(schema, "b") as b:
        assert a.cluster is not None
        execution_id = await awaiting(a)
        stalled = threading.Event()
        renewer = a.cluster.lease._renewer
        renew = renewer.renew
        both: list[float] = []

        def stalling(*args: Any) -> Any:
            stalled.wait()  # the database does not answer a's renewals (b's are fine)
            return renew(*args)

        async def watch_both() -> None:
            while True:
                if a.directory.knows(execution_id) and b.directory.knows(execution_id):
                    both.append(trio.current_time())
                await trio.sleep(0.002)

        renewer.renew = stalling  # type: ignore[method-assign]
        try:
            async with trio.open_nursery() as watching:
                watching.start_soon(watch_both)
                await eventually(lambda: not a.directory.knows(execution_id))
                assert not a.owns(execution_id)
                assert (await a.fetch(execution_id)).status == "awaiting_approval"  # read from the database
                with pytest.raises(ConnectionError, match="could not renew"):  # not ready
                    await a.ready()
                started = await a.start("gate", force=True)  # committed, but run by a process whose lease holds
                assert not a.owns(started.id)
                await eventually(lambda: b.owns(execution_id) and b.owns(started.id))  # a's lease ran out: b took it
                watching.cancel_scope.cancel()
            assert both == []  # never run by both at once: a let go before b could take it
        finally:
            stalled.set()
            renewer.renew = renew  # type: ignore[method-assign]
        await eventually(lambda: a.cluster.lease.holds())  # type: ignore[union-attr]  # renewed again
        assert not a.owns(execution_id) and b.owns(execution_id)  # a takes back nothing b took
        await a.submit_approval(execution_id, "ok", approver="boss", decision="approve")
        assert (await until(a, execution_id, lambda e: e.status.finished)).status == "completed"


async def test_what_is_taken_back_after_a_lapse_runs_again_even_if_an_actor_started_meanwhile(schema: str) -> None:
    async with node(schema, "a", lease_ttl_ms=60_000) as a:
        assert a.cluster is not None
        execution_id = await awaiting(a)
        before = await a.fetch(execution_id)
        a.cluster.lease._let_go()  # the hold slipped: every execution here is stopped
        a.directory.start(execution_id, before)  # and one was started again meanwhile (a late start, a takeover)
        a.cluster.lease.fenced = False
        await a.cluster._take_back()  # the renewal came back: what is still a's, under a new epoch
        decided = await a.submit_approval(execution_id, "ok", approver="boss", decision="approve")
        assert decided.steps["ok"].status == "succeeded"
        assert (await until(a, execution_id, lambda e: e.status.finished)).status == "completed"


async def test_a_process_past_its_hold_answers_from_the_database_not_from_memory(schema: str) -> None:
    async with node(schema, "a") as a:
        assert a.cluster is not None
        execution_id = await awaiting(a)
        with database(schema) as db:  # as if another process had finished it while a was paused
            db.execute("UPDATE executions SET status = 'cancelled', version = version + 1, "
                       "header = jsonb_set(header::jsonb, '{status}', '\"cancelled\"')::json WHERE id = %s",
                       (execution_id,))
        a.cluster.lease.held_until = trio.current_time()  # a wakes up: its hold has ended
        assert (await a.fetch(execution_id)).status == "cancelled"  # before it even noticed


# ---------------------------------------------------------------------- incarnations
async def test_a_replaced_process_runs_nothing_new_and_releases_only_its_own(schema: str) -> None:
    async with node(schema, "twin", lease_ttl_ms=60_000) as first:
        await first.register_runbook(APPROVAL)
        async with node(schema, "twin") as second:
            assert first.cluster is not None and second.cluster is not None
            # first has not renewed since (its beat is every 20 s): it starts an execution
            late = await first.start("gate", {"n": 1})
            # its writes are refused (a later start of its id replaced it), and the execution,
            # owned by a dead incarnation, is taken over although the instance id is alive
            await eventually(lambda: second.owns(late.id))
            assert not first.owns(late.id)
            await until(second, late.id, lambda e: e.status == "awaiting_approval")
            mine = await second.start("gate", {"n": 2})
            await until(second, mine.id, lambda e: e.status == "awaiting_approval")
            first.cluster.lease.held_until = -1.0  # (its lease then ends as it shuts down gracefully)
            await first.cluster.stop()  # a graceful stop: it gives up its own incarnation's, none of second's
            with database(schema) as db:
                owners = dict(db.execute("SELECT id, owner FROM executions").fetchall())
            assert owners == {late.id: second.cluster.owner, mine.id: second.cluster.owner}
            first.cluster.stop = _nothing  # type: ignore[method-assign]
            for execution_id in (late.id, mine.id):
                await second.submit_approval(execution_id, "ok", approver="boss", decision="approve")
                assert (await until(second, execution_id, lambda e: e.status.finished)).status == "completed"


# ---------------------------------------------------------------------- takeover
async def test_a_dead_process_executions_are_shared_by_the_survivors(schema: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cluster_node, "TAKEOVER_SHARE", 2, raising=False)
    async with node(schema, "a", lease_ttl_ms=60_000) as a:
        ids = [await awaiting(a) for _ in range(6)]
        assert a.cluster is not None
        dead = a.cluster.owner
        a.cluster.stop = _nothing  # type: ignore[method-assign]  # it dies: no handover
    slow = {"lease_ttl_ms": 60_000}  # (their own rounds come every 20 s: the test runs them)
    async with node(schema, "b", **slow) as b, node(schema, "c", **slow) as c:
        with database(schema) as db:
            db.execute("UPDATE incarnations SET expires_at = now() - interval '1 second' WHERE owner = %s", (dead,))
        await b.cluster.take_over()  # type: ignore[union-attr]
        await c.cluster.take_over()  # type: ignore[union-attr]
        assert sum(b.owns(i) for i in ids) == 2 and sum(c.owns(i) for i in ids) == 2  # a share each round
        await b.cluster.take_over()  # type: ignore[union-attr]
        await c.cluster.take_over()  # type: ignore[union-attr]
        assert all(b.owns(i) or c.owns(i) for i in ids)


async def test_executions_nobody_here_can_run_do_not_crowd_out_the_others(schema: str,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cluster_node, "TAKEOVER_SHARE", 2, raising=False)
    plain_gate = {"id": "plain", "steps": [{"id": "ok", "type": "human-approval", "config": {"approvers": ["boss"]}}]}
    async with node(schema, "a") as a:
        blocked = [await awaiting(a) for _ in range(3)]  # the oldest need "probe"
        await a.register_runbook(plain_gate)
        runnable = (await a.start("plain")).id
        await until(a, runnable, lambda e: e.status == "awaiting_approval")
        a.cluster.stop = _nothing  # type: ignore[union-attr,method-assign]
    store = PostgresStore(DSN, pool_max=3, schema=schema)
    settings = Settings(lease_ttl_ms=60_000, instance_id="plain", forward_wait_ms=3000)
    async with open_runtime(store, settings=settings) as plain:  # no "probe" here
        assert plain.cluster is not None
        with database(schema) as db:
            db.execute("UPDATE incarnations SET expires_at = now() - interval '1 second' WHERE instance_id = 'a'")
        for _ in range(3):
            await plain.cluster.take_over()
        assert plain.owns(runnable) and not any(plain.owns(i) for i in blocked)
        assert plain.waiting_for_owner == 3


# ---------------------------------------------------------------------- notifications
class ProxiedListener(PostgresStore):
    """A store whose LISTEN connection goes through a proxy the test controls."""

    proxy: TcpProxy

    def _listener_connection(self) -> Any:
        info = psycopg.conninfo.conninfo_to_dict(DSN)
        info.update(host="127.0.0.1", port=str(self.proxy.port), connect_timeout="2")
        return psycopg.Connection.connect(psycopg.conninfo.make_conninfo(**info), autocommit=True)


async def test_a_silent_listen_connection_is_noticed_and_polling_takes_over(schema: str,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cluster_node, "MIN_SILENCE_S", 1.0)  # (three beats of the test's TTL are less)
    info = psycopg.conninfo.conninfo_to_dict(DSN)
    async with tcp_proxy(str(info.get("host", "127.0.0.1")), int(info.get("port", 5432))) as proxy:
        store = ProxiedListener(DSN, pool_max=3, schema=schema)
        store.proxy = proxy
        async with node(schema, "a", store=store) as a, node(schema, "b") as b:
            assert a.cluster is not None
            execution_id = await awaiting(b)  # b runs it
            watched = a.watch(execution_id)
            await a.ready()
            proxy.blackhole()  # a's LISTEN connection hears nothing more, and does not break either
            await eventually(lambda: not a.cluster.connected)  # type: ignore[union-attr]
            with pytest.raises(ConnectionError, match="notifications"):
                await a.ready()
            # a decision sent through a: b applies it; a learns the outcome by polling (no 202)
            decided = await a.submit_approval(execution_id, "ok", approver="boss", decision="approve")
            assert decided.steps["ok"].status == "succeeded"
            with trio.fail_after(5):  # a's watcher still follows b's execution to its end
                async for state in watched:
                    if state.status.finished:
                        break
            assert state.status == "completed"
            proxy.forward()
            await eventually(lambda: a.cluster.connected, within_s=10)  # type: ignore[union-attr]
            await a.ready()


# ---------------------------------------------------------------------- one clock
class HourAhead(datetime):
    """A host whose clock is an hour ahead."""

    @classmethod
    def now(cls, tz: Any = None) -> Any:
        return datetime.now(tz) + timedelta(hours=1)


async def test_every_process_keeps_the_database_time_whatever_its_host_clock_says(
        schema: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async with node(schema, "b") as b:
        monkeypatch.setattr(clock_module, "datetime", HourAhead)
        async with node(schema, "a") as a:  # its host's clock is an hour ahead
            monkeypatch.undo()
            await a.register_runbook(WAIT_LONG)
            execution = await a.start("wait-long", {"key": "k"})
            with database(schema) as db:
                row = db.execute("SELECT now()").fetchone()
            assert row is not None
            assert abs((execution.created_at - row[0]).total_seconds()) < 30  # the database's time, not a's
            waiting = await until(a, execution.id, lambda e: e.steps["ev"].status == "waiting")
            deadline = waiting.deadline_at  # an hour from the database's now, not from a's host clock
            assert deadline is not None and abs((deadline - row[0]).total_seconds() - 3600) < 30
            assert abs((a.clock.now() - b.clock.now()).total_seconds()) < 5  # both keep the same time
