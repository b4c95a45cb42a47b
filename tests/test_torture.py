"""Crash anywhere: ``kill -9`` of a ``runbooks serve`` process at random moments, restarted on
the same store, until every execution completes.

Each round starts a batch of executions over HTTP (four runbooks: a chain of service calls,
a service call / human approval / service call, an event wait then a service call, and a
loop of service calls then one more), while a driver answers approvals and publishes
events as the executions reach them; at a random moment the server is killed with SIGKILL
and started again, and the driver carries on (re-sending what got no answer) until all
complete. Some events are published before their execution exists (they are retained).
Service calls go to a real local HTTP service that records every request with its
``Idempotency-Key``.

Checked after every round (what "nothing lost, nothing twice" means here):

1. Every execution whose start was answered 201/200 exists and completes.
2. Service effects: every succeeded call-service step (and every iteration of a succeeded
   loop) reached the service with its idempotency key at least once; no request with that
   key arrived after the driver had seen the step succeeded (a succeeded step never runs
   again). A key called more than once must belong to a step that was in flight at a kill
   or retried; the count of those is reported, not refused.
3. Approvals: each approval answered 200 is in the execution's final approvals exactly
   once, and its ``approval.decided`` audit entry exactly once.
4. Events: each event answered 202 reached its execution: the step waiting on its key
   succeeded with that event's payload (whether it was delivered at once or retained and
   taken later, across kills).
5. Audit: the entries of an execution read in an earlier round are a prefix of those read
   now (none lost, order kept); no two entries are identical (at, actor, action, stepId,
   data: none duplicated); exactly one ``execution.started`` and one
   ``execution.completed``.

``make test`` runs a few rounds (SQLite, and PostgreSQL when the server answers);
``make torture ROUNDS=50`` runs the same test with more (``RUNBOOKS_TORTURE_ROUNDS``; the
seed is ``RUNBOOKS_TORTURE_SEED``, printed on failure).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx
import psycopg
import pytest
import trio
from psycopg import sql

from tests.conftest import DSN, drop_schema
from tests.fake_service import FakeService, Response, fake_service
from tests.gateway_fixtures import free_port

pytestmark = pytest.mark.slow

ROOT = str(Path(__file__).resolve().parent.parent)
ROUNDS = {"sqlite": 3, "postgres": 2}
PER_KIND = 3  # executions of each runbook per round
LOOP_ITEMS = 6
SERVICE_DELAY_S = 0.25
LEASE_TTL_MS = 1000  # postgres: the killed process's leases expire soon
BOSS = {"X-User-Id": "boss"}

RUNBOOKS = {
    "t-chain": {"id": "t-chain", "steps": [
        {"id": f"c{n}", "type": "call-service", "config": {"url": f"/c{n}", "method": "POST"}} for n in range(3)]},
    "t-approval": {"id": "t-approval", "steps": [
        {"id": "before", "type": "call-service", "config": {"url": "/a1", "method": "POST"}},
        {"id": "approve", "type": "human-approval", "config": {"approvers": ["boss"]}},
        {"id": "after", "type": "call-service", "config": {"url": "/a2", "method": "POST"}}]},
    "t-event": {"id": "t-event", "steps": [
        {"id": "wait", "type": "wait-for-event",
         "config": {"eventType": "t.go", "correlationKey": "${input.key}", "timeoutMs": 3_600_000}},
        {"id": "deliver", "type": "call-service",
         "config": {"url": "/e1", "method": "POST", "body": {"nonce": "${wait.payload.nonce}"}}}]},
    "t-loop": {"id": "t-loop", "steps": [
        {"id": "fan", "type": "loop", "config": {"items": "${input.items}", "concurrency": 2, "step": {
            "type": "call-service", "config": {"url": "/l", "method": "POST", "body": {"item": "${item}"}}}}},
        {"id": "after", "type": "call-service", "config": {"url": "/l2", "method": "POST"}}]},
}
SERVICE_STEPS = {"t-chain": ("c0", "c1", "c2"), "t-approval": ("before", "after"), "t-event": ("deliver",),
                 "t-loop": ("after",)}
PATHS = ("/c0", "/c1", "/c2", "/a1", "/a2", "/e1", "/l", "/l2")


def rounds(store: str) -> int:
    return int(os.environ.get("RUNBOOKS_TORTURE_ROUNDS", ROUNDS[store]))


@attrs.define
class Tracked:
    """One execution as the driver knows it."""

    kind: str
    key: str  # its Idempotency-Key, and its event's correlation key
    id: str | None = None
    state: dict[str, Any] | None = None
    approved: bool = False  # an approval was answered 200
    event_nonce: str = attrs.Factory(lambda: uuid.uuid4().hex)
    event_accepted: bool = False  # an event was answered 202
    audit: list[dict[str, Any]] = attrs.Factory(list)

    @property
    def done(self) -> bool:
        return self.state is not None and self.state["status"] in ("completed", "failed", "cancelled", "timed_out")


class Server:
    """The ``runbooks serve`` child: started, killed with SIGKILL, started again."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = env
        self.log = log
        self.url = ""
        self.kills = 0
        self._process: trio.Process | None = None

    async def start(self) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        with open(self.log, "ab") as log:  # noqa: ASYNC230 (a local file, opened once per start)
            self._process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "gateway", "serve", "--port", str(port)],
                env={**os.environ, "PYTHONPATH": ROOT, **self.env}, stdout=log, stderr=subprocess.STDOUT)
        async with httpx.AsyncClient(timeout=2) as client:
            with trio.fail_after(60):
                while True:
                    try:
                        if (await client.get(f"{self.url}/health/ready")).status_code == 200:
                            return
                    except httpx.TransportError:
                        pass
                    assert self._process.poll() is None, self.log.read_text()[-3000:]
                    await trio.sleep(0.05)

    async def kill(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGKILL)
        with trio.fail_after(30):
            await self._process.wait()
        self.kills += 1

    async def stop(self) -> int:
        assert self._process is not None
        self._process.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            return await self._process.wait()


class Driver:
    """Starts executions and answers what they wait for, over HTTP, through kills."""

    def __init__(self, server: Server, svc: FakeService) -> None:
        self.server = server
        self.svc = svc
        self.tracked: list[Tracked] = []
        self.succeeded_at: dict[str, int] = {}  # idempotency key -> requests seen when its step was seen succeeded
        self.client = httpx.AsyncClient(timeout=10, headers={"X-User-Id": "driver"})

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response | None:
        """One request to the current server; None if it got no answer (killed, restarting)."""
        try:
            return await self.client.request(method, f"{self.server.url}{path}", **kwargs)
        except httpx.TransportError:
            await trio.sleep(0.05)
            return None

    async def start_all(self, batch: list[Tracked]) -> None:
        for item in batch:
            while item.id is None:
                response = await self.request("POST", "/api/v1/executions", json=_start_body(item),
                                              headers={"Idempotency-Key": item.key})
                if response is not None and response.status_code in (200, 201):
                    item.id = response.json()["id"]

    async def publish(self, item: Tracked) -> None:
        body = {"type": "t.go", "correlationKey": item.key, "payload": {"nonce": item.event_nonce}}
        response = await self.request("POST", "/api/v1/events", json=body)
        if response is not None and response.status_code == 202:
            item.event_accepted = True

    async def drive(self) -> None:
        """Until every tracked execution has finished."""
        while not all(item.done for item in self.tracked):
            await self.poll()
            for item in self.tracked:
                await self.act(item)
            await trio.sleep(0.1)

    async def poll(self) -> None:
        response = await self.request("GET", "/api/v1/executions", params={"limit": 1000})
        if response is None or response.status_code != 200:
            return
        seen = len(self.svc.requests)
        states = {e["id"]: e for e in response.json()["items"]}
        for item in self.tracked:
            if item.id in states:
                item.state = states[item.id]
                for key in _succeeded_keys(item):
                    self.succeeded_at.setdefault(key, seen)

    async def act(self, item: Tracked) -> None:
        steps = item.state["steps"] if item.state is not None else {}
        if item.kind == "t-approval" and not item.approved and steps.get("approve", {}).get("status") == "awaiting_approval":
            response = await self.request("POST", f"/api/v1/executions/{item.id}/steps/approve/approvals",
                                          json={"decision": "approve"}, headers=BOSS)
            item.approved = response is not None and response.status_code == 200
        if item.kind == "t-event" and not item.event_accepted and steps.get("wait", {}).get("status") == "waiting":
            await self.publish(item)

    async def read_audits(self) -> None:
        for item in self.tracked:
            while True:
                response = await self.request("GET", f"/api/v1/executions/{item.id}/audit")
                if response is not None and response.status_code == 200:
                    break
            entries = response.json()["items"]
            assert entries[:len(item.audit)] == item.audit, f"audit of {item.id} lost or reordered entries"
            item.audit = entries


def _start_body(item: Tracked) -> dict[str, Any]:
    payload: dict[str, Any] = {"key": item.key}
    if item.kind == "t-loop":
        payload["items"] = [f"{item.key}-{n}" for n in range(LOOP_ITEMS)]
    return {"runbookId": item.kind, "input": payload, "context": {"userId": "driver"}}


def _succeeded_keys(item: Tracked) -> list[str]:
    assert item.state is not None and item.id is not None
    steps = item.state["steps"]
    keys = [f"{item.id}:{step}" for step in SERVICE_STEPS[item.kind] if steps[step]["status"] == "succeeded"]
    if item.kind == "t-loop" and steps["fan"]["status"] == "succeeded":
        keys += [f"{item.id}:fan:{n}" for n in range(LOOP_ITEMS)]
    return keys


def check_round(driver: Driver) -> int:
    """The invariants of the module docstring; the number of keys called more than once."""
    requests = [r.headers["idempotency-key"] for r in driver.svc.requests]
    for item in driver.tracked:
        assert item.state is not None and item.state["status"] == "completed", (item.id, item.state)
        for key in _succeeded_keys(item):
            assert key in requests, f"succeeded step {key} never reached the service"
            late = [n for n, k in enumerate(requests) if k == key and n >= driver.succeeded_at[key]]
            assert not late, f"{key} was called again after it had succeeded"
        check_records(item)
    return sum(1 for key in set(requests) if requests.count(key) > 1)


def check_records(item: Tracked) -> None:
    steps = item.state["steps"] if item.state is not None else {}
    actions = [entry["action"] for entry in item.audit]
    assert (actions.count("execution.started"), actions.count("execution.completed")) == (1, 1), actions
    identical = [json.dumps(entry, sort_keys=True) for entry in item.audit]
    assert len(set(identical)) == len(identical), f"duplicated audit entries in {item.id}"
    if item.kind == "t-approval":
        decisions = [(a["approver"], a["decision"]) for a in steps["approve"]["approvals"]]
        assert decisions == [("boss", "approve")], decisions
        assert actions.count("approval.decided") == 1, actions
    if item.kind == "t-event" and item.event_accepted:
        assert steps["wait"]["output"]["payload"] == {"nonce": item.event_nonce}


def _batch(round_number: int, rng: random.Random) -> tuple[list[Tracked], list[Tracked]]:
    """The round's executions, and those of its event waits whose event goes out first."""
    batch = [Tracked(kind, f"r{round_number}-{kind}-{n}") for kind in RUNBOOKS for n in range(PER_KIND)]
    rng.shuffle(batch)
    early = [item for item in batch if item.kind == "t-event"][: PER_KIND // 2 + 1]
    return batch, early


async def kill_and_restart(server: Server, delays: list[float]) -> None:
    for delay in delays:
        await trio.sleep(delay)
        await server.kill()
        await trio.sleep(0.3)  # what the dead process had sent has arrived: later requests are the new one's
        await server.start()


async def run_rounds(server: Server, svc: FakeService, count: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    driver = Driver(server, svc)
    repeated: list[int] = []
    await server.start()
    async with driver.client:
        for number in range(count):
            batch, early = _batch(number, rng)
            for item in early:
                while not item.event_accepted:
                    await driver.publish(item)
            driver.tracked += batch
            # one kill while the batch runs; sometimes a second one soon after the restart (recovery)
            kills = [rng.uniform(0.05, 1.5)] + ([rng.uniform(0.0, 0.5)] if rng.random() < 0.3 else [])
            async with trio.open_nursery() as nursery:
                nursery.start_soon(driver.start_all, batch)
                nursery.start_soon(kill_and_restart, server, kills)
                with trio.fail_after(120):
                    await driver.drive()
            await driver.read_audits()
            repeated.append(check_round(driver) - sum(repeated))
    assert await server.stop() == 0  # and a clean stop at the end
    return repeated


@asynccontextmanager
async def scripted_service() -> AsyncIterator[FakeService]:
    async with fake_service() as svc:
        for path in PATHS:
            svc.script(path, Response(200, json={"ok": True}, delay_s=SERVICE_DELAY_S))
        yield svc


def write_runbooks(directory: Path) -> Path:
    directory.mkdir()
    for name, document in RUNBOOKS.items():
        (directory / f"{name}.json").write_text(json.dumps(document))
    return directory


@pytest.fixture
def pg_schema(postgres_dsn: str) -> Iterator[str]:
    name = f"test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    yield name
    drop_schema(postgres_dsn, name)


def store_env(store: str, tmp_path: Path, request: pytest.FixtureRequest) -> dict[str, str]:
    if store == "sqlite":
        return {"STORAGE_BACKEND": "sqlite", "SQLITE_PATH": str(tmp_path / "runbooks.db")}
    schema = request.getfixturevalue("pg_schema")
    url = psycopg.conninfo.make_conninfo(DSN, options=f"-c search_path={schema}")
    return {"STORAGE_BACKEND": "postgres", "DATABASE_URL": _as_uri(url), "LEASE_TTL_MS": str(LEASE_TTL_MS)}


def _as_uri(conninfo: str) -> str:
    """A keyword/value conninfo as a postgresql:// URI (DATABASE_URL must be one)."""
    from urllib.parse import quote

    parts = psycopg.conninfo.conninfo_to_dict(conninfo)
    user = quote(str(parts.pop("user", "postgres")), safe="")
    password = parts.pop("password", None)
    host, port, dbname = parts.pop("host", "127.0.0.1"), parts.pop("port", "5432"), parts.pop("dbname", "")
    credentials = f"{user}:{quote(str(password), safe='')}" if password else user
    query = "&".join(f"{key}={quote(str(value), safe='')}" for key, value in parts.items())
    return f"postgresql://{credentials}@{host}:{port}/{quote(str(dbname), safe='')}" + (f"?{query}" if query else "")


@pytest.mark.parametrize("store", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_kill_dash_nine_at_random_moments(store: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    seed = int(os.environ.get("RUNBOOKS_TORTURE_SEED", random.randrange(1 << 32)))
    log = tmp_path / "serve.log"
    async with scripted_service() as svc:
        env = {**store_env(store, tmp_path, request), "RUNBOOKS_DIR": str(write_runbooks(tmp_path / "runbooks")),
               "CALL_SERVICE_BASE_URL": svc.url}
        server = Server(env, log)
        try:
            repeated = await run_rounds(server, svc, rounds(store), seed)
        except BaseException:
            print(f"torture seed {seed} (RUNBOOKS_TORTURE_SEED); server log:\n{log.read_text()[-6000:]}")
            raise
    print(f"torture {store}: {rounds(store)} rounds, {server.kills} kills, seed {seed}, "
          f"keys called again (in flight at a kill) per round: {repeated}")
    assert server.kills >= rounds(store)
