"""``runbooks serve --workers N``: N gateway processes on one port under one supervisor.

Each worker is a whole ``runbooks serve`` (runtime and gateway) and a member of the cluster
like any other process on the database, with its own instance id ``<id>-w<k>`` (``<id>``:
RUNBOOKS_INSTANCE_ID, else host name and port). Only the PostgreSQL store is shared by
several processes, so N > 1 on another store is refused at once.

The supervisor (the parent) never serves a request. It

1. checks the configuration once and reserves the port: it binds (never listens on) a socket
   with SO_REUSEPORT, so a port another program holds is refused once, up front;
2. starts the workers; each binds the same port with SO_REUSEPORT, so the kernel spreads
   new connections over them, and writes one byte to a pipe once it serves;
3. supervises them: a worker that exits before it serves stops them all (the exit status is
   the worker's: 2 for a bad configuration, 1 when the store cannot be opened); one that dies
   later is started again under the same instance id, so it takes its executions back at
   once, at most ``RESTARTS_PER_MINUTE`` times a minute, after which all stop with status 1;
4. on SIGINT/SIGTERM sends SIGTERM to every worker (each finishes its in-flight requests and
   hands its leases over) and waits; a second signal is passed on as well (the workers then
   stop at once); a worker still alive ``STOP_GRACE_S`` after the first signal is killed.

Workers run in a session of their own, so a Ctrl-C at a terminal reaches them once, through
the supervisor; each also asks the kernel (Linux) to send it SIGTERM should the supervisor
die, so no worker outlives it.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from typing import Any

import attrs
import trio

from gateway.config import Config, ConfigError

logger = logging.getLogger("runbooks.gateway")

MAX_WORKERS = 256
RESTARTS_PER_MINUTE = 5
STOP_GRACE_S = 30.0  # beyond the workers' own graceful timeouts (requests, then the runtime)
PR_SET_PDEATHSIG = 1  # prctl(2)


def worker_count(text: str | None) -> int:
    """The value of ``--workers`` (default 1), or a ``ConfigError`` naming the flag."""
    if text is None:
        return 1
    try:
        count = int(text)
    except ValueError:
        count = 0
    if not 1 <= count <= MAX_WORKERS:
        raise ConfigError(f"--workers: must be an integer between 1 and {MAX_WORKERS}, got {text!r}")
    return count


def check_can_share(config: Config, count: int) -> None:
    """Several workers need a store that several processes share: PostgreSQL."""
    if count > 1 and config.storage_backend != "postgres":
        raise ConfigError(
            f"--workers {count}: several worker processes share one PostgreSQL database; the "
            f"{config.storage_backend} store belongs to one process (use a postgresql:// store, or --workers 1)")


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` with SO_REUSEPORT (not listening yet)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host.strip("[]"), port))
    except BaseException:
        sock.close()
        raise
    return sock


# ------------------------------------------------------------------ the worker's side

@attrs.frozen
class WorkerLink:
    """What a worker knows of its supervisor: its pid and the pipe to say "serving" on."""

    parent_pid: int
    ready_fd: int

    @classmethod
    def parse(cls, text: str) -> WorkerLink:
        parent, _, fd = text.partition(":")
        try:
            return cls(int(parent), int(fd))
        except ValueError:
            raise ConfigError(f"--worker-link: expected PID:FD, got {text!r}") from None

    def follow_parent(self) -> None:
        """Be sent SIGTERM when the supervisor dies; stop at once if it already has."""
        if sys.platform.startswith("linux"):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != self.parent_pid:
            raise ConfigError("--worker-link: the supervising process has gone")

    def ready(self) -> None:
        os.write(self.ready_fd, b"1")
        os.close(self.ready_fd)


# ------------------------------------------------------------------ the supervisor

@attrs.define
class Worker:
    number: int
    instance_id: str
    process: subprocess.Popen[bytes] | None = None
    restarts: list[float] = attrs.Factory(list)

    def name(self) -> str:
        pid = f", pid {self.process.pid}" if self.process is not None else ""
        return f"worker {self.number} ({self.instance_id}{pid})"


class Supervisor:
    """Starts, watches and stops the workers; ``run`` returns the exit status."""

    def __init__(self, count: int, env: Mapping[str, str], base_id: str, url: str) -> None:
        self.env = dict(env)
        self.url = url
        self.workers = [Worker(k, f"{base_id}-w{k}") for k in range(1, count + 1)]
        self.status = 0
        self.stopping = False
        self.serving: set[int] = set()
        self._nursery: trio.Nursery | None = None

    async def run(self) -> int:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as outer:  # the signals and the killer, cancelled at the end
                self._nursery = outer
                outer.start_soon(self._signals, signals)
                async with trio.open_nursery() as nursery:
                    for worker in self.workers:
                        nursery.start_soon(self._keep, worker)
                outer.cancel_scope.cancel()
        return self.status

    async def _signals(self, signals: Any) -> None:
        async for signum in signals:
            name = signal.Signals(signum).name
            if not self.stopping:
                logger.info("%s: stopping %d workers", name, len(self.workers))
                self._stop()
            else:
                logger.warning("%s again: the workers stop now", name)
                self._signal_all(signal.SIGTERM)

    async def _keep(self, worker: Worker) -> None:
        """Run one worker until the fleet stops; start it again when it dies while serving."""
        while not self.stopping:
            status, served = await self._run_once(worker)
            self.serving.discard(worker.number)
            if self.stopping:
                return
            if not served:
                logger.error("%s exited with status %s before it served: stopping all workers",
                             worker.name(), status)
                self._fail(status if status > 0 else 1)
                return
            now = time.monotonic()
            worker.restarts = [at for at in worker.restarts if now - at < 60] + [now]
            if len(worker.restarts) > RESTARTS_PER_MINUTE:
                logger.error("%s died %d times within a minute: stopping all workers", worker.name(),
                             len(worker.restarts))
                self._fail(1)
                return
            logger.warning("%s died (status %s): starting it again under the same instance id",
                           worker.name(), status)

    async def _run_once(self, worker: Worker) -> tuple[int, bool]:
        read_end, write_end = os.pipe()
        env = {**self.env, "RUNBOOKS_INSTANCE_ID": worker.instance_id}
        argv = [sys.executable, "-m", "gateway", "serve", "--worker-link", f"{os.getpid()}:{write_end}"]
        try:
            worker.process = _start(argv, env, write_end)
        finally:
            os.close(write_end)
        served = False
        async with trio.lowlevel.FdStream(read_end) as pipe:
            if await pipe.receive_some(1):
                served = True
                self._serving(worker)
        return await _exit_status(worker.process), served

    def _serving(self, worker: Worker) -> None:
        logger.info("%s serving", worker.name())
        self.serving.add(worker.number)
        if self.stopping:  # it started while the others were being stopped
            self._signal(worker, signal.SIGTERM)
        elif len(self.serving) == len(self.workers):
            logger.info("%d workers serving on %s", len(self.workers), self.url)

    def _fail(self, status: int) -> None:
        if self.status == 0:
            self.status = status
        self._stop()

    def _stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        self._signal_all(signal.SIGTERM)
        assert self._nursery is not None  # set before any worker starts
        self._nursery.start_soon(self._kill_after_grace)

    async def _kill_after_grace(self) -> None:
        await trio.sleep(STOP_GRACE_S)
        for worker in self.workers:
            if worker.process is not None and worker.process.poll() is None:
                logger.error("%s still running %g s after the stop: killing it", worker.name(), STOP_GRACE_S)
                self._signal(worker, signal.SIGKILL)
                self.status = self.status or 1

    def _signal_all(self, signum: int) -> None:
        for worker in self.workers:
            self._signal(worker, signum)

    @staticmethod
    def _signal(worker: Worker, signum: int) -> None:
        if worker.process is not None and worker.process.poll() is None:
            worker.process.send_signal(signum)


def _start(argv: list[str], env: Mapping[str, str], ready_fd: int) -> subprocess.Popen[bytes]:
    """Start a worker from the calling thread, the Trio thread, which lives as long as the
    supervisor: the worker's parent-death signal follows the thread that started it, and
    ``trio.lowlevel.open_process`` would start it from a worker thread that ends when idle."""
    return subprocess.Popen(argv, env=env, pass_fds=(ready_fd,), start_new_session=True)


async def _exit_status(process: subprocess.Popen[bytes]) -> int:
    """Wait for ``process`` to end without blocking the run: its pidfd on Linux, else a thread."""
    if hasattr(os, "pidfd_open"):
        pidfd = os.pidfd_open(process.pid)
        try:
            await trio.lowlevel.wait_readable(pidfd)
        finally:
            os.close(pidfd)
        return process.wait()
    return await trio.to_thread.run_sync(process.wait, abandon_on_cancel=True)


def serve_workers(config: Config, count: int, env: Mapping[str, str]) -> int:
    """Reserve the port, then run ``count`` workers until a signal; the exit status.

    ``env``: the environment every worker starts with (flags already turned into variables).
    """
    check_can_share(config, count)
    config.check_can_serve()
    where = f"{config.host}:{config.port}"
    try:
        reserved = reuse_port_socket(config.host, config.port)
    except OSError as exc:
        raise ConfigError(f"cannot serve on {where}: {exc.strerror or exc}") from None
    with reserved:
        port = reserved.getsockname()[1]
        base_id = env.get("RUNBOOKS_INSTANCE_ID") or f"{socket.gethostname()}:{port}"
        host = f"[{config.host}]" if ":" in config.host and not config.host.startswith("[") else config.host
        supervisor = Supervisor(count, {**env, "PORT": str(port)}, base_id, f"http://{host}:{port}")
        return trio.run(supervisor.run)
