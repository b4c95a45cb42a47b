"""``runbooks serve --workers N``: N cluster processes on one port, stopped together."""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest

from gateway.cli import main
from tests.conftest import DSN
from tests.gateway_fixtures import free_port, wait_until_ready

REPO = pathlib.Path(__file__).resolve().parent.parent
ECHO = {"id": "hello", "steps": [{"id": "say", "type": "conditional",
                                  "config": {"condition": {"field": "input.n", "operator": "gt", "value": 0}}}]}


def test_workers_need_the_postgres_store(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--workers", "2", "--store", f"sqlite:///{tmp_path / 'x.db'}"]) == 2
    assert capsys.readouterr().err == (
        "runbooks serve: --workers 2: several worker processes share one PostgreSQL database; the sqlite store "
        "belongs to one process (use a postgresql:// store, or --workers 1)\n")
    assert not (tmp_path / "x.db").exists()
    assert main(["serve", "--workers", "2", "--store", "memory"]) == 2
    assert "the memory store belongs to one process" in capsys.readouterr().err
    assert main(["serve", "--workers", "0", "--store", "memory"]) == 2
    assert capsys.readouterr().err == "runbooks serve: --workers: must be an integer between 1 and 256, got '0'\n"


def test_a_port_another_program_holds_is_refused_before_any_worker_starts(
        capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--workers", "2", "--port", str(port), "--store", "postgresql://db.invalid/x"]) == 2
    assert capsys.readouterr().err == f"runbooks serve: cannot serve on 127.0.0.1:{port}: Address already in use\n"


def children(pid: int) -> set[int]:
    """The live processes whose parent is ``pid`` (from /proc)."""
    found = set()
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z"


def instances_answering(url: str, count: int) -> set[str]:
    """The instance ids that answered ``count`` requests, each on a new connection."""
    return {httpx.get(f"{url}/health", timeout=5).headers["X-Runbooks-Instance"] for _ in range(count)}


def until(condition: Any, within_s: float, why: str) -> None:
    """Real time: other processes. Fails after ``within_s``."""
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, why
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.postgres
def test_two_workers_share_the_port_survive_a_crash_and_stop_together(schema: str, tmp_path: pathlib.Path) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if k not in ("PORT", "STORAGE_BACKEND", "RUNBOOKS_DIR")}
    env["RUNBOOKS_INSTANCE_ID"] = "fleet"
    with log.open("wb") as output:
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--workers", "2", "--port", str(port),
             "--store", f"{DSN}?schema={schema}"], cwd=REPO, env=env, stdout=output, stderr=output)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, supervisor, why=log.read_text)
        until(lambda: len(children(supervisor.pid)) == 2 and instances_answering(url, 20) == {"fleet-w1", "fleet-w2"},
              30, "both workers answer")
        # any request on any worker: register through one connection, start through others
        headers = {"X-User-Id": "alice"}
        assert httpx.post(f"{url}/api/v1/runbooks", json=ECHO, headers=headers).status_code == 201
        for n in range(1, 5):
            started = httpx.post(f"{url}/api/v1/executions", json={"runbookId": "hello", "input": {"n": n}},
                                 headers=headers)
            assert started.status_code in (200, 201, 202), started.text

        first = children(supervisor.pid)
        victim = next(iter(first))
        os.kill(victim, signal.SIGKILL)  # a worker dies: it is started again, under the same instance id
        until(lambda: len(children(supervisor.pid) - first) == 1 and alive(supervisor.pid), 30,
              "the dead worker is started again")
        until(lambda: instances_answering(url, 20) == {"fleet-w1", "fleet-w2"}, 30, "both workers answer again")

        workers = children(supervisor.pid)
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=40) == 0, log.read_text()
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()
    assert not [pid for pid in workers if alive(pid)]
    with socket.socket() as probe:  # nothing holds the port any more
        probe.bind(("127.0.0.1", port))
    assert "2 workers serving on" in log.read_text()


@pytest.mark.slow
def test_a_worker_that_cannot_start_stops_them_all(tmp_path: pathlib.Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PORT", "STORAGE_BACKEND", "RUNBOOKS_DIR")}
    finished = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--workers", "2", "--port", str(free_port()),
         "--store", "postgresql://postgres@127.0.0.1:1/nowhere"], cwd=REPO, env=env, capture_output=True,
        text=True, timeout=120)
    assert finished.returncode == 1, finished.stderr  # the worker's status: the store cannot be opened
    assert "runbooks serve: cannot start: postgres store: open failed" in finished.stderr
    assert "before it served: stopping all workers" in finished.stderr
