"""Triggers are bounded at registration: MAX_TRIGGERS_PER_RUNBOOK (20), MIN_SCHEDULE_INTERVAL_MS
(1000: a schedule whose due times come closer is refused) and MAX_TRIGGERS_PER_TENANT (100, the
live triggers of a tenant's own runbooks); each refusal is a 422 naming the trigger's path.
The probe: 100 triggers at ``* * * * * *`` started ~91 executions/s; validation accepted 10,000."""

from __future__ import annotations

from typing import Any

from tests.gateway_fixtures import running_gateway

T1 = {"X-Tenant-Id": "t1"}
T2 = {"X-Tenant-Id": "t2"}


def with_schedules(*crons: str, runbook_id: str = "busy") -> dict[str, Any]:
    triggers = [{"id": f"t{index}", "schedule": cron} for index, cron in enumerate(crons)]
    return {"id": runbook_id, "triggers": triggers, "steps": [{"id": "s", "type": "echo"}]}


async def test_the_probe_100_triggers_every_second_are_refused_and_validation_says_so() -> None:
    probe = with_schedules(*["* * * * * *"] * 100)
    async with running_gateway() as gw:
        registered = await gw.client.post("/api/v1/runbooks", json=probe)
        report = (await gw.client.post("/api/v1/runbooks/validate", json=probe)).json()
        twenty = await gw.client.post("/api/v1/runbooks", json=with_schedules(*["* * * * * *"] * 20))
    assert registered.status_code == 422
    [problem] = registered.json()["errors"]
    assert problem["path"] == "triggers" and "MAX_TRIGGERS_PER_RUNBOOK" in problem["message"]
    assert "found 100" in problem["message"]
    assert report["valid"] is False and [e["path"] for e in report["errors"]] == ["triggers"]
    assert twenty.status_code == 201  # every second is the default minimum interval itself


async def test_schedules_closer_than_the_minimum_interval_are_refused_at_their_path() -> None:
    crons = ("*/5 * * * * *", "*/2 * * * * *", "0,1 0 * * * *", "0 0 30 2 *")
    async with running_gateway({"MIN_SCHEDULE_INTERVAL_MS": "5000"}) as gw:
        response = await gw.client.post("/api/v1/runbooks", json=with_schedules(*crons))
    assert response.status_code == 422
    problems = {e["path"]: e["message"] for e in response.json()["errors"]}
    assert sorted(problems) == ["triggers[1].schedule", "triggers[2].schedule", "triggers[3].schedule"]
    assert "2000 ms apart" in problems["triggers[1].schedule"]
    assert "1000 ms apart" in problems["triggers[2].schedule"]  # one close pair an hour is enough
    assert "MIN_SCHEDULE_INTERVAL_MS" in problems["triggers[2].schedule"]
    assert "never due" in problems["triggers[3].schedule"]  # (February 30th: before, a 500)


async def test_a_tenant_has_at_most_max_triggers_per_tenant_live_triggers() -> None:
    async with running_gateway({"MAX_TRIGGERS_PER_TENANT": "3"}) as gw:
        await gw.register(with_schedules("0 * * * *", "0 1 * * *", runbook_id="a"), headers=T1)
        over = await gw.client.post("/api/v1/runbooks", json=with_schedules("0 * * * *", "0 1 * * *", runbook_id="b"),
                                    headers=T1)
        one_more = await gw.client.post("/api/v1/runbooks", json=with_schedules("0 * * * *", runbook_id="b"), headers=T1)
        again = await gw.client.post("/api/v1/runbooks", json=with_schedules("0 2 * * *", "0 3 * * *", runbook_id="a"),
                                     headers=T1)
        other_tenant = await gw.client.post("/api/v1/runbooks", json=with_schedules("0 * * * *", "0 1 * * *"),
                                            headers=T2)
        listed = (await gw.client.get("/api/v1/triggers", headers=T1)).json()["items"]
    assert over.status_code == 422
    [problem] = over.json()["errors"]
    assert problem["path"] == "triggers" and "would have 4 live triggers" in problem["message"]
    assert "MAX_TRIGGERS_PER_TENANT" in problem["message"]
    assert one_more.status_code == 201  # 3: the cap itself
    assert again.status_code == 201  # a new version that adds no trigger to its runbook
    assert other_tenant.status_code == 201  # each tenant has its own count
    assert len(listed) == 3
