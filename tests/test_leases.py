"""SPEC 8: several runtimes on one PostgreSQL database; each execution owned through a lease."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import trio
from psycopg import sql

from runtime import Conflict, Settings, open_runtime
from runtime.store.postgres import PostgresStore
from tests.conftest import DSN, taken_over

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

APPROVAL = {"id": "lease", "steps": [{"id": "ok", "type": "human-approval", "config": {"approvers": ["boss"]}}]}
SETTINGS = Settings(lease_ttl_ms=600)


@pytest.fixture
def schema(postgres_dsn: str) -> Iterator[str]:
    name = f"test_{uuid.uuid4().hex[:16]}"
    yield name
    with psycopg.connect(DSN, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


def store(schema: str) -> PostgresStore:
    return PostgresStore(DSN, pool_max=2, schema=schema)


async def test_one_owner_per_execution_and_takeover_after_the_owner_stops(schema: str) -> None:
    async with trio.open_nursery() as nursery:
        stop_a = trio.Event()
        a_ready = trio.Event()
        ready: dict[str, Any] = {}

        async def process_a() -> None:
            async with open_runtime(store(schema), settings=SETTINGS) as a:
                await a.register_runbook(APPROVAL)
                ready["id"] = (await a.start("lease", {"n": 1})).id
                ready["a"] = a
                a_ready.set()
                await stop_a.wait()

        nursery.start_soon(process_a)
        with trio.fail_after(15):
            await a_ready.wait()
        execution_id = ready["id"]
        async with open_runtime(store(schema), settings=SETTINGS) as b:
            await trio.sleep(1.5)  # several heartbeats: B must not take a live lease
            assert ready["a"].owns(execution_id) and not b.owns(execution_id)
            with pytest.raises(Conflict, match="another process"):
                await b.submit_approval(execution_id, "ok", approver="boss", decision="approve")
            mine = await b.start("lease", {"n": 2})
            assert b.owns(mine.id) and not ready["a"].owns(mine.id)
            stop_a.set()  # A leaves: B takes over what A ran
            await taken_over(b, execution_id)
            await b.submit_approval(execution_id, "ok", approver="boss", decision="approve")
            assert (await b.wait(execution_id)).status == "completed"
            await b.cancel(mine.id, reason="done")
