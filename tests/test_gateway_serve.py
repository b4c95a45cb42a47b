"""``gateway.serve``: RUNBOOKS_DIR, start-up refusals, graceful shutdown (in process and as
``python -m gateway serve`` under SIGTERM/SIGINT)."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import httpx
import pytest
import trio

from gateway import Config, ConfigError, load_runbooks_dir, serve, serve_main
from runtime import open_runtime
from tests.gateway_fixtures import free_port, sqlite_available

REPO = pathlib.Path(__file__).resolve().parent.parent
SHARED_YAML = """\
id: shared-yaml
steps:
  - id: approve
    type: human-approval
    config: {approvers: [boss]}
"""
SHARED_JSON = '{"id": "shared-json", "steps": [{"id": "w", "type": "wait-for-event", ' \
              '"config": {"eventType": "e", "correlationKey": "k"}}]}'


PARKED = {"id": "approve-me", "steps": [{"id": "approve", "type": "human-approval",
                                        "config": {"approvers": ["boss"]}}]}


def _runbooks_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    directory = tmp_path / "runbooks"
    directory.mkdir()
    (directory / "a.yaml").write_text(SHARED_YAML)
    (directory / "b.json").write_text(SHARED_JSON)
    (directory / "notes.txt").write_text("not a runbook")
    return directory


async def test_serve_loads_runbooks_dir_as_shared_and_stops_on_its_trigger(tmp_path: pathlib.Path) -> None:
    config = Config.from_env({"STORAGE_BACKEND": "memory", "PORT": str(free_port()),
                              "RUNBOOKS_DIR": str(_runbooks_dir(tmp_path))})
    stop = trio.Event()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            urls = await nursery.start(partial(serve, config, shutdown_trigger=stop.wait))
            async with httpx.AsyncClient(base_url=urls[0]) as client:
                for tenant in ("t1", "t2"):
                    listed = (await client.get("/api/v1/runbooks", headers={"X-Tenant-Id": tenant})).json()
                    assert [(rb["id"], rb["shared"]) for rb in listed["items"]] == [
                        ("shared-json", True), ("shared-yaml", True)]
                started = await client.post("/api/v1/executions", json={"runbookId": "shared-yaml"},
                                            headers={"X-Tenant-Id": "t1"})
                assert started.status_code == 201
                assert started.json()["tenantId"] == "t1"
                async with client.stream("GET", f"/api/v1/executions/{started.json()['id']}/stream",
                                         headers={"X-Tenant-Id": "t1"}) as stream:
                    stop.set()  # shutdown with a stream open: the stream ends, serve returns
                    body = b"".join([chunk async for chunk in stream.aiter_bytes()])
                assert body.startswith(b"id: ") and b"\nevent: execution\n" in body


async def test_runbooks_dir_is_not_registered_again_when_unchanged(tmp_path: pathlib.Path) -> None:
    directory = _runbooks_dir(tmp_path)
    async with open_runtime("memory") as runtime:
        first = await load_runbooks_dir(runtime, str(directory))
        again = await load_runbooks_dir(runtime, str(directory))
        (directory / "a.yaml").write_text(SHARED_YAML.replace("[boss]", "[boss, cto]"))
        changed = await load_runbooks_dir(runtime, str(directory))
    assert [(rb.id, rb.version, rb.tenant_id) for rb in first] == [("shared-yaml", 1, None), ("shared-json", 1, None)]
    assert again == []
    assert [(rb.id, rb.version) for rb in changed] == [("shared-yaml", 2)]


async def test_a_bad_runbook_file_stops_start_up_naming_the_file(tmp_path: pathlib.Path) -> None:
    directory = _runbooks_dir(tmp_path)
    (directory / "c.yaml").write_text("id: broken\nsteps:\n  - id: x\n    type: nope\n")
    (directory / "d.yml").write_text("id: [unclosed\n")
    config = Config.from_env({"STORAGE_BACKEND": "memory", "PORT": str(free_port()), "RUNBOOKS_DIR": str(directory)})
    with pytest.raises(ConfigError) as caught:
        await serve(config, shutdown_trigger=trio.sleep_forever)
    message = str(caught.value)
    assert message.startswith("RUNBOOKS_DIR: ")
    assert "c.yaml:4: steps[0].type (step 'x'): unknown step type 'nope'" in message and "d.yml:2: $: " in message
    assert "\n" not in message


async def test_development_mode_refuses_a_non_loopback_host() -> None:
    config = Config.from_env({"STORAGE_BACKEND": "memory", "HOST": "0.0.0.0"})
    with pytest.raises(ConfigError, match=r"^HOST: "):
        await serve(config, shutdown_trigger=trio.sleep_forever)


async def test_on_sqlite_state_survives_a_restart_and_runbooks_dir_adds_no_version(tmp_path: pathlib.Path) -> None:
    if not sqlite_available():
        pytest.skip("the sqlite store (runtime/store/sqlite.py) is not available yet")
    env = {"STORAGE_BACKEND": "sqlite", "SQLITE_PATH": str(tmp_path / "gw.db"),
           "RUNBOOKS_DIR": str(_runbooks_dir(tmp_path))}
    boss = {"X-User-Id": "boss"}
    with trio.fail_after(30):
        async with _serving(env) as client:
            started = await client.post("/api/v1/executions", json={"runbookId": "shared-yaml", "input": {"n": 1}})
            assert started.status_code == 201, started.text
            execution_id = started.json()["id"]
            await _wait_status(client, execution_id, "awaiting_approval")
        async with _serving(env) as client:  # a restart on the same file
            assert (await client.get("/api/v1/runbooks/shared-yaml")).json()["version"] == 1
            assert (await client.get(f"/api/v1/executions/{execution_id}")).json()["status"] == "awaiting_approval"
            decided = await client.post(f"/api/v1/executions/{execution_id}/steps/approve/approvals",
                                        json={"decision": "approve"}, headers=boss)
            assert decided.status_code == 200, decided.text
            await _wait_status(client, execution_id, "completed")
            logs = (await client.get(f"/api/v1/executions/{execution_id}/logs", params={"stepId": "approve"})).json()
            assert logs["items"] and all(entry["stepId"] == "approve" for entry in logs["items"])
            audit = (await client.get(f"/api/v1/executions/{execution_id}/audit")).json()["items"]
            assert audit[0]["action"] == "execution.started"
            assert any(entry["action"] == "approval.decided" and entry["actor"] == "boss" for entry in audit)


@asynccontextmanager
async def _serving(env: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    config = Config.from_env({"PORT": str(free_port()), **env})
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(partial(serve, config, shutdown_trigger=stop.wait))
        try:
            async with httpx.AsyncClient(base_url=urls[0]) as client:
                yield client
        finally:
            stop.set()


async def _wait_status(client: httpx.AsyncClient, execution_id: str, status: str) -> None:
    while (await client.get(f"/api/v1/executions/{execution_id}")).json()["status"] != status:  # noqa: ASYNC110
        await trio.sleep(0.02)


def test_serve_main_exits_2_with_one_line_on_bad_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert serve_main(["--port", "abc"], env={"STORAGE_BACKEND": "memory"}) == 2
    err = capsys.readouterr().err
    assert err == "runbooks serve: PORT: must be an integer between 1 and 65535, got 'abc'\n"
    assert serve_main([], env={"STORAGE_BACKEND": "memory", "HOST": "10.1.2.3"}) == 2
    assert capsys.readouterr().err.startswith("runbooks serve: HOST: ")


# ---------------------------------------------------------------------------- subprocess

async def _start_process(env: dict[str, str]) -> tuple[trio.Process, str]:
    port = free_port()
    full_env = {**os.environ, "PORT": str(port), "HOST": "127.0.0.1", **env}
    process = await trio.lowlevel.open_process([sys.executable, "-m", "gateway", "serve"], env=full_env, cwd=REPO,
                                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=url) as client:
        with trio.fail_after(20):
            while True:
                try:
                    if (await client.get("/health")).status_code == 200:
                        return process, url
                except httpx.TransportError:
                    pass
                if process.poll() is not None:
                    raise AssertionError(f"gateway exited with {process.returncode}")
                await trio.sleep(0.05)


async def _park_an_execution(url: str) -> str:
    async with httpx.AsyncClient(base_url=url) as client:
        assert (await client.post("/api/v1/runbooks", json=PARKED)).status_code == 201
        started = await client.post("/api/v1/executions", json={"runbookId": "approve-me", "input": {"value": 1}})
        assert started.status_code == 201, started.text
        execution_id: str = started.json()["id"]
        with trio.fail_after(5):
            while (await client.get(f"/api/v1/executions/{execution_id}")).json()["status"] != "awaiting_approval":  # noqa: ASYNC110
                await trio.sleep(0.02)  # polling another process over HTTP
        return execution_id


async def _read_all(stream: trio.abc.ReceiveStream) -> bytes:
    data = b""
    with trio.fail_after(5):
        while chunk := await stream.receive_some():
            data += chunk
    return data


async def _stop(process: trio.Process, signum: int) -> int:
    process.send_signal(signum)
    with trio.fail_after(15):
        return await process.wait()


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_the_process_shuts_down_gracefully_on_a_signal(signum: int) -> None:
    process, url = await _start_process({"STORAGE_BACKEND": "memory"})
    try:
        await _park_an_execution(url)
        assert await _stop(process, signum) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.mark.slow
async def test_sigterm_on_sqlite_loses_nothing(tmp_path: pathlib.Path) -> None:
    if not sqlite_available():
        pytest.skip("the sqlite store (runtime/store/sqlite.py) is not available yet")
    database = tmp_path / "runbooks.db"
    process, url = await _start_process({"STORAGE_BACKEND": "sqlite", "SQLITE_PATH": str(database)})
    try:
        execution_id = await _park_an_execution(url)
        assert await _stop(process, signal.SIGTERM) == 0
        assert process.stderr is not None
        logged = (await _read_all(process.stderr)).decode()
        assert logged.count("Running on http://") == 1, logged  # (hypercorn's own handler printed it twice)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    async with open_runtime(f"sqlite:///{database}") as runtime:
        execution = await runtime.fetch(execution_id)
        assert not execution.status.finished
        assert execution.steps["approve"].status.value == "awaiting_approval"


def test_python_m_gateway_exits_2_on_bad_config() -> None:
    result = subprocess.run([sys.executable, "-m", "gateway", "serve", "--port", "70000"], cwd=REPO,
                            env={**os.environ, "STORAGE_BACKEND": "memory"}, capture_output=True, text=True,
                            timeout=30, check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == "runbooks serve: PORT: must be an integer between 1 and 65535, got '70000'"
