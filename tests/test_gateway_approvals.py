"""``GET /api/v1/approvals`` over real HTTP: what waits for the calling user, per tenant."""

from __future__ import annotations

from tests.gateway_fixtures import approval_runbook, running_gateway


async def test_lists_what_waits_for_the_calling_user_in_the_tenant() -> None:
    boss, t2_boss = {"X-User-Id": "boss"}, {"X-User-Id": "boss", "X-Tenant-Id": "t2"}
    async with running_gateway() as gw:
        doc = approval_runbook(approvers=("boss", "cto"))
        doc["steps"][1]["config"] |= {"minApprovals": 2, "message": "Deploy ${input.value}?"}
        await gw.register(doc)
        await gw.register(doc, headers={"X-Tenant-Id": "t2"})
        started = await gw.start("approve-me", {"value": 7})
        await gw.start("approve-me", {"value": 8}, headers={"X-Tenant-Id": "t2"})
        await gw.wait_for(started["id"], "awaiting_approval")

        answer = await gw.client.get("/api/v1/approvals", headers=boss)
        assert answer.status_code == 200
        body = answer.json()
        assert body["nextCursor"] is None
        [item] = body["items"]
        assert item["executionId"] == started["id"]
        assert {key: item[key] for key in ("runbookId", "stepId", "message", "approvers", "minApprovals",
                                            "approvals", "approvalsNeeded", "executionStatus")} == {
            "runbookId": "approve-me", "stepId": "approve", "message": "Deploy 7?", "approvers": ["boss", "cto"],
            "minApprovals": 2, "approvals": [], "approvalsNeeded": 2, "executionStatus": "awaiting_approval"}
        assert item["startedAt"].endswith("Z") and item["deadlineAt"] is None

        assert (await gw.client.get("/api/v1/approvals", headers={"X-User-Id": "intern"})).json()["items"] == []
        [other] = (await gw.client.get("/api/v1/approvals", headers=t2_boss)).json()["items"]
        assert other["executionId"] != started["id"]

        decided = await gw.client.post(f"/api/v1/executions/{started['id']}/steps/approve/approvals",
                                       json={"decision": "approve", "comment": "ok"}, headers=boss)
        assert decided.status_code == 200
        assert (await gw.client.get("/api/v1/approvals", headers=boss)).json()["items"] == []
        [left] = (await gw.client.get("/api/v1/approvals", headers={"X-User-Id": "cto"})).json()["items"]
        assert left["approvalsNeeded"] == 1
        assert [(a["approver"], a["decision"], a["comment"]) for a in left["approvals"]] == [("boss", "approve", "ok")]

        refused = await gw.client.get("/api/v1/approvals", params={"limit": 0})
        assert refused.status_code == 422 and refused.headers["content-type"] == "application/problem+json"
        openapi = (await gw.client.get("/api/v1/openapi.json")).json()
        assert "get" in openapi["paths"]["/api/v1/approvals"]
