"""A child process for the kill -9 tests: runs two executions on a store until killed.

Usage: python -m tests.recovery_child STORE BASE_URL [SCHEMA]

Execution A: call-service /first-a, then a human approval (parks). Execution B:
call-service /first-b, then call-service /slow (which the parent makes hang). Prints
"ready <A> <B>" once A awaits approval and B's slow call is in flight, then waits to be killed.
"""

from __future__ import annotations

import sys

import trio

from runtime import Settings, open_runtime
from runtime.store.base import Store

LEASE_TTL_MS = 1000  # postgres: a short lease, so the parent takes over soon after the kill

RUNBOOK_A = {"id": "recover-a", "steps": [
    {"id": "first", "type": "call-service", "config": {"url": "/first-a", "method": "POST"}},
    {"id": "approve", "type": "human-approval", "config": {"approvers": ["boss"], "timeoutMs": 7_200_000}},
    {"id": "deploy", "type": "call-service", "config": {"url": "/deploy", "idempotencyKey": "deploy-{executionId}"}},
]}
RUNBOOK_B = {"id": "recover-b", "steps": [
    {"id": "first", "type": "call-service", "config": {"url": "/first-b", "method": "POST"}},
    {"id": "slow", "type": "call-service", "config": {"url": "/slow", "timeoutMs": 120_000}},
]}


def make_store(spec: str, schema: str | None) -> Store | str:
    if schema:
        from runtime.store.postgres import PostgresStore

        return PostgresStore(spec, pool_max=2, schema=schema)
    return spec


async def main(spec: str, base_url: str, schema: str | None) -> None:
    async with open_runtime(make_store(spec, schema), settings=Settings(call_service_base_url=base_url, lease_ttl_ms=LEASE_TTL_MS)) as rt:
        await rt.register_runbook(RUNBOOK_A)
        await rt.register_runbook(RUNBOOK_B)
        a = await rt.start("recover-a", {"n": 1}, {"userId": "child"})
        b = await rt.start("recover-b", {"n": 2}, {"userId": "child"})
        async for execution in rt.watch(a.id):
            if execution.status == "awaiting_approval":
                break
        async for execution in rt.watch(b.id):
            if execution.steps["slow"].status == "running":
                break
        await trio.sleep(0.2)  # the slow request reaches the service
        print(f"ready {a.id} {b.id}", flush=True)
        await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
