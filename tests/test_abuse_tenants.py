"""Who did what, per tenant: a replay names its replayer; trigger switches of a shared runbook,
their audit and their last-run data belong to the tenant that made them."""

from __future__ import annotations

from typing import Any

import trio

from runtime import Runtime, open_runtime
from tests.gateway_fixtures import running_gateway


async def echo(ctx: Any) -> Any:
    """A custom step that answers nothing."""
    return {}


HOUR = 3600

ALICE = {"X-User-Id": "alice", "X-Tenant-Id": "t1"}
BOB = {"X-User-Id": "bob", "X-Tenant-Id": "t1"}


async def test_a_replay_by_bob_of_alices_execution_runs_as_bob_and_names_the_original() -> None:
    async with running_gateway() as gw:
        await gw.register({"id": "who", "steps": [{"id": "s", "type": "echo", "config": {"by": "${context.userId}"}}]},
                          headers=ALICE)
        original = await gw.start("who", headers=ALICE)
        await gw.wait_for(original["id"], "completed", headers=ALICE)
        response = await gw.client.post(f"/api/v1/executions/{original['id']}/replay", headers=BOB)
        assert response.status_code == 201, response.text
        replay = response.json()
        final = await gw.wait_for(replay["id"], "completed", headers=BOB)
        audit = (await gw.client.get(f"/api/v1/executions/{replay['id']}/audit", headers=BOB)).json()["items"]
    assert original["context"]["userId"] == "alice"
    assert replay["context"]["userId"] == "bob" and replay["replayOf"] == original["id"]
    assert final["steps"]["s"]["output"] == {"by": "bob"}  # what the steps see, too
    started = [entry for entry in audit if entry["action"] == "execution.started"]
    assert [entry["actor"] for entry in started] == ["bob"]
    assert started[0]["data"]["replayOf"] == original["id"]


# ---------------------------------------------------------------- triggers of a shared runbook

A_OPS = {"X-User-Id": "ann", "X-Tenant-Id": "a"}
B_OPS = {"X-User-Id": "bert", "X-Tenant-Id": "b"}


def shared_runbook() -> dict[str, Any]:
    """A runbook every tenant sees (as from RUNBOOKS_DIR): an event rule and an hourly schedule."""
    return {"id": "shared", "steps": [{"id": "s", "type": "echo"}], "triggers": [
        {"id": "on-alert", "event": {"type": "alert"}, "input": {"key": "${event.correlationKey}"}},
        {"id": "hourly", "schedule": "0 * * * *"}]}


def rule(page: Any) -> dict[str, Any]:
    [found] = [t for t in page.json()["items"] if t["triggerId"] == "on-alert"]
    return dict(found)


async def test_the_probe_b_disabling_a_shared_trigger_leaves_as_rule_and_neither_sees_the_other() -> None:
    async with running_gateway() as gw:
        await gw.runtime.register_runbook(shared_runbook())  # shared by every tenant
        off = await gw.client.post("/api/v1/runbooks/shared/triggers/on-alert/disable", json={"reason": "noisy"},
                                   headers=B_OPS)
        assert off.status_code == 200 and off.json()["enabled"] is False
        published = {}
        for who in (A_OPS, B_OPS):
            answer = await gw.client.post("/api/v1/events", json={"type": "alert", "correlationKey": "k1"},
                                          headers=who)
            published[who["X-Tenant-Id"]] = answer.json()
        started = (await gw.runtime.list_executions(runbook_id="shared", limit=10)).items
        a_rule = rule(await gw.client.get("/api/v1/triggers", headers=A_OPS))
        b_rule = rule(await gw.client.get("/api/v1/triggers", headers=B_OPS))
        audit = {who["X-Tenant-Id"]: (await gw.client.get("/api/v1/runbooks/shared/triggers/on-alert/audit",
                                                          headers=who)).json()["items"] for who in (A_OPS, B_OPS)}
    assert [e.tenant_id for e in started] == ["a"]  # A's rule still fires; B's does not
    assert published["a"]["delivered"] == 1 and published["b"]["delivered"] == 0
    assert a_rule["enabled"] is True and b_rule["enabled"] is False
    assert a_rule["lastExecutionId"] == started[0].id and a_rule["lastRunAt"] is not None
    assert b_rule["lastExecutionId"] is None and b_rule["lastRunAt"] is None  # A's run is A's
    assert audit["a"] == []  # B's actor and reason stay in B
    assert [(e["actor"], e["action"], e["reason"]) for e in audit["b"]] == [("bert", "trigger.disabled", "noisy")]


async def test_a_shared_schedule_runs_in_default_and_in_each_tenant_that_switched_it_on(
        autojump_clock: Any) -> None:
    async with open_runtime("memory") as rt:
        rt.register_executor("echo", echo)
        await rt.register_runbook(shared_runbook())
        listed = {t: {i.trigger_id: i for i in await rt.list_triggers(tenant_id=t)} for t in ("default", "a")}
        await rt.enable_trigger("shared", "hourly", tenant_id="a", actor="ann")
        await trio.sleep(HOUR)
        first = await tenants_of_runs(rt)
        await rt.disable_trigger("shared", "hourly", tenant_id="default", actor="root")
        await trio.sleep(HOUR)
        second = await tenants_of_runs(rt)
        [a_hourly] = [i for i in await rt.list_triggers(tenant_id="a") if i.trigger_id == "hourly"]
        [b_hourly] = [i for i in await rt.list_triggers(tenant_id="b") if i.trigger_id == "hourly"]
    assert listed["default"]["hourly"].enabled and not listed["a"]["hourly"].enabled  # opt-in elsewhere
    assert listed["a"]["hourly"].next_run_at is None and listed["a"]["on-alert"].enabled
    assert first == ["a", "default"]  # once per tenant where it is on, in that tenant
    assert second == ["a", "a", "default"]
    assert a_hourly.enabled and a_hourly.last_execution_id is not None
    assert not b_hourly.enabled and b_hourly.last_run_at is None


async def tenants_of_runs(rt: Runtime) -> list[str]:
    executions = []
    for tenant in ("default", "a", "b"):
        executions += (await rt.list_executions(runbook_id="shared", tenant_id=tenant, limit=100)).items
    return sorted(e.tenant_id for e in executions)
