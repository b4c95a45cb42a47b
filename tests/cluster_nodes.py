"""Real ``runbooks serve`` processes sharing one PostgreSQL schema, for the multi-process tests.

``Nodes`` starts each process (``python -m gateway serve``) with its own instance id and port,
waits until it answers ``/health/ready``, keeps its output in a log file, and stops them all
at the end (SIGKILL as a last resort). A node can be killed (``kill -9``), stalled
(``SIGSTOP``/``SIGCONT``) and started again under the same id.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import httpx
import trio

from tests.conftest import DSN
from tests.gateway_fixtures import free_port

ROOT = pathlib.Path(__file__).resolve().parent.parent
START_S = 30


@attrs.define
class Node:
    instance: str
    port: int
    process: trio.Process
    log: pathlib.Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)

    def stall(self) -> None:
        self.process.send_signal(signal.SIGSTOP)

    def go_on(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """SIGTERM: a graceful stop (it hands its executions over)."""
        self.process.send_signal(signal.SIGTERM)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@attrs.define
class Nodes:
    schema: str
    base_url: str
    directory: pathlib.Path
    settings: dict[str, str]
    running: list[Node] = attrs.Factory(list)

    async def start(self, instance: str, port: int | None = None, dsn: str = DSN, wait: bool = True) -> Node:
        """Start a process named ``instance`` reaching PostgreSQL at ``dsn`` (through a proxy, say)."""
        port = port or free_port()
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("RUNBOOKS_", "DB_")) and key not in ("PORT", "HOST", "DATABASE_URL")}
        env |= {"STORAGE_BACKEND": "postgres", "DATABASE_URL": f"{dsn}?schema={self.schema}",
                "RUNBOOKS_INSTANCE_ID": instance, "PORT": str(port), "CALL_SERVICE_BASE_URL": self.base_url,
                "PYTHONUNBUFFERED": "1", **self.settings}
        log = self.directory / f"{instance}-{len(self.running)}.log"
        with log.open("wb") as out:
            process = await trio.lowlevel.open_process([sys.executable, "-m", "gateway", "serve"], cwd=ROOT,
                                                       env=env, stdout=out, stderr=subprocess.STDOUT)
        node = Node(instance, port, process, log)
        self.running.append(node)
        if wait:
            await ready(node)
        return node

    async def stop_all(self) -> None:
        with trio.CancelScope(shield=True):
            for node in self.running:
                if node.process.returncode is None:
                    node.go_on()
                    node.process.send_signal(signal.SIGTERM)
            with trio.move_on_after(15):
                for node in self.running:
                    await node.process.wait()
            for node in self.running:
                if node.process.returncode is None:
                    node.kill()
                    await node.process.wait()


async def ready(node: Node) -> None:
    async with httpx.AsyncClient(timeout=2) as client:
        with trio.fail_after(START_S):
            while True:
                if node.process.returncode is not None:
                    raise AssertionError(f"{node.instance} exited at start:\n{node.output()}")
                try:
                    if (await client.get(f"{node.url}/health/ready")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await trio.sleep(0.05)


@asynccontextmanager
async def nodes(schema: str, base_url: str, directory: pathlib.Path, **settings: Any) -> AsyncIterator[Nodes]:
    group = Nodes(schema, base_url, directory, {key: str(value) for key, value in settings.items()})
    try:
        yield group
    finally:
        await group.stop_all()
