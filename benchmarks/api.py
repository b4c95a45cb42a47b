"""REST latency: the gateway served by its own process, loaded from this one over loopback.

Starts ``python -m gateway serve`` (STORAGE_BACKEND=sqlite, a temp SQLITE_PATH, a free PORT
on 127.0.0.1), waits for ``/health``, registers a runbook through the API, then drives
``POST /api/v1/executions`` at a fixed rate with open-loop pacing (request i is sent at
t0 + i/rate whatever the earlier ones do; its latency counts from that planned time), then
``GET /api/v1/executions/{id}`` over the executions it made, at the same rate. Reports
p50/p99 of each (and, first, the p50 of requests sent one at a time: no load). The runbook is three conditional steps: each start also runs its
execution to the end inside the server. Every request has a timeout; the load is bounded
in count and time, and the server is stopped with SIGTERM at the end.

    python -m benchmarks.api [--quick]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import httpx
import trio

from benchmarks.common import ROOT, Report, arguments, percentile, run

RATE = 200.0
UNLOADED = 100  # requests sent one at a time first: the latency without load
HEADERS = {"X-User-Id": "bench", "X-Tenant-Id": "bench"}
RUNBOOK = {"id": "api-bench", "steps": [
    {"id": "check", "type": "conditional", "config": {
        "condition": {"field": "input.n", "operator": "gte", "value": 0}, "trueBranch": "yes", "falseBranch": "no"}},
    {"id": "yes", "type": "conditional", "dependsOn": ["check"],
     "config": {"condition": {"field": "input.n", "operator": "exists"}}},
    {"id": "no", "type": "conditional", "dependsOn": ["check"],
     "config": {"condition": {"field": "input.n", "operator": "exists"}}},
]}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Server:
    """``python -m gateway serve`` in a child process, its log in a temp file."""

    def __init__(self, directory: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(directory, "server.log")
        env = {**os.environ, "STORAGE_BACKEND": "sqlite", "SQLITE_PATH": os.path.join(directory, "api.db"),
               "PORT": str(self.port), "HOST": "127.0.0.1"}
        env.pop("RUNBOOKS_DIR", None)
        env.pop("RUNBOOKS_TOKENS_FILE", None)
        self._log = open(self.log_path, "wb")  # closed in stop()
        self.process = subprocess.Popen([sys.executable, "-m", "gateway", "serve"], cwd=ROOT, env=env,
                                        stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)

    async def wait_healthy(self, client: httpx.AsyncClient, timeout_s: float = 20.0) -> None:
        with trio.move_on_after(timeout_s):
            while self.process.poll() is None:
                try:
                    if (await client.get(f"{self.url}/health")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await trio.sleep(0.1)
        raise RuntimeError(f"the server did not become healthy; its log:\n{self.log_tail()}")

    def cpu_s(self) -> float:
        """The server process's CPU time so far (user + system, /proc/PID/stat)."""
        with open(f"/proc/{self.process.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_tail(self) -> str:
        with open(self.log_path, "rb") as log:
            return log.read()[-3000:].decode(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self._log.close()


async def paced(count: int, rate: float, request: Callable[[int], Awaitable[Any]],
                timeout_s: float = 5.0) -> tuple[list[float], int]:
    """Open-loop load: request i planned at t0 + i/rate; (latencies in ms from the plan, errors)."""
    latencies: list[float] = []
    errors = [0]
    t0 = trio.current_time()

    async def one(i: int, planned: float) -> None:
        try:
            with trio.fail_after(timeout_s):
                await request(i)
        except (httpx.HTTPError, trio.TooSlowError, RuntimeError):
            errors[0] += 1  # counted at the time it failed: a timeout is a latency of >= timeout_s
        latencies.append((trio.current_time() - planned) * 1000)

    async with trio.open_nursery() as requests:
        for i in range(count):
            planned = t0 + i / rate
            await trio.sleep_until(planned)
            requests.start_soon(one, i, planned)
    return latencies, errors[0]


async def main(report: Report, args: argparse.Namespace) -> None:
    seconds = 4 if args.quick else 30
    count = int(RATE * seconds)
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    with tempfile.TemporaryDirectory(prefix="runbooks-api-bench-") as directory:
        server = Server(directory)
        try:
            async with httpx.AsyncClient(headers=HEADERS, limits=limits, timeout=5.0) as client:
                await server.wait_healthy(client)
                registered = await client.post(f"{server.url}/api/v1/runbooks", json=RUNBOOK)
                if registered.status_code != 201:
                    raise RuntimeError(f"registering the runbook: {registered.status_code} {registered.text}")
                await measure(report, client, server, count)
        finally:
            server.stop()


async def measure(report: Report, client: httpx.AsyncClient, server: Server, count: int) -> None:
    url = server.url
    ids: list[str] = []

    async def start(i: int) -> None:
        response = await client.post(f"{url}/api/v1/executions", json={"runbookId": "api-bench", "input": {"n": i}})
        if response.status_code != 201:
            raise RuntimeError(f"start: {response.status_code} {response.text[:200]}")
        ids.append(response.json()["id"])

    async def status(i: int) -> None:
        response = await client.get(f"{url}/api/v1/executions/{ids[i % len(ids)]}")
        if response.status_code != 200:
            raise RuntimeError(f"get: {response.status_code} {response.text[:200]}")

    await paced(50, RATE, lambda i: start(-1 - i))  # warm-up: connections, code paths
    ids.clear()
    for name, request in (("start", start), ("status", status)):  # unloaded: one request at a time
        latencies = []
        for i in range(UNLOADED):
            sent = trio.current_time()
            await request(-1000 - i if name == "start" else i)
            latencies.append((trio.current_time() - sent) * 1000)
        report.add(f"api.{name}_unloaded_p50", percentile(latencies, 50), "ms",
                   {"requests": UNLOADED, "pacing": "one at a time", "store": "sqlite"}, "sqlite")
    ids.clear()
    for name, request, target in (("start", start, ("p99", "<= 20")), ("status", status, ("p50", "<= 2"))):
        server_cpu, client_cpu = server.cpu_s(), time.process_time()
        latencies, errors = await paced(count, RATE, request)
        parameters = {"requests": count, "rate_per_s": RATE, "errors": errors, "store": "sqlite",
                      "pacing": "open-loop", "max_ms": round(max(latencies), 3),
                      "server_cpu_ms_per_request": round((server.cpu_s() - server_cpu) * 1000 / count, 2),
                      "client_cpu_ms_per_request": round((time.process_time() - client_cpu) * 1000 / count, 2)}
        for p in ("p50", "p99"):
            report.add(f"api.{name}_{p}", percentile(latencies, float(p[1:])), "ms", parameters, "sqlite",
                       target[1] if target[0] == p else None)


def cli(argv: Sequence[str] | None = None) -> int:
    args = arguments(__doc__.splitlines()[0], argv, stores=("sqlite",))
    run(main, "api", args, full_s=300)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
