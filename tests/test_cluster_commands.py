"""Commands, events and wait rows with several runtimes on one PostgreSQL database: events
published back to back each reach their own waiter, a command is applied once, every
command is resolved (also one for an execution that has finished), and a parent whose
child's owner does not answer goes on."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
import trio
from psycopg import sql

from tests.conftest import DSN
from tests.test_cluster import node, until

pytestmark = [pytest.mark.postgres]

TWO_WAITS = {"id": "two", "steps": [
    {"id": "a", "type": "wait-for-event", "config": {"eventType": "go", "correlationKey": "k", "timeoutMs": 8000}},
    {"id": "b", "type": "wait-for-event", "config": {"eventType": "go", "correlationKey": "k", "timeoutMs": 8000}}]}


def rows(schema: str, query: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        return conn.execute(query, args).fetchall()


async def test_two_events_published_back_to_back_through_two_processes_reach_both_waits(schema: str) -> None:
    async with node(schema, "a") as a, node(schema, "b") as b, node(schema, "c") as c:
        await a.register_runbook(TWO_WAITS)
        execution = await a.start("two")
        await until(a, execution.id, lambda e: e.steps["a"].status == "waiting")
        first = await b.publish_event("go", "k", {"n": 1})
        second = await c.publish_event("go", "k", {"n": 2})
        # the second finds no waiter (a's row went with the first): it is kept for b's wait
        assert (first.delivered, second.delivered, second.retained) == (1, 0, True)
        final = await until(a, execution.id, lambda e: e.status.finished)
        assert final.status == "completed"
        assert [final.steps[s].output["payload"] for s in "ab"] == [{"n": 1}, {"n": 2}]
        assert rows(schema, "SELECT count(*) FROM waits") == [(0,)]
