"""``make run``: two instances side by side each get demo services of their own (a free port,
never a crash over 3001), and SIGTERM to ``make`` stops the gateway and the demo services."""

from __future__ import annotations

import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.gateway_fixtures import free_port

REPO = pathlib.Path(__file__).resolve().parent.parent
WITHIN_S = 30


class MakeRun:
    def __init__(self, tmp_path: pathlib.Path, port: int) -> None:
        self.port = port
        self.log = tmp_path / f"make-run-{port}.log"
        env = {**os.environ, "PORT": str(port), "STORAGE_BACKEND": "memory"}
        env.pop("CALL_SERVICE_BASE_URL", None)
        env.pop("MAKEFLAGS", None)
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                ["make", "-s", "-o", ".venv/.installed", "run", f"PY={sys.executable}"], cwd=REPO, env=env,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self) -> tuple[int, int, str]:
        """(gateway pid, demo pid, demo URL) once /health answers."""
        deadline = time.monotonic() + WITHIN_S
        while time.monotonic() < deadline:
            text = self.log.read_text()
            demo = re.search(r"demo services on (\S+) \(pid (\d+)\)", text)
            gateway = re.search(r"gateway pid (\d+)", text)
            if demo and gateway and self._healthy():
                return int(gateway.group(1)), int(demo.group(2)), demo.group(1)
            assert self.process.poll() is None, f"make run exited {self.process.returncode}:\n{text}"
            time.sleep(0.1)
        raise AssertionError(f"make run never became ready:\n{self.log.read_text()}")

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie (exited, not reaped yet) is not running
        return stat.read().split(") ", 1)[1][0] != "Z"


@pytest.mark.slow
def test_two_instances_side_by_side_and_sigterm_stops_both_processes(tmp_path: pathlib.Path) -> None:
    runs = [MakeRun(tmp_path, free_port()), MakeRun(tmp_path, free_port())]
    try:
        ready = [run.wait_ready() for run in runs]
        assert ready[0][2] != ready[1][2]  # each its own demo services
        for _, _, demo_url in ready:
            assert httpx.get(f"{demo_url}/environments/staging/health").json()["status"] == "healthy"
        for run, (gateway_pid, demo_pid, _) in zip(runs, ready, strict=True):
            run.process.send_signal(signal.SIGTERM)  # to make itself, as `kill -TERM <make pid>` does
            run.process.wait(timeout=WITHIN_S)
            deadline = time.monotonic() + WITHIN_S
            while (_alive(gateway_pid) or _alive(demo_pid)) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not _alive(gateway_pid) and not _alive(demo_pid), run.log.read_text()
            assert "Traceback" not in run.log.read_text()
    finally:
        for run in runs:
            run.stop()
