"""Tenant quotas: a cap on unfinished executions and a start rate, refused with QuotaExceeded / 429."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio

from runtime import QuotaExceeded, Runtime, ValidationError, open_runtime

HOLD = {"id": "hold", "steps": [{"id": "ok", "type": "human-approval", "config": {"approvers": ["boss"]}}]}
QUEUE = {**HOLD, "id": "queue", "concurrency": {"key": "one", "limit": 1}}
T1, T2 = {"tenantId": "t1"}, {"tenantId": "t2"}


async def start(rt: Runtime, context: dict[str, Any], n: int, runbook: str = "hold") -> str:
    return (await rt.start(runbook, {"n": n}, context)).id


async def test_a_tenant_at_its_cap_of_unfinished_executions_is_refused_until_one_ends(autojump_clock: Any) -> None:
    async with open_runtime("memory", quotas={"t1": {"maxActive": 2}}) as rt:
        await rt.register_runbook(HOLD)
        await rt.register_runbook(QUEUE)
        first = await start(rt, T1, 1)
        await start(rt, T1, 2, "queue")  # a queued execution counts
        with pytest.raises(QuotaExceeded) as refused:
            await start(rt, T1, 3)
        assert refused.value.reason == "maxActive" and refused.value.tenant_id == "t1"
        assert refused.value.retry_after_s is not None and "2 unfinished executions" in str(refused.value)
        assert len((await rt.list_executions(tenant_id="t1")).items) == 2  # nothing of it was written
        await start(rt, T2, 1)  # another tenant: no quota
        await rt.cancel(first, reason="done")
        await start(rt, T1, 3)


async def test_a_tenant_over_its_start_rate_is_told_when_to_come_back(autojump_clock: Any) -> None:
    async with open_runtime("memory", quotas={"*": {"startsPerSecond": 2}}) as rt:
        await rt.register_runbook(HOLD)
        await start(rt, T1, 1)
        await start(rt, T1, 2)  # a burst of one second's worth
        with pytest.raises(QuotaExceeded) as refused:
            await start(rt, T1, 3)
        assert refused.value.reason == "startsPerSecond" and refused.value.retry_after_s == pytest.approx(0.5)
        await start(rt, T2, 1)  # "*" is each tenant's own bucket
        await trio.sleep(0.5)
        await start(rt, T1, 3)
        with pytest.raises(QuotaExceeded):
            await start(rt, T1, 4)
        await trio.sleep(10)  # the bucket fills up to its burst, no more
        await start(rt, T1, 4)
        await start(rt, T1, 5)
        with pytest.raises(QuotaExceeded):
            await start(rt, T1, 6)


async def test_the_same_start_again_answers_the_first_without_taking_a_token(autojump_clock: Any) -> None:
    async with open_runtime("memory", quotas={"t1": {"startsPerSecond": 1}}) as rt:
        await rt.register_runbook(HOLD)
        first = await start(rt, T1, 1)
        assert await start(rt, T1, 1) == first  # deduplicated: nothing new started


async def test_quotas_are_checked_with_every_problem() -> None:
    with pytest.raises(ValidationError) as refused:
        async with open_runtime("memory", quotas={"t1": {"maxActive": -1, "startsPerSecond": 0, "limit": 3}}):
            pass
    assert {p.path for p in refused.value.problems} == {"quotas.t1.maxActive", "quotas.t1.startsPerSecond",
                                                        "quotas.t1.limit"}


async def test_the_quotas_file_is_read_by_an_embedded_runtime(tmp_path: Any, monkeypatch: Any,
                                                              autojump_clock: Any) -> None:
    path = tmp_path / "quotas.yaml"
    path.write_text("t1:\n  maxActive: 1\n")
    monkeypatch.setenv("RUNBOOKS_QUOTAS_FILE", str(path))
    async with open_runtime("memory") as rt:
        await rt.register_runbook(HOLD)
        await start(rt, T1, 1)
        with pytest.raises(QuotaExceeded):
            await start(rt, T1, 2)


async def test_a_start_over_quota_is_429_with_retry_after_and_counted(tmp_path: Any) -> None:
    from tests.gateway_fixtures import running_gateway

    path = tmp_path / "quotas.json"
    path.write_text(json.dumps({"tenant-a": {"startsPerSecond": 0.1}}))
    headers = {"X-Tenant-Id": "tenant-a", "X-User-Id": "alice"}
    async with running_gateway({"RUNBOOKS_QUOTAS_FILE": str(path)}) as gw:
        await gw.register(HOLD, headers=headers)
        await gw.start("hold", {"n": 1}, headers=headers)
        response = await gw.client.post("/api/v1/executions", headers=headers,
                                        json={"runbookId": "hold", "input": {"n": 2}})
        assert response.status_code == 429 and response.headers["content-type"] == "application/problem+json"
        assert 9 <= int(response.headers["Retry-After"]) <= 10
        assert "startsPerSecond" in response.json()["detail"]
        metrics = (await gw.client.get("/metrics")).text
        assert 'runbooks_quota_refusals_total{reason="startsPerSecond",tenant="tenant-a"} 1.0' in metrics


@pytest.mark.postgres
async def test_processes_sharing_a_database_share_each_tenants_quota(schema: str) -> None:
    from tests.test_cluster import node

    async with node(schema, "a", quotas={"t1": {"maxActive": 3}}) as a, \
            node(schema, "b", quotas={"t1": {"maxActive": 3}}) as b:
        await a.register_runbook(HOLD)
        outcomes: list[str] = []

        async def attempt(rt: Runtime, n: int) -> None:
            try:
                await start(rt, T1, n)
                outcomes.append("started")
            except QuotaExceeded:
                outcomes.append("refused")

        async with trio.open_nursery() as nursery:
            for n in range(8):
                nursery.start_soon(attempt, (a, b)[n % 2], n)
        assert sorted(outcomes) == ["refused"] * 5 + ["started"] * 3


def test_a_bad_quotas_file_stops_the_server_naming_each_problem(tmp_path: Any) -> None:
    from gateway.config import Config, ConfigError

    path = tmp_path / "quotas.yaml"
    path.write_text("t1: {maxActive: many}\nt2: {startsPerSecond: -1}\n")
    with pytest.raises(ConfigError) as refused:
        Config.from_env({"STORAGE_BACKEND": "memory", "RUNBOOKS_QUOTAS_FILE": str(path)})
    message = str(refused.value)
    assert "RUNBOOKS_QUOTAS_FILE" in message and f"{path}.t1.maxActive" in message
    assert f"{path}.t2.startsPerSecond" in message
