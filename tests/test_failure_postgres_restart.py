"""PostgreSQL restarted (``pg_ctlcluster ... restart``) while 100 executions run.

The server on this machine is shared by every test: this is the one test that restarts it.
It is skipped (never failed) when this process may not restart the cluster (not root, no
``pg_ctlcluster``, no cluster on the test DSN's port), except under ``CI=true``, where it
must run; whatever happens, it waits for the server to accept connections again
(``pg_isready``) before it ends.

What a user would notice: readiness (``Runtime.ready`` and ``GET /health/ready``) answers
503 while the server is away, naming the cause, and 200 again afterwards; every execution
completes; every call-service step reached the service (a real local HTTP service counting
calls per idempotency key) exactly once per key (no succeeded step ran twice, and nothing
crashed, so no step in flight had to run again); no audit entry is there twice.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator

import httpx
import psycopg
import pytest
import trio

from gateway import Config, create_app
from runtime import Runtime, Settings, open_runtime
from runtime.store.postgres import PostgresStore
from tests.conftest import DSN
from tests.fake_service import Response, fake_service
from tests.gateway_fixtures import MEMORY_ENV, served

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

# this process among several: its notifications connection, or its heartbeat, is down too
CLUSTER_CAUSES = ("the notifications connection to the database is down",
                  "this process could not renew its heartbeat in time")
EXECUTIONS = 100
STEPS = 6
SERVICE_DELAY_S = 0.15
RUNBOOK = {"id": "busy", "maxConcurrentSteps": 1, "steps": [
    {"id": f"s{n}", "type": "call-service", "config": {"url": f"/s{n}", "method": "POST", "body": {"n": "${input.n}"}}}
    for n in range(STEPS)]}


def _port() -> int:
    return int(psycopg.conninfo.conninfo_to_dict(DSN).get("port") or 5432)


def _cluster() -> tuple[str, str] | str:
    """(version, name) of the local cluster serving the test DSN, or why it cannot be restarted."""
    if shutil.which("pg_ctlcluster") is None or shutil.which("pg_lsclusters") is None:
        return "pg_ctlcluster is not installed"
    if os.geteuid() != 0:
        return "restarting the PostgreSQL cluster needs root"
    listed = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True, check=False)
    for line in listed.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[2] == str(_port()) and fields[3] == "online":
            return fields[0], fields[1]
    return f"no online local cluster listens on port {_port()} (the test DSN's)"


@pytest.fixture
def cluster(postgres_dsn: str) -> Iterator[tuple[str, str]]:
    found = _cluster()
    if isinstance(found, str):
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"under CI=true this test must run: {found}")
        pytest.skip(found)
    try:
        yield found
    finally:
        _until_accepting(found)



def _accepting() -> bool:
    return subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1", "-p", str(_port())], check=False).returncode == 0


def _until_accepting(found: tuple[str, str], within_s: float = 30) -> None:
    """Block until the server accepts connections (starting it if it stayed down)."""
    import time

    deadline = time.monotonic() + within_s
    started = False
    while not _accepting():
        if time.monotonic() > deadline:
            raise AssertionError("PostgreSQL did not come back")
        if not started and time.monotonic() > deadline - within_s / 2:
            subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", *found, "start"], check=False)
            started = True
        time.sleep(0.1)


class Readiness:
    """What ``Runtime.ready`` and ``GET /health/ready`` answered, sampled every 30 ms (the
    server is away for a second or so)."""

    def __init__(self, rt: Runtime, client: httpx.AsyncClient) -> None:
        self.rt = rt
        self.client = client
        self.runtime: list[str | None] = []  # None: ready, else the error
        self.http: list[tuple[int, str]] = []

    async def sample(self) -> None:
        try:
            await self.rt.ready()
            self.runtime.append(None)
        except ConnectionError as exc:
            self.runtime.append(str(exc))
        response = await self.client.get("/health/ready", timeout=10)
        self.http.append((response.status_code, response.json().get("detail", "")))

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                nursery.start_soon(self.sample)
                await trio.sleep(0.03)


async def test_postgres_restarted_under_load(cluster: tuple[str, str], schema: str) -> None:
    async with fake_service() as svc:
        for n in range(STEPS):
            svc.script(f"/s{n}", Response(200, json={"done": n}, delay_s=SERVICE_DELAY_S))
        store = PostgresStore(DSN, pool_max=4, schema=schema, timeout=3.0)
        async with open_runtime(store, settings=Settings(call_service_base_url=svc.url)) as rt:
            await rt.register_runbook(RUNBOOK)
            app = create_app(rt, Config.from_env(MEMORY_ENV))
            async with served(app) as url, httpx.AsyncClient(base_url=url) as client, \
                    trio.open_nursery() as background:
                ids = [(await rt.start("busy", {"n": n})).id for n in range(EXECUTIONS)]
                with trio.fail_after(20):
                    await svc.wait_for("/s1", EXECUTIONS // 2)  # well under way
                readiness = Readiness(rt, client)
                background.start_soon(readiness.run)
                await trio.sleep(0.3)
                with trio.fail_after(30):
                    await trio.run_process(["pg_ctlcluster", "--skip-systemctl-redirect", *cluster, "restart"])
                await trio.to_thread.run_sync(_until_accepting, cluster)
                with trio.fail_after(30):
                    finals = [await rt.wait(execution_id) for execution_id in ids]
                await trio.sleep(0.5)  # readiness after the outage
                background.cancel_scope.cancel()
            audits = {execution_id: await rt.audit(execution_id) for execution_id in ids}
    assert [f.status for f in finals] == ["completed"] * EXECUTIONS
    calls = Counter(r.headers["idempotency-key"] for r in svc.requests)
    assert calls == Counter({f"{execution_id}:s{n}": 1 for execution_id in ids for n in range(STEPS)})
    for execution_id, entries in audits.items():
        seen = Counter((e.at, e.actor, e.action, e.step_id, repr(e.data)) for e in entries)
        assert max(seen.values()) == 1, (execution_id, [k for k, v in seen.items() if v > 1])
    check_readiness(readiness)


def check_readiness(readiness: Readiness) -> None:
    failing = [error for error in readiness.runtime if error is not None]
    assert failing, "Runtime.ready never reported the outage"
    causes = ("commits are failing: StoreUnavailable: postgres store", "the store does not answer: postgres store",
              *CLUSTER_CAUSES)
    assert all(e.startswith(causes) for e in failing), failing
    refused = [detail for status, detail in readiness.http if status == 503]
    assert refused, "GET /health/ready never answered 503"
    assert all(d.startswith("not ready: ") and d.removeprefix("not ready: ").startswith(causes)
               for d in refused), refused
    assert readiness.runtime[-1] is None and readiness.http[-1][0] == 200  # ready again
    assert {status for status, _ in readiness.http} <= {200, 503}
