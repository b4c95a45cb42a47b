"""``runbooks serve --workers N`` on PostgreSQL: starts/s, steps/s and REST p99 for each N.

For each N (default 1 and 2): a fresh schema, ``python -m gateway serve --workers N`` on a
free port (for N = 1 the plain single process), the runbooks registered through the API,
then, all over loopback from this process:

- ``starts/s``: ``CALLERS`` clients start executions of a one-step runbook back to back
  for a fixed time (a start answers once the execution is committed);
- ``steps/s``: ``CHAINS`` executions of a 10-step chain of conditional steps started by
  ``CALLERS`` clients; the clock stops when the database shows every one completed (read
  from the schema directly, every 50 ms);
- ``REST start p50/p99``: starts of the same one-step runbook at a fixed rate, open loop
  (request i is planned at t0 + i/rate; its latency counts from that plan). The rate is
  ``--rate``, else half the starts/s of the first N measured, the same for every N.

The load generator runs on the same machine and takes CPU from the servers: the figures
are what one machine serving and loading itself gives, not a ceiling.

    python -m benchmarks.workers [--quick] [--workers 1 --workers 2]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence

import httpx
import trio

from benchmarks.api import free_port, paced
from benchmarks.common import DSN, ROOT, Report, _drop_schema, percentile, postgres_available, run

CALLERS = 32
RATE_SHARE = 0.5  # the paced rate: this share of the starts/s of the first N measured
HEADERS = {"X-User-Id": "bench", "X-Tenant-Id": "bench"}
ONE = {"id": "one", "steps": [{"id": "s0", "type": "conditional",
                               "config": {"condition": {"field": "input.n", "operator": "exists"}}}]}
CHAIN = {"id": "chain", "steps": [
    {"id": f"s{i}", "type": "conditional", "config": {"condition": {"field": "input.n", "operator": "exists"}},
     **({"dependsOn": [f"s{i - 1}"]} if i else {})} for i in range(10)]}


class Fleet:
    """``python -m gateway serve --workers N`` on a schema of its own, its log in a temp file."""

    def __init__(self, directory: str, workers: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.schema = f"bench_{uuid.uuid4().hex[:12]}"
        self.log_path = os.path.join(directory, f"serve-{workers}.log")
        env = {k: v for k, v in os.environ.items() if k not in ("RUNBOOKS_DIR", "RUNBOOKS_TOKENS_FILE")}
        env |= {"STORAGE_BACKEND": "postgres", "DATABASE_URL": f"{DSN}?schema={self.schema}",
                "PORT": str(self.port), "HOST": "127.0.0.1", "RUNBOOKS_INSTANCE_ID": f"bench-{self.port}"}
        self._log = open(self.log_path, "wb")  # closed in stop()
        self.process = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--workers", str(workers)],
                                        cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=self._log,
                                        stderr=subprocess.STDOUT)

    async def wait_ready(self, client: httpx.AsyncClient, workers: int, timeout_s: float = 60.0) -> None:
        """Until ``/health/ready`` answers from every worker (by ``X-Runbooks-Instance``)."""
        seen: set[str] = set()
        with trio.move_on_after(timeout_s):
            while self.process.poll() is None:
                try:
                    async with httpx.AsyncClient() as fresh:  # a new connection each time: any worker
                        answer = await fresh.get(f"{self.url}/health/ready")
                    if answer.status_code == 200:
                        seen.add(answer.headers.get("X-Runbooks-Instance", ""))
                        if len(seen) >= workers:
                            return
                except httpx.TransportError:
                    pass
                await trio.sleep(0.1)
        raise RuntimeError(f"the workers did not become ready; the log:\n{self.log_tail()}")

    def cpu_s(self) -> float:
        """CPU time (user + system) of the supervisor and its workers so far, from /proc."""
        pids = [self.process.pid] + [int(entry.name) for entry in pathlib.Path("/proc").iterdir()
                                     if entry.name.isdigit() and _parent(entry) == self.process.pid]
        return sum(_cpu_s(pid) for pid in pids)

    def log_tail(self) -> str:
        with open(self.log_path, "rb") as log:
            return log.read()[-3000:].decode(errors="replace")

    def completed(self, runbook_id: str) -> int:
        import psycopg

        with psycopg.connect(DSN, autocommit=True) as conn:
            row = conn.execute(f'SELECT count(*) FROM "{self.schema}".executions '
                               "WHERE runbook_id = %s AND status = 'completed'", (runbook_id,)).fetchone()
        return int(row[0]) if row else 0

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self._log.close()
        _drop_schema(self.schema)


def _stat(pid: int | str) -> list[str]:
    try:
        return pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return []


def _parent(entry: pathlib.Path) -> int | None:
    fields = _stat(entry.name)
    return int(fields[1]) if fields else None


def _cpu_s(pid: int) -> float:
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK") if fields else 0.0


async def measure(report: Report, fleet: Fleet, client: httpx.AsyncClient, workers: int, quick: bool,
                  rate: list[float]) -> None:
    """``rate``: the paced rate for the p50/p99 (set from the first fleet's starts/s when empty)."""
    parameters = {"workers": workers, "callers": CALLERS, "store": "postgres"}
    for document in (ONE, CHAIN):
        answer = await client.post(f"{fleet.url}/api/v1/runbooks", json=document)
        if answer.status_code != 201:
            raise RuntimeError(f"registering {document['id']}: {answer.status_code} {answer.text}")

    async def start(runbook_id: str, n: int) -> None:
        answer = await client.post(f"{fleet.url}/api/v1/executions",
                                   json={"runbookId": runbook_id, "input": {"n": n}})
        if answer.status_code != 201:
            raise RuntimeError(f"start: {answer.status_code} {answer.text[:200]}")

    counter = iter(range(10**9))
    await _closed_loop(50, lambda: start("one", next(counter)))  # warm-up: connections, code paths

    seconds = 4.0 if quick else 15.0
    started, cpu = time.perf_counter(), fleet.cpu_s()
    count = await _for_seconds(seconds, lambda: start("one", next(counter)))
    elapsed = time.perf_counter() - started
    await trio.sleep(0.5)  # (the last executions' steps, whose CPU counts too)
    if not rate:  # below what one process serves here, so that every N meets the same load
        rate.append(max(5.0, round(count / elapsed * RATE_SHARE)))
    report.add("REST starts/s", count / elapsed, "1/s",
               {**parameters, "server_cpu_ms_per_start": round((fleet.cpu_s() - cpu) * 1000 / count, 2)}, "postgres")

    chains = 100 if quick else 400
    started, cpu = time.perf_counter(), fleet.cpu_s()
    await _closed_loop(chains, lambda: start("chain", next(counter)))
    with trio.fail_after(120):
        await _until_completed(fleet, "chain", chains)
    report.add("steps/s (10-step chains started over REST)", chains * 10 / (time.perf_counter() - started), "1/s",
               {**parameters, "chains": chains,
                "server_cpu_ms_per_step": round((fleet.cpu_s() - cpu) * 1000 / (chains * 10), 2)}, "postgres")

    requests = int(rate[0] * (5 if quick else 20))
    latencies, errors = await paced(requests, rate[0], lambda i: start("one", next(counter)))
    paced_parameters = {"workers": workers, "requests": requests, "rate_per_s": rate[0], "errors": errors,
                        "pacing": "open-loop", "store": "postgres"}
    for p in (50, 99):
        report.add(f"REST start p{p} at {rate[0]:g}/s", percentile(latencies, p), "ms", paced_parameters, "postgres")


async def _until_completed(fleet: Fleet, runbook_id: str, count: int) -> None:
    """Another process's progress: read the database every 50 ms."""
    done = 0
    while done < count:
        done = await trio.to_thread.run_sync(fleet.completed, runbook_id)
        await trio.sleep(0.05 if done < count else 0)


async def _retried(request: object) -> None:
    """A request; sent again once if the server closed an idle kept-alive connection under it."""
    try:
        await request()  # type: ignore[operator]
    except httpx.RemoteProtocolError:
        await request()  # type: ignore[operator]


async def _closed_loop(count: int, request: object) -> None:
    remaining = iter(range(count))

    async def caller() -> None:
        for _ in remaining:
            await _retried(request)

    async with trio.open_nursery() as callers:
        for _ in range(CALLERS):
            callers.start_soon(caller)


async def _for_seconds(seconds: float, request: object) -> int:
    done = [0]
    deadline = trio.current_time() + seconds

    async def caller() -> None:
        while trio.current_time() < deadline:
            await _retried(request)
            done[0] += 1

    async with trio.open_nursery() as callers:
        for _ in range(CALLERS):
            callers.start_soon(caller)
    return done[0]


async def main(report: Report, args: argparse.Namespace) -> None:
    if not postgres_available():
        report.note("postgres: not reachable, nothing measured")
        return
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    with tempfile.TemporaryDirectory(prefix="runbooks-workers-bench-") as directory:
        rate = [args.rate] if args.rate else []
        for workers in args.workers:
            fleet = Fleet(directory, workers)
            try:
                async with httpx.AsyncClient(headers=HEADERS, limits=limits, timeout=30.0) as client:
                    await fleet.wait_ready(client, workers)
                    await measure(report, fleet, client, workers, args.quick, rate)
            except BaseException:
                report.note(f"--workers {workers} failed; the end of its log:\n{fleet.log_tail()}")
                raise
            finally:
                await trio.to_thread.run_sync(fleet.stop)


def cli(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts, under a minute")
    parser.add_argument("--workers", action="append", type=int, help="N to measure (repeatable; default 1 and 2)")
    parser.add_argument("--rate", type=float, help="paced starts per second for p50/p99 (default: see above)")
    args = parser.parse_args(argv)
    args.workers = args.workers or [1, 2]
    run(main, "workers", args, quick_s=180.0, full_s=900.0)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
