"""Registering a runbook: the same document again is the same version (embedded, REST, two
processes at once on one database); a ``serve`` that cannot bind its port writes nothing."""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys
from collections.abc import Iterator

import httpx
import psycopg
import pytest
import trio

from gateway import serve_main
from runtime import open_runtime
from tests.conftest import DSN
from tests.gateway_fixtures import free_port, running_gateway, wait_until_ready

REPO = pathlib.Path(__file__).resolve().parent.parent
DOC = {"id": "same", "steps": [{"id": "a", "type": "human-approval", "config": {"approvers": ["boss"]}}]}
CHANGED = {**DOC, "name": "changed"}


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[str]:
    if request.param == "memory":
        yield "memory"
    elif request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'reg.db'}"
    else:
        yield f"{DSN}?schema={request.getfixturevalue('schema')}"


async def test_the_same_document_again_is_the_same_version(store_url: str) -> None:
    async with open_runtime(store_url) as rt:
        first = await rt.register_runbook(DOC)
        again = await rt.register_runbook(dict(DOC))
        assert (again.version, again.created_at) == (first.version, first.created_at) == (1, first.created_at)
        assert (await rt.register_runbook(CHANGED)).version == 2
        assert (await rt.register_runbook(DOC)).version == 3  # back to the first text: a new latest version
        assert (await rt.register_runbook(DOC, tenant_id="t1")).version == 1  # the tenant's own runbook
        assert (await rt.register_runbook(DOC, tenant_id="t1")).version == 1
        assert [r.version for r in await rt.list_runbooks()] == [3]


@pytest.mark.postgres
async def test_two_runtimes_registering_the_same_document_at_once_make_one_version(schema: str) -> None:
    url = f"{DSN}?schema={schema}"
    async with open_runtime(url) as a, open_runtime(url) as b:
        versions: list[int] = []

        async def register(rt: object) -> None:
            versions.append((await rt.register_runbook(DOC)).version)  # type: ignore[attr-defined]

        async with trio.open_nursery() as nursery:
            for rt in (a, b, a, b):
                nursery.start_soon(register, rt)
        assert versions == [1, 1, 1, 1]
    assert count_versions(schema) == 1


def count_versions(schema: str) -> int:
    with psycopg.connect(DSN) as conn:
        row = conn.execute(f'SELECT count(*) FROM "{schema}".runbooks WHERE id = %s', ("same",)).fetchone()
    assert row is not None
    return int(row[0])


async def test_rest_registration_of_the_same_document_answers_its_version() -> None:
    async with running_gateway() as gw:
        first = await gw.client.post("/api/v1/runbooks", json=DOC)
        again = await gw.client.post("/api/v1/runbooks", json=DOC)
        changed = await gw.client.post("/api/v1/runbooks", json=CHANGED)
        assert [r.json()["version"] for r in (first, again, changed)] == [1, 1, 2]
        assert again.headers["Location"] == "/api/v1/runbooks/same?version=1"


@pytest.mark.slow
@pytest.mark.postgres
def test_two_serve_processes_started_together_register_each_runbook_once(schema: str,
                                                                         tmp_path: pathlib.Path) -> None:
    runbooks = tmp_path / "runbooks"
    runbooks.mkdir()
    for n in range(5):
        (runbooks / f"r{n}.json").write_text(f'{{"id": "r{n}", "steps": [{{"id": "a", "type": "human-approval", '
                                             f'"config": {{"approvers": ["boss"]}}}}]}}')
    ports = [free_port(), free_port()]
    env = {k: v for k, v in os.environ.items() if k not in ("PORT", "STORAGE_BACKEND", "SQLITE_PATH")}
    processes = [subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port), "--store", f"{DSN}?schema={schema}",
         "--runbooks-dir", str(runbooks)], cwd=REPO, env={**env, "RUNBOOKS_INSTANCE_ID": f"p{port}"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for port in ports]
    try:
        for port, process in zip(ports, processes, strict=True):
            wait_until_ready(f"http://127.0.0.1:{port}", process)
        listed = httpx.get(f"http://127.0.0.1:{ports[0]}/api/v1/runbooks").json()["items"]
        assert sorted((r["id"], r["version"]) for r in listed) == [(f"r{n}", 1) for n in range(5)]
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=20)
    with psycopg.connect(DSN) as conn:
        row = conn.execute(f'SELECT count(*) FROM "{schema}".runbooks').fetchone()
    assert row is not None and row[0] == 5  # (each twice before, versions differing only in createdAt)


def test_serve_that_cannot_bind_its_port_writes_nothing(tmp_path: pathlib.Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    database = tmp_path / "never.db"
    runbooks = tmp_path / "runbooks"
    runbooks.mkdir()
    (runbooks / "r.json").write_text('{"id": "r", "steps": [{"id": "a", "type": "human-approval", '
                                     '"config": {"approvers": ["boss"]}}]}')
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = serve_main(["--port", str(port), "--store", f"sqlite:///{database}", "--runbooks-dir", str(runbooks)],
                          env={"PATH": os.environ.get("PATH", "")})
    assert code == 2
    assert f"cannot serve on 127.0.0.1:{port}" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [runbooks]  # no database, no lock file
