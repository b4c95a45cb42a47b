"""Helpers of the gateway tests: a runtime with deterministic step types, the app served by
hypercorn on 127.0.0.1:0, and an httpx client on it (real HTTP, so streams really stream).

    async with running_gateway() as gw:
        await gw.register(doc)
        r = await gw.client.post("/api/v1/executions", json={...})

Step types registered on the runtime:

- ``echo``: returns its config, writes an info and a debug log entry and one evidence item;
- ``fail``: fails (not retryable) while ``gw.steps.failing`` is true, then succeeds;
- ``gate``: waits until ``gw.steps.open(name)`` (config ``{"gate": name}``), returns ``{"gate": name}``.
"""

from __future__ import annotations

import pathlib
import random
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import attrs
import httpx
import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.trio import serve
from quart_trio import QuartTrio

from gateway import Config, GatewayMetrics, create_app, create_metrics
from runtime import Runtime, StepContext, StepFailed, open_runtime

MEMORY_ENV = {"STORAGE_BACKEND": "memory"}


@attrs.define
class Steps:
    """State behind the test step types."""

    failing: bool = True
    gates: dict[str, trio.Event] = attrs.Factory(dict)
    waiting: dict[str, int] = attrs.Factory(dict)
    changed: trio.Event = attrs.Factory(trio.Event)

    def gate(self, name: str) -> trio.Event:
        return self.gates.setdefault(name, trio.Event())

    def open(self, name: str) -> None:
        self.gate(name).set()

    async def wait_until_waiting(self, name: str) -> None:
        while not self.waiting.get(name):
            await self.changed.wait()

    def _arrived(self, name: str) -> None:
        self.waiting[name] = self.waiting.get(name, 0) + 1
        self.changed.set()
        self.changed = trio.Event()


def register_step_types(runtime: Runtime, steps: Steps) -> None:
    async def echo(ctx: StepContext) -> Any:
        ctx.log.info("echo ran", step=ctx.step_id)
        ctx.log.debug("echo details", config=dict(ctx.config))
        ctx.add_evidence("echo", {"config": dict(ctx.config)})
        return dict(ctx.config)

    async def fail(ctx: StepContext) -> Any:
        if steps.failing:
            ctx.log.error("fail is failing")
            raise StepFailed("failing on purpose", retryable=False)
        return {"fixed": True}

    async def gate(ctx: StepContext) -> Any:
        name = str(ctx.config.get("gate", "default"))
        steps._arrived(name)
        await steps.gate(name).wait()
        return {"gate": name}

    runtime.register_executor("echo", echo)
    runtime.register_executor("fail", fail)
    runtime.register_executor("gate", gate)


@attrs.define
class RunningGateway:
    url: str
    client: httpx.AsyncClient
    runtime: Runtime
    app: QuartTrio
    steps: Steps
    metrics: GatewayMetrics

    async def register(self, document: Mapping[str, Any], *, headers: Mapping[str, str] | None = None) -> Any:
        response = await self.client.post("/api/v1/runbooks", json=dict(document), headers=dict(headers or {}))
        assert response.status_code == 201, response.text
        return response.json()

    async def start(self, runbook_id: str, input: Any = None, *, headers: Mapping[str, str] | None = None,
                    expect: int = 201, **body: Any) -> Any:
        payload = {"runbookId": runbook_id, "input": {} if input is None else input, **body}
        response = await self.client.post("/api/v1/executions", json=payload, headers=dict(headers or {}))
        assert response.status_code == expect, response.text
        return response.json()

    async def execution(self, execution_id: str, *, headers: Mapping[str, str] | None = None) -> Any:
        response = await self.client.get(f"/api/v1/executions/{execution_id}", headers=dict(headers or {}))
        assert response.status_code == 200, response.text
        return response.json()

    async def wait_for(self, execution_id: str, *statuses: str, headers: Mapping[str, str] | None = None) -> Any:
        """Until the execution is in one of ``statuses`` (5 s at most); then its body over HTTP."""
        await self._until(execution_id, lambda e: e.status.value in statuses)
        return await self.execution(execution_id, headers=headers)

    async def wait_for_step(self, execution_id: str, step_id: str, status: str,
                            headers: Mapping[str, str] | None = None) -> Any:
        await self._until(execution_id, lambda e: e.steps[step_id].status.value == status)
        return await self.execution(execution_id, headers=headers)

    async def _until(self, execution_id: str, predicate: Any) -> None:
        """Wait on the runtime's own live states (no polling) for ``predicate``."""
        with trio.fail_after(5):
            async for execution in self.runtime.watch(execution_id):
                if predicate(execution):
                    return
        raise AssertionError(f"execution {execution_id} finished before the awaited state")


@asynccontextmanager
async def served(app: QuartTrio) -> AsyncIterator[str]:
    """Serve ``app`` with hypercorn on 127.0.0.1:0; yield its URL; stop on exit."""
    hyper = HyperConfig()
    hyper.bind = ["127.0.0.1:0"]
    hyper.accesslog = None
    hyper.graceful_timeout = 0.5
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(partial(serve, app, hyper, shutdown_trigger=stop.wait))
        try:
            yield urls[0]
        finally:
            app.extensions["runbooks"].streams.close_all()
            stop.set()


@asynccontextmanager
async def running_gateway(env: Mapping[str, str] | None = None, *, store: str = "memory",
                          headers: Mapping[str, str] | None = None) -> AsyncIterator[RunningGateway]:
    config = Config.from_env({**MEMORY_ENV, **(env or {})})
    metrics, observer = create_metrics()
    steps = Steps()
    async with open_runtime(store, settings=config.settings(), batch_observer=observer) as runtime:
        register_step_types(runtime, steps)
        app = create_app(runtime, config, metrics=metrics)
        async with served(app) as url, httpx.AsyncClient(base_url=url, timeout=10,
                                                          headers=dict(headers or {})) as client:
            yield RunningGateway(url, client, runtime, app, steps, metrics)


def free_port() -> int:
    """A port free now, for a server started next, drawn below the kernel's ephemeral range: a
    port the kernel handed out (port 0) can be taken again as the source port of an outgoing
    connection before the server binds it (a chaos round with many connections hit that)."""
    low = _ephemeral_low()
    for _ in range(200):
        port = random.randrange(10_000, low)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        found: int = sock.getsockname()[1]
        return found


def _ephemeral_low() -> int:
    try:
        return max(int(pathlib.Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0]), 10_001)
    except (OSError, ValueError, IndexError):
        return 32_768


def wait_until_ready(url: str, process: subprocess.Popen[Any], *, within_s: float = 30,
                     why: Callable[[], str] = lambda: "runbooks serve did not start") -> None:
    """Wait (real time: another process) until ``url/health/ready`` answers 200; fail if the
    process exits first or it takes longer than ``within_s`` (``why()``: what to show then)."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            if httpx.get(f"{url}/health/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert process.poll() is None and time.monotonic() < deadline, why()
        time.sleep(0.05)


def sqlite_available() -> bool:
    """Whether the runtime knows ``sqlite:///`` store URLs yet (runtime/store/sqlite.py)."""
    from runtime.store import open_store_from_url

    try:
        open_store_from_url("sqlite:///probe-never-opened.db")  # builds the store, opens nothing
    except ValueError:
        return False
    return True


def approval_runbook(runbook_id: str = "approve-me", approvers: tuple[str, ...] = ("boss",), **extra: Any) -> dict[str, Any]:
    return {
        "id": runbook_id,
        "steps": [
            {"id": "prepare", "type": "echo", "config": {"value": "${input.value}"}},
            {"id": "approve", "type": "human-approval", "config": {"approvers": list(approvers)}},
            {"id": "deploy", "type": "echo", "config": {"deployed": True}},
        ],
        **extra,
    }


def echo_runbook(runbook_id: str = "echo") -> dict[str, Any]:
    return {"id": runbook_id, "steps": [{"id": "only", "type": "echo", "config": {"n": "${input.n}"}}]}


def gate_runbook(runbook_id: str = "gated", gate: str = "g1") -> dict[str, Any]:
    return {
        "id": runbook_id,
        "steps": [
            {"id": "first", "type": "echo", "config": {"n": 1}},
            {"id": "held", "type": "gate", "config": {"gate": gate}},
            {"id": "last", "type": "echo", "config": {"n": 3}},
        ],
    }


def event_runbook(runbook_id: str = "waits") -> dict[str, Any]:
    return {
        "id": runbook_id,
        "steps": [
            {"id": "wait", "type": "wait-for-event",
             "config": {"eventType": "ticket.closed", "correlationKey": "${input.ticket}"}},
            {"id": "after", "type": "echo", "config": {"got": "${wait.payload}"}},
        ],
    }
