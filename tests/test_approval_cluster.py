"""Approvals an auditor can trust with several processes on one PostgreSQL database: decisions,
stale digests, four eyes and delegation through a process that does not own the execution;
escalation on the process that took the execution over; and, with real ``runbooks serve``
processes, a decision link used through a survivor while the owner is killed (-9): the
client is told it is queued, the new owner applies it once and escalates on time."""

from __future__ import annotations

import json
import pathlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import trio

from runtime import Forbidden, Runtime, SeparationOfDuties, Settings, StaleDigest, open_runtime
from runtime.store.postgres import PostgresStore
from tests.cluster_nodes import nodes
from tests.conftest import DSN
from tests.fake_service import fake_service
from tests.test_cluster import until

pytestmark = [pytest.mark.postgres]

TTL_MS = 900
CHANGE = {"id": "change", "steps": [{"id": "approve", "type": "human-approval", "config": {
    "approvers": ["sam", "boss", "cto"], "minApprovals": 2, "allowDelegation": True, "separationOfDuties": True}}]}


@asynccontextmanager
async def node(schema: str, instance: str) -> AsyncIterator[Runtime]:
    store = PostgresStore(DSN, pool_max=3, schema=schema)
    settings = Settings(lease_ttl_ms=TTL_MS, instance_id=instance, forward_wait_ms=3000)
    async with open_runtime(store, settings=settings) as rt:
        yield rt


async def test_decisions_and_delegation_through_a_process_that_does_not_own_the_execution(schema: str) -> None:
    async with node(schema, "a") as a, node(schema, "b") as b:
        await a.register_runbook(CHANGE)
        started = await a.start("change", context={"userId": "sam"})
        waiting = await until(a, started.id, lambda e: e.status == "awaiting_approval")
        digest = waiting.steps["approve"].approval_request.digest
        assert a.owns(started.id) and not b.owns(started.id)
        with pytest.raises(StaleDigest) as stale:  # the owner's refusal, its class and digest carried back
            await b.submit_approval(started.id, "approve", approver="cto", decision="approve", digest="e" * 64)
        assert stale.value.current_digest == digest
        with pytest.raises(SeparationOfDuties):
            await b.submit_approval(started.id, "approve", approver="sam", decision="approve")
        handed = await b.delegate_approval(started.id, "approve", delegator="boss", to="dana", reason="on leave")
        assert [d.to for d in handed.steps["approve"].delegations] == ["dana"]
        with pytest.raises(Forbidden, match="delegated their vote"):
            await b.submit_approval(started.id, "approve", approver="boss", decision="approve")
        await b.submit_approval(started.id, "approve", approver="dana", decision="approve", digest=digest)
        final = await b.submit_approval(started.id, "approve", approver="cto", decision="approve", digest=digest)
        assert final.steps["approve"].status == "succeeded"
        actions = [entry.action for entry in await b.audit(started.id)]
        assert actions.count("approval.delegated") == 1 and actions.count("approval.decided") == 2


async def _nothing() -> None:
    pass


async def test_escalation_fires_on_the_process_that_took_the_execution_over(schema: str) -> None:
    doc = {"id": "esc", "steps": [{"id": "approve", "type": "human-approval", "config": {
        "approvers": ["boss"], "timeoutMs": 60_000, "escalation": [{"afterMs": 2_000, "approvers": ["cto"]}]}}]}
    async with node(schema, "node-1") as first:
        await first.register_runbook(doc)
        started = await first.start("esc")
        await until(first, started.id, lambda e: e.status == "awaiting_approval")
        first.cluster.stop = _nothing  # type: ignore[union-attr,method-assign]  # dies: hands nothing over
    async with node(schema, "node-2") as second:
        escalated = await until(second, started.id, lambda e: e.steps["approve"].escalations == 1)
        assert second.owns(started.id) and escalated.steps["approve"].status == "awaiting_approval"
        final = await second.submit_approval(started.id, "approve", approver="cto", decision="approve")
        assert final.steps["approve"].status == "succeeded"
        assert [e.action for e in await second.audit(started.id)].count("approval.escalated") == 1


# ---------------------------------------------------------------------------- real processes

LINK_KEY = "a-signing-key-of-forty-characters-xxxxx"
PUBLIC = "https://runbooks.example"


def linked(hook: str) -> dict[str, Any]:
    return {"id": "release", "steps": [{"id": "approve", "type": "human-approval", "config": {
        "approvers": ["boss"], "minApprovals": 2, "timeoutMs": 120_000, "notify": {"url": hook},
        "escalation": [{"afterMs": 4_000, "approvers": ["cto"]}]}}]}


def path_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


async def execution(client: httpx.AsyncClient, base: str, execution_id: str) -> dict[str, Any]:
    found: dict[str, Any] = (await client.get(f"{base}/api/v1/executions/{execution_id}")).json()
    return found


async def escalated(svc: Any) -> dict[str, Any]:
    with trio.fail_after(20):
        while True:
            found = [r.json for r in svc.requests_to("/hook") if "escalation" in r.json]
            if found:
                return found[0]  # type: ignore[no-any-return]
            await svc.wait_for("/hook", svc.count("/hook") + 1)


@pytest.mark.slow
async def test_a_link_used_while_its_owner_is_killed_is_queued_applied_once_and_escalation_follows(
        schema: str, tmp_path: pathlib.Path) -> None:
    secrets = tmp_path / "secrets.json"
    secrets.write_text(json.dumps({"shared": {"RUNBOOKS_LINK_KEY": LINK_KEY}}))
    async with fake_service() as svc, nodes(schema, svc.url, tmp_path, LEASE_TTL_MS=1500, FORWARD_WAIT_MS=700,
                                            RUNBOOKS_SECRETS_FILE=secrets, PUBLIC_URL=PUBLIC) as group, \
            httpx.AsyncClient(timeout=20) as client:
        a, b = await group.start("node-a"), await group.start("node-b")
        assert (await client.post(f"{a.url}/api/v1/runbooks", json=linked(f"{svc.url}/hook"))).status_code == 201
        started = (await client.post(f"{a.url}/api/v1/executions", json={"runbookId": "release"})).json()["id"]
        with trio.fail_after(10):
            await svc.wait_for("/hook")
        boss_link = path_of(svc.requests_to("/hook")[0].json["approveUrl"])
        a.kill()
        await a.process.wait()

        queued = await client.post(f"{b.url}{boss_link}", data={"decision": "approve"})
        assert queued.status_code == 202 and "Decision accepted" in queued.text  # its owner is dead
        again = await client.post(f"{b.url}{boss_link}", data={"decision": "approve"})
        assert again.status_code == 409 and 'data-reason="used"' in again.text  # the database saw the first
        # taken over, then escalated: cto is told, with a link of their own (the first notification
        # may come again: a was killed before it recorded that it had been sent)
        escalation = await escalated(svc)
        assert (escalation["escalation"], escalation["approvers"]) == (1, ["cto"])
        state = await execution(client, b.url, started)
        assert [x["approver"] for x in state["steps"]["approve"]["approvals"]] == ["boss"]  # applied once
        done = await client.post(f"{b.url}{path_of(escalation['approveUrl'])}", data={"decision": "approve"})
        assert done.status_code == 200 and "You approved" in done.text
        final = await execution(client, b.url, started)
        assert final["status"] == "completed"
        audit = (await client.get(f"{b.url}/api/v1/executions/{started}/audit")).json()["items"]
        decided = [(x["actor"], x["data"].get("via")) for x in audit if x["action"] == "approval.decided"]
        assert decided == [("boss", "link"), ("cto", "link")]
