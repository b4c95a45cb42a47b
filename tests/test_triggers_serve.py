"""Schedules in real time: a seconds schedule through ``runbooks serve`` (bounded, a few
seconds), and two runtimes on one PostgreSQL database that never start one due time twice."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
from collections import Counter

import httpx
import pytest
import trio

from runtime import Settings, open_runtime
from runtime.store.postgres import PostgresStore
from tests.conftest import DSN
from tests.gateway_fixtures import free_port

REPO = pathlib.Path(__file__).resolve().parent.parent
EVERY_SECOND = {"id": "ticker", "steps": [{"id": "tick", "type": "conditional",
                                           "config": {"condition": {"field": "input.n", "operator": "eq", "value": 1}}}],
                "triggers": [{"id": "each-second", "schedule": "* * * * * *", "input": {"n": 1}}]}


@pytest.mark.slow
async def test_a_seconds_schedule_runs_in_runbooks_serve(tmp_path: pathlib.Path) -> None:
    directory = tmp_path / "runbooks"
    directory.mkdir()
    (directory / "ticker.json").write_text(json.dumps({**EVERY_SECOND, "triggers": [
        {"id": "every-2s", "schedule": "*/2 * * * * *", "input": {"n": 1}}]}))
    port = free_port()
    env = {**os.environ, "PORT": str(port), "HOST": "127.0.0.1", "STORAGE_BACKEND": "memory",
           "RUNBOOKS_DIR": str(directory)}
    process = await trio.lowlevel.open_process([sys.executable, "-m", "gateway", "serve"], env=env, cwd=REPO,
                                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            with trio.fail_after(30):
                items: list[dict[str, object]] = []
                while len(items) < 3:
                    await trio.sleep(0.25)  # another process, over HTTP: polled
                    try:
                        items = (await client.get("/api/v1/executions?runbookId=ticker")).json()["items"]
                    except httpx.TransportError:
                        continue
            triggers = (await client.get("/api/v1/triggers")).json()["items"]
        ats = sorted(str(item["context"]["trigger"]["at"]) for item in items)  # type: ignore[index]
        assert len(set(ats)) == len(ats)
        assert all(int(at[17:19]) % 2 == 0 and at.endswith("Z") for at in ats), ats  # every even second
        assert {item["status"] for item in items} == {"completed"}
        [info] = triggers
        assert info["lastRunAt"] is not None and info["nextRunAt"] > info["lastRunAt"]
    finally:
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(15):
            await process.wait()
    assert process.returncode == 0



@pytest.mark.postgres
@pytest.mark.slow
async def test_two_runtimes_on_one_database_start_each_due_time_once(schema: str) -> None:
    settings = Settings(lease_ttl_ms=2000)
    async with open_runtime(PostgresStore(DSN, pool_max=3, schema=schema), settings=settings) as a:
        await a.register_runbook(EVERY_SECOND)
        async with open_runtime(PostgresStore(DSN, pool_max=3, schema=schema), settings=settings) as b:
            assert a.scheduler._schedules and b.scheduler._schedules  # both fire every second
            await trio.sleep(3.5)
        page = await a.list_executions(runbook_id="ticker", limit=1000)
    due_times = Counter(e.context["trigger"]["at"] for e in page.items)
    assert len(due_times) >= 3
    assert set(due_times.values()) == {1}, due_times  # each due time once, whichever process won it
    assert all(e.idempotency_key == f"trigger:ticker:each-second:{e.context['trigger']['at']}" for e in page.items)
