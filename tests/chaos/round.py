"""One chaos round: a plan drawn from a seed, run against three processes, then checked.

``run_round`` prints the seed and the plan first (the same seed draws the same plan), then the
faults as they were applied, and at the end the checker's report. The processes run with short
leases (``SETTINGS``) so that a fault matters within seconds.
"""

from __future__ import annotations

import pathlib
from collections import Counter
from collections.abc import Callable
from contextlib import AsyncExitStack

import attrs
import httpx
import trio

from tests.chaos.checker import Bounds, Violation, check, report
from tests.chaos.cluster import Cluster, Slot
from tests.chaos.faults import nemesis
from tests.chaos.final import FINISHED, CommandRead, Read, Snapshot, read_database
from tests.chaos.history import History
from tests.chaos.plan import FAULT_KINDS, SLOTS, FaultKind, Plan, Size, draw
from tests.chaos.service import counting_service
from tests.chaos.workload import RUNBOOKS, USER, Client, cancel_strays, run_flow
from tests.cluster_nodes import nodes
from tests.tcp_proxy import tcp_proxy

TTL_MS = 1500
# A small pool each: the test server is shared, and a pool that runs short is a fault worth having.
SETTINGS = {"LEASE_TTL_MS": TTL_MS, "FORWARD_WAIT_MS": 700, "DB_POOL_MAX": 6}
SETTLE_S = 10.0  # after the flows: every execution should end (and command be applied) within this
AGREE_S = 5.0  # after that: every process should answer the final state within this


@attrs.frozen
class Outcome:
    plan: Plan
    violations: list[Violation]
    history: History
    final: Snapshot
    logs: list[pathlib.Path]


async def run_round(seed: int, size: Size, dsn: str, schema: str, directory: pathlib.Path,
                    say: Callable[[str], None] = print, kinds: tuple[FaultKind, ...] = FAULT_KINDS) -> Outcome:
    plan = draw(seed, size, TTL_MS / 1000, kinds)
    say(plan.describe())
    history = History()
    applied: list[str] = []
    timings: list[str] = []
    began = trio.current_time()

    def lap(what: str) -> None:
        timings.append(f"{what} {trio.current_time() - began:.1f}s")
    async with AsyncExitStack() as stack:
        service = await stack.enter_async_context(counting_service())
        group = await stack.enter_async_context(nodes(schema, service.url, directory, **SETTINGS))
        slots = [Slot(n, await stack.enter_async_context(tcp_proxy("127.0.0.1", _port(dsn)))) for n in range(SLOTS)]
        http = await stack.enter_async_context(httpx.AsyncClient(limits=httpx.Limits(max_connections=60)))
        cluster = Cluster(group, dsn, slots, history)
        async with trio.open_nursery() as starting:  # the schema's migrations take a lock: one runs them
            for slot in slots:
                starting.start_soon(cluster.launch, slot, f"p{slot.index}")
        for doc in RUNBOOKS:
            answer = await http.post(f"{slots[0].node.url}/api/v1/runbooks", json=doc, headers=USER)  # type: ignore[union-attr]
            assert answer.status_code == 201, answer.text
        lap("ready")
        cluster.origin = service.origin = trio.current_time()
        client = Client(cluster, http, seed)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(nemesis, cluster, plan, applied)
            with trio.move_on_at(cluster.origin + size.span_s + size.tail_s):  # flows stuck on a defect end here
                async with trio.open_nursery() as flows:
                    for flow in plan.flows:
                        flows.start_soon(run_flow, client, flow, cluster.origin, size.tail_s)
        lap("workload")
        for line in applied:
            say(f"  {line}")
        await cancel_strays(client, await trio.to_thread.run_sync(read_database, dsn, schema))
        await _settle(dsn, schema)
        lap("settled")
        final = await trio.to_thread.run_sync(read_database, dsn, schema)
        final.reads = await _agree(client, final)
        final.command_reads = await _command_reads(client, history)
        lap("read")
        final.calls = list(service.calls)
        history.exits = cluster.unexpected_exits()
        logs = cluster.log_paths()
    violations = check(history, final, Bounds())
    redelivered = sum(log.read_text(errors="replace").count("waited past their bound") for log in logs
                      if log.exists())
    say(f"seed {seed}: {_told(history)}; {len(final.executions)} executions, {len(final.calls)} calls; "
        f"{' '.join(timings)}" + (f"; commands delivered again by their owner's sweep: {redelivered}"
                                  if redelivered else ""))
    say(f"seed {seed}: {report(violations)}")
    return Outcome(plan, violations, history, final, logs)


def _told(history: History) -> str:
    """``kind statusxcount`` for every request, e.g. ``approve 200x3 202x1``."""
    counts = Counter((r.kind, str(r.status) if r.status is not None else "none") for r in history.requests)
    kinds = sorted({kind for kind, _ in counts})
    return ", ".join(kind + " " + " ".join(f"{status}x{n}" for (k, status), n in sorted(counts.items()) if k == kind)
                     for kind in kinds)


def _port(dsn: str) -> int:
    import urllib.parse
    return urllib.parse.urlsplit(dsn).port or 5432


async def _settle(dsn: str, schema: str) -> None:
    """Wait (bounded) until the database shows every execution finished."""
    with trio.move_on_after(SETTLE_S):
        while True:
            final = await trio.to_thread.run_sync(read_database, dsn, schema)
            if all(e.finished for e in final.executions.values()) and all(
                    c.applied_after_s is not None for c in final.commands):
                return
            await trio.sleep(0.5)


async def _agree(client: Client, final: Snapshot) -> list[Read]:
    """What each process answers for each execution, read until it agrees with the database or
    ``AGREE_S`` passed."""
    reads: list[Read] = []
    deadline = trio.current_time() + AGREE_S
    for slot in client.cluster.slots:
        if slot.node is None or slot.node.process.returncode is not None:  # gone: reported as an exit
            continue
        for execution in final.executions.values():
            while True:
                found = await client.read(slot.index, execution.id)
                seen = found["status"] if found else None
                if seen == execution.status or trio.current_time() > deadline:
                    break
                await trio.sleep(0.1)
            reads.append(Read(slot.instance, execution.id, seen))
    return reads


async def _command_reads(client: Client, history: History) -> list[CommandRead]:
    """What each live process answers, at the end, for each command a client was told was queued."""
    reads: list[CommandRead] = []
    for request in history.requests:
        if request.status != 202 or not isinstance(request.body, dict) or "commandId" not in request.body:
            continue
        for slot in client.cluster.slots:
            if slot.node is None or slot.node.process.returncode is not None:
                continue
            found = await client.get(slot.index, f"/api/v1/executions/{request.execution}/commands/"
                                                 f"{request.body['commandId']}")
            reads.append(CommandRead(slot.instance, request.body["commandId"],
                                     found.get("status") if isinstance(found, dict) else None))
    return reads


__all__ = ["FINISHED", "Outcome", "run_round"]
