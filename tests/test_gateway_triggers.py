"""The trigger routes over real HTTP: list, disable/enable (audited, 409 when it changes
nothing, 404 for what the tenant cannot see), the trigger's audit, and ``runbooks validate``
showing the triggers of a valid file."""

from __future__ import annotations

import io
import json
import pathlib
from typing import Any

from gateway.cli_run import validate_files
from tests.gateway_fixtures import running_gateway

T1 = {"X-Tenant-Id": "t1", "X-User-Id": "ann"}
T2 = {"X-Tenant-Id": "t2", "X-User-Id": "bob"}


def triggered(runbook_id: str = "nightly") -> dict[str, Any]:
    return {"id": runbook_id, "steps": [{"id": "s", "type": "echo", "config": {"n": 1}}], "triggers": [
        {"id": "cron", "schedule": "0 3 * * *", "timezone": "Europe/Paris"},
        {"id": "alert", "event": {"type": "alert.fired"}, "input": {"key": "${event.correlationKey}"}}]}


async def test_list_switch_and_audit_triggers() -> None:
    async with running_gateway() as gw:
        await gw.register(triggered(), headers=T1)
        listed = await gw.client.get("/api/v1/triggers", headers=T1)
        assert listed.status_code == 200
        items = listed.json()["items"]
        assert [(i["runbookId"], i["triggerId"], i["kind"]) for i in items] == [
            ("nightly", "cron", "schedule"), ("nightly", "alert", "event")]
        cron, alert = items
        assert cron["schedule"] == "0 3 * * *" and cron["timezone"] == "Europe/Paris" and cron["enabled"]
        assert cron["nextRunAt"].endswith("Z") and cron["lastRunAt"] is None and cron["lastExecutionId"] is None
        assert alert["eventType"] == "alert.fired" and alert["nextRunAt"] is None
        assert (await gw.client.get("/api/v1/triggers", headers=T2)).json()["items"] == []

        base = "/api/v1/runbooks/nightly/triggers/alert"
        off = await gw.client.post(f"{base}/disable", json={"reason": "noisy"}, headers=T1)
        assert off.status_code == 200 and off.json()["enabled"] is False
        again = await gw.client.post(f"{base}/disable", headers=T1)
        assert again.status_code == 409 and again.headers["content-type"] == "application/problem+json"
        assert (await gw.client.post(f"{base}/disable", headers=T2)).status_code == 404
        assert (await gw.client.post("/api/v1/runbooks/nightly/triggers/nope/disable", headers=T1)).status_code == 404
        published = await gw.client.post("/api/v1/events", json={"type": "alert.fired", "correlationKey": "A-1"},
                                         headers=T1)
        assert published.json() == {"delivered": 0, "retained": True, "refusedByFilter": 0}  # the rule is off
        on = await gw.client.post(f"{base}/enable", headers=T1)
        assert on.json()["enabled"] is True
        published = await gw.client.post("/api/v1/events", json={"type": "alert.fired", "correlationKey": "A-2"},
                                         headers=T1)
        assert published.json() == {"delivered": 1, "retained": False, "refusedByFilter": 0}
        [alert] = [i for i in (await gw.client.get("/api/v1/triggers", headers=T1)).json()["items"]
                   if i["triggerId"] == "alert"]
        execution = await gw.execution(alert["lastExecutionId"], headers=T1)
        assert execution["input"] == {"key": "A-2"} and execution["context"]["trigger"]["kind"] == "event"

        audit = (await gw.client.get(f"{base}/audit", headers=T1)).json()["items"]
        assert [(a["actor"], a["action"], a["reason"]) for a in audit] == [
            ("ann", "trigger.disabled", "noisy"), ("ann", "trigger.enabled", None)]


def test_validate_shows_the_triggers_of_a_valid_file(tmp_path: pathlib.Path) -> None:
    good = tmp_path / "good.json"
    doc = triggered()
    doc["steps"] = [{"id": "s", "type": "conditional", "config": {"condition": {"field": "input.x", "operator": "exists"}}}]
    good.write_text(json.dumps(doc))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**doc, "triggers": [{"id": "x", "schedule": "every day"}]}))
    out = io.StringIO()
    assert validate_files([str(good), str(bad)], out) == 1
    lines = out.getvalue().splitlines()
    assert lines[0] == f"{good}: valid"
    assert lines[1].startswith("  trigger cron: schedule '0 3 * * *' in Europe/Paris (catchUp latest), next ")
    assert lines[2] == "  trigger alert: every event 'alert.fired'"
    assert lines[3] == f"{bad}:1: triggers[0].schedule: must be a cron expression of 5 fields, or 6 with seconds first"
