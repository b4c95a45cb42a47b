"""/api/v1/executions and /api/v1/events over real HTTP: start, read, control, records, tenants."""

from __future__ import annotations

import hashlib
import json

from tests.gateway_fixtures import (
    approval_runbook,
    echo_runbook,
    event_runbook,
    gate_runbook,
    running_gateway,
)

PROBLEM = "application/problem+json"
TENANT_A = {"X-Tenant-Id": "tenant-a", "X-User-Id": "alice"}
TENANT_B = {"X-Tenant-Id": "tenant-b", "X-User-Id": "bob"}
BOSS = {"X-User-Id": "boss"}
STEP_KEYS = {"status", "type", "attempts", "startedAt", "completedAt", "output", "error", "approvals",
             "progress", "deadlineAt", "childExecutionId"}
APPROVAL_STEP_KEYS = STEP_KEYS | {"approvalRequest", "delegations", "escalations"}  # human-approval steps
EXECUTION_KEYS = {"id", "runbookId", "runbookVersion", "tenantId", "status", "input", "output", "context",
                  "error", "createdAt", "startedAt", "completedAt", "pausedDurationMs", "replayOf", "inputHash",
                  "deadlineAt", "parentExecutionId", "parentStepId", "rootExecutionId", "forkedFrom", "steps"}


# ---------------------------------------------------------------------------- start

async def test_start_returns_201_with_the_execution_shape_and_identity_in_context() -> None:
    async with running_gateway() as gw:
        await gw.register(approval_runbook(), headers=TENANT_A)
        response = await gw.client.post("/api/v1/executions", headers=TENANT_A, json={
            "runbookId": "approve-me", "input": {"value": 7},
            "context": {"legalBasis": "contract", "reason": "release", "tenantId": "evil", "userId": "mallory"}})
        assert response.status_code == 201, response.text
        body = response.json()
        assert set(body) == EXECUTION_KEYS
        assert response.headers["Location"] == f"/api/v1/executions/{body['id']}"
        assert list(body["steps"]) == ["prepare", "approve", "deploy"]
        assert all(set(step) == (APPROVAL_STEP_KEYS if step["type"] == "human-approval" else STEP_KEYS)
                   for step in body["steps"].values())
        assert body["context"] == {"legalBasis": "contract", "reason": "release", "tenantId": "tenant-a",
                                   "userId": "alice"}
        assert body["tenantId"] == "tenant-a"
        canonical = json.dumps({"value": 7}, sort_keys=True, separators=(",", ":"))
        assert body["inputHash"] == hashlib.sha256(canonical.encode()).hexdigest()


async def test_identical_start_is_200_with_the_same_execution_and_force_makes_a_new_one() -> None:
    async with running_gateway() as gw:
        await gw.register(approval_runbook())
        first = await gw.start("approve-me", {"value": 1})
        again = await gw.start("approve-me", {"value": 1}, expect=200)
        forced = await gw.client.post("/api/v1/executions", params={"force": "true"},
                                      json={"runbookId": "approve-me", "input": {"value": 1}})
        other_input = await gw.start("approve-me", {"value": 2})
        assert again["id"] == first["id"]
        assert forced.status_code == 201 and forced.json()["id"] != first["id"]
        assert other_input["id"] != first["id"]
        bad_force = await gw.client.post("/api/v1/executions", params={"force": "maybe"},
                                         json={"runbookId": "approve-me"})
        assert bad_force.status_code == 400


async def test_idempotency_key_returns_the_same_execution_and_refuses_another_input() -> None:
    async with running_gateway() as gw:
        await gw.register(approval_runbook())
        key = {"Idempotency-Key": "deploy-42"}
        first = await gw.client.post("/api/v1/executions", headers=key,
                                     json={"runbookId": "approve-me", "input": {"value": 1}})
        same = await gw.client.post("/api/v1/executions", headers=key, params={"force": "true"},
                                    json={"runbookId": "approve-me", "input": {"value": 1}})
        other = await gw.client.post("/api/v1/executions", headers=key,
                                     json={"runbookId": "approve-me", "input": {"value": 2}})
        assert first.status_code == 201
        assert (same.status_code, same.json()["id"]) == (200, first.json()["id"])
        assert other.status_code == 422
        assert other.json()["errors"][0]["path"] == "Idempotency-Key"


async def test_start_refusals_list_every_problem() -> None:
    async with running_gateway() as gw:
        await gw.register(approval_runbook("legal", requireLegalBasis=True,
                                           inputSchema={"type": "object", "required": ["value"],
                                                        "properties": {"value": {"type": "integer"}}}))
        unknown = await gw.client.post("/api/v1/executions", json={"runbookId": "nope"})
        assert (unknown.status_code, unknown.headers["content-type"]) == (404, PROBLEM)
        missing = await gw.client.post("/api/v1/executions", json={"input": {}, "extra": 1, "version": 0})
        assert missing.status_code == 422
        assert {e["path"] for e in missing.json()["errors"]} == {"runbookId", "extra", "version"}
        types = await gw.client.post("/api/v1/executions",
                                     json={"runbookId": 3, "version": "1", "context": {"legalBasis": 5}})
        assert types.status_code == 400
        assert {e["path"] for e in types.json()["errors"]} == {"runbookId", "version", "context.legalBasis"}
        refused = await gw.client.post("/api/v1/executions", json={"runbookId": "legal", "input": {"value": "x"}})
        assert refused.status_code == 422
        assert {e["path"] for e in refused.json()["errors"]} == {"context.legalBasis", "input.value"}
        not_object = await gw.client.post("/api/v1/executions", json=["runbookId"])
        assert not_object.status_code == 400


# ---------------------------------------------------------------------------- read and list

async def test_get_and_list_with_pagination_and_filters() -> None:
    async with running_gateway() as gw:
        await gw.register(echo_runbook())
        ids = [(await gw.start("echo", {"n": n}))["id"] for n in range(5)]
        assert (await gw.client.get("/api/v1/executions/does-not-exist")).status_code == 404
        seen: list[str] = []
        params: dict[str, str | int] = {"limit": 2}
        while True:
            page = (await gw.client.get("/api/v1/executions", params=params)).json()
            seen += [item["id"] for item in page["items"]]
            if page["nextCursor"] is None:
                break
            params = {"limit": 2, "cursor": page["nextCursor"]}
        assert seen == list(reversed(ids))  # newest first
        for execution_id in ids:
            await gw.wait_for(execution_id, "completed")
        by_runbook = (await gw.client.get("/api/v1/executions", params={"runbookId": "echo", "status": "completed"})).json()
        assert len(by_runbook["items"]) == 5
        assert (await gw.client.get("/api/v1/executions", params={"status": "running"})).json()["items"] == []
        bad = await gw.client.get("/api/v1/executions", params={"limit": 5000, "status": "sideways"})
        assert bad.status_code == 422
        assert {e["path"] for e in bad.json()["errors"]} == {"limit", "status"}
        bad_cursor = await gw.client.get("/api/v1/executions", params={"cursor": "not-a-cursor"})
        assert bad_cursor.status_code == 422


# ---------------------------------------------------------------------------- approvals

async def test_the_authenticated_user_is_the_approver() -> None:
    async with running_gateway() as gw:
        await gw.register(approval_runbook("two", approvers=("boss", "cto")))
        execution = await gw.start("two", {"value": 1})
        url = f"/api/v1/executions/{execution['id']}/steps/approve/approvals"
        await gw.wait_for(execution["id"], "awaiting_approval")
        stranger = await gw.client.post(url, json={"decision": "approve"}, headers={"X-User-Id": "intern"})
        assert (stranger.status_code, stranger.headers["content-type"]) == (403, PROBLEM)
        bad = await gw.client.post(url, json={"decision": "maybe", "comment": 5}, headers=BOSS)
        assert bad.status_code == 400
        assert {e["path"] for e in bad.json()["errors"]} == {"decision", "comment"}
        unknown_decision = await gw.client.post(url, json={"decision": "maybe"}, headers=BOSS)
        assert unknown_decision.status_code == 422
        ok = await gw.client.post(url, json={"decision": "approve", "comment": "lgtm"}, headers=BOSS)
        assert ok.status_code == 200, ok.text
        approvals = ok.json()["steps"]["approve"]["approvals"]
        assert [(a["approver"], a["decision"], a["comment"]) for a in approvals] == [("boss", "approve", "lgtm")]
        final = await gw.wait_for(execution["id"], "completed")
        assert final["steps"]["deploy"]["status"] == "succeeded"
        again = await gw.client.post(url, json={"decision": "approve"}, headers=BOSS)
        assert again.status_code == 409
        unknown = await gw.client.post("/api/v1/executions/nope/steps/approve/approvals",
                                       json={"decision": "approve"}, headers=BOSS)
        assert unknown.status_code == 404


async def test_a_second_decision_by_the_same_approver_is_409_and_evidence_and_audit_record_it() -> None:
    async with running_gateway() as gw:
        document = approval_runbook("n-of-m", approvers=("boss", "cto"))
        document["steps"][1]["config"]["minApprovals"] = 2
        await gw.register(document)
        execution = await gw.start("n-of-m", {"value": 1}, context={"legalBasis": "change-123", "reason": "ship"})
        await gw.wait_for(execution["id"], "awaiting_approval")
        url = f"/api/v1/executions/{execution['id']}/steps/approve/approvals"
        assert (await gw.client.post(url, json={"decision": "approve"}, headers=BOSS)).status_code == 200
        twice = await gw.client.post(url, json={"decision": "approve"}, headers=BOSS)
        assert twice.status_code == 409
        unknown_step = await gw.client.post(f"/api/v1/executions/{execution['id']}/steps/nope/approvals",
                                            json={"decision": "approve"}, headers=BOSS)
        assert unknown_step.status_code == 404
        assert (await gw.client.post(url, json={"decision": "approve"}, headers={"X-User-Id": "cto"})).status_code == 200
        await gw.wait_for(execution["id"], "completed")
        evidence = (await gw.client.get(f"/api/v1/executions/{execution['id']}/evidence")).json()
        decisions = [item for item in evidence["items"] if item["kind"] == "approval_decision"]
        assert [item["data"]["approver"] for item in decisions] == ["boss", "cto"]
        for item in evidence["items"]:
            assert set(item) == {"id", "stepId", "kind", "sha256", "data", "createdAt"}
            canonical = json.dumps(item["data"], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
            assert item["sha256"] == hashlib.sha256(canonical.encode()).hexdigest()
        audit = (await gw.client.get(f"/api/v1/executions/{execution['id']}/audit")).json()
        entries = audit["items"]
        assert entries[0]["action"] == "execution.started"
        assert [e["at"] for e in entries] == sorted(e["at"] for e in entries)  # oldest first
        decided = [e for e in entries if e["action"] == "approval.decided"]
        assert [(e["actor"], e["stepId"], e["legalBasis"]) for e in decided] == [
            ("boss", "approve", "change-123"), ("cto", "approve", "change-123")]
        assert set(entries[0]) == {"at", "actor", "action", "stepId", "legalBasis", "reason", "data",
                                   "seq", "prevHash", "hash", "dataSha256", "erased"}  # (its place in the ledger)


# ---------------------------------------------------------------------------- control

async def test_pause_with_a_step_in_flight_then_resume_and_conflicts() -> None:
    async with running_gateway() as gw:
        await gw.register(gate_runbook())
        execution = await gw.start("gated")
        base = f"/api/v1/executions/{execution['id']}"
        await gw.steps.wait_until_waiting("g1")
        paused = await gw.client.post(f"{base}/pause", json={"reason": "maintenance window"})
        assert (paused.status_code, paused.json()["status"]) == (200, "pausing")
        gw.steps.open("g1")
        await gw.wait_for(execution["id"], "paused")
        again = await gw.client.post(f"{base}/pause")
        assert again.status_code == 409
        resumed = await gw.client.post(f"{base}/resume", json={})
        assert resumed.status_code == 200
        final = await gw.wait_for(execution["id"], "completed")
        assert final["steps"]["last"]["status"] == "succeeded"
        assert (await gw.client.post(f"{base}/resume")).status_code == 409
        assert (await gw.client.post("/api/v1/executions/nope/pause")).status_code == 404
        bad_body = await gw.client.post(f"{base}/pause", json={"reason": 1, "why": "x"})
        assert bad_body.status_code == 400
        audit = (await gw.client.get(f"{base}/audit")).json()["items"]
        pause = next(e for e in audit if e["action"] == "execution.pause")
        assert (pause["actor"], pause["reason"]) == ("anonymous", "maintenance window")


async def test_cancel_requires_a_reason() -> None:
    async with running_gateway() as gw:
        await gw.register(gate_runbook(gate="never"))
        execution = await gw.start("gated")
        url = f"/api/v1/executions/{execution['id']}/cancel"
        for body in (None, {}, {"reason": "  "}):
            response = await gw.client.post(url, json=body) if body is not None else await gw.client.post(url)
            assert response.status_code == 422, response.text
            assert response.json()["errors"][0]["path"] == "reason"
        cancelled = await gw.client.post(url, json={"reason": "wrong release"}, headers={"X-User-Id": "ops"})
        assert (cancelled.status_code, cancelled.json()["status"]) == (200, "cancelled")
        assert cancelled.json()["steps"]["held"]["status"] == "cancelled"
        assert (await gw.client.post(url, json={"reason": "again"})).status_code == 409


async def test_retry_a_failed_step() -> None:
    async with running_gateway() as gw:
        await gw.register({"id": "flaky", "steps": [
            {"id": "one", "type": "echo", "config": {"n": 1}},
            {"id": "two", "type": "fail"},
            {"id": "three", "type": "echo", "config": {"n": 3}},
        ]})
        execution = await gw.start("flaky")
        base = f"/api/v1/executions/{execution['id']}"
        failed = await gw.wait_for(execution["id"], "failed")
        assert failed["error"]["code"] == "executor"
        assert (await gw.client.post(f"{base}/steps/one/retry")).status_code == 409
        assert (await gw.client.post(f"{base}/steps/nope/retry")).status_code == 404
        gw.steps.failing = False
        retried = await gw.client.post(f"{base}/steps/two/retry", json={"reason": "fixed upstream"})
        assert (retried.status_code, retried.json()["status"]) == (200, "running")
        final = await gw.wait_for(execution["id"], "completed")
        assert final["steps"]["two"]["output"] == {"fixed": True}
        assert final["steps"]["three"]["status"] == "succeeded"
        assert (await gw.client.post(f"{base}/steps/two/retry")).status_code == 409


async def test_replay_is_201_with_replay_of() -> None:
    async with running_gateway() as gw:
        await gw.register(echo_runbook())
        original = await gw.start("echo", {"n": 5}, context={"reason": "first"})
        await gw.wait_for(original["id"], "completed")
        replay = await gw.client.post(f"/api/v1/executions/{original['id']}/replay")
        assert replay.status_code == 201, replay.text
        body = replay.json()
        assert body["replayOf"] == original["id"] and body["id"] != original["id"]
        assert (body["input"], body["context"]["reason"]) == ({"n": 5}, "first")
        assert replay.headers["Location"] == f"/api/v1/executions/{body['id']}"
        assert (await gw.client.post("/api/v1/executions/nope/replay")).status_code == 404


# ---------------------------------------------------------------------------- events

async def test_events_reach_waiters_of_their_own_tenant_only() -> None:
    async with running_gateway() as gw:
        await gw.register(event_runbook(), headers=TENANT_A)
        execution = await gw.start("waits", {"ticket": "T-1"}, headers=TENANT_A)
        await gw.wait_for_step(execution["id"], "wait", "waiting", headers=TENANT_A)
        event = {"type": "ticket.closed", "correlationKey": "T-1", "payload": {"by": "bob"}}
        other_tenant = await gw.client.post("/api/v1/events", json=event, headers=TENANT_B)
        assert (other_tenant.status_code, other_tenant.json()) == (202, {"delivered": 0, "retained": True, "refusedByFilter": 0})
        still = await gw.execution(execution["id"], headers=TENANT_A)
        assert still["steps"]["wait"]["status"] == "waiting"
        own = await gw.client.post("/api/v1/events", json={**event, "payload": {"by": "alice"}}, headers=TENANT_A)
        assert (own.status_code, own.json()) == (202, {"delivered": 1, "retained": False, "refusedByFilter": 0})
        final = await gw.wait_for(execution["id"], "completed", headers=TENANT_A)
        assert final["steps"]["after"]["output"] == {"got": {"by": "alice"}}


async def test_event_body_problems() -> None:
    async with running_gateway() as gw:
        missing = await gw.client.post("/api/v1/events", json={"payload": 1})
        assert missing.status_code == 422
        assert {e["path"] for e in missing.json()["errors"]} == {"type", "correlationKey"}
        wrong = await gw.client.post("/api/v1/events", json={"type": 1, "correlationKey": ["k"]})
        assert wrong.status_code == 400
        assert len(wrong.json()["errors"]) == 2
        empty = await gw.client.post("/api/v1/events", content=b"", headers={"Content-Type": "application/json"})
        assert empty.status_code == 400


# ---------------------------------------------------------------------------- logs

async def test_logs_filters() -> None:
    async with running_gateway() as gw:
        await gw.register({"id": "logged", "steps": [
            {"id": "a", "type": "echo", "config": {"n": 1}},
            {"id": "b", "type": "fail", "continueOnError": True},
            {"id": "c", "type": "echo", "config": {"n": 3}},
        ]})
        execution = await gw.start("logged")
        await gw.wait_for(execution["id"], "completed")
        url = f"/api/v1/executions/{execution['id']}/logs"
        everything = (await gw.client.get(url)).json()
        seqs = [entry["seq"] for entry in everything["items"]]
        assert seqs == sorted(seqs) and everything["nextCursor"] is None
        assert set(everything["items"][0]) == {"seq", "at", "level", "message", "stepId", "data"}
        step_a = (await gw.client.get(url, params={"stepId": "a"})).json()["items"]
        assert step_a and {entry["stepId"] for entry in step_a} == {"a"}
        assert any(entry["message"] == "step started" for entry in step_a)  # every step start writes one
        errors = (await gw.client.get(url, params={"level": "error"})).json()["items"]
        assert errors and {entry["level"] for entry in errors} == {"error"}
        debug = (await gw.client.get(url, params={"level": "debug"})).json()["items"]
        assert any(entry["level"] == "debug" for entry in debug)
        after = (await gw.client.get(url, params={"after": seqs[2]})).json()["items"]
        assert [entry["seq"] for entry in after] == seqs[3:]
        page = (await gw.client.get(url, params={"limit": 2})).json()
        assert len(page["items"]) == 2 and page["nextCursor"] == str(seqs[1])
        bad = await gw.client.get(url, params={"level": "loud"})
        assert bad.status_code == 422 and bad.json()["errors"][0]["path"] == "level"
        not_int = await gw.client.get(url, params={"after": "yesterday"})
        assert not_int.status_code == 400
        assert (await gw.client.get("/api/v1/executions/nope/logs")).status_code == 404


# ---------------------------------------------------------------------------- tenants

async def test_another_tenant_sees_nothing_of_an_execution() -> None:
    async with running_gateway() as gw:
        await gw.register(approval_runbook(), headers=TENANT_A)
        execution = await gw.start("approve-me", {"value": 1}, headers=TENANT_A)
        base = f"/api/v1/executions/{execution['id']}"
        gets = ("", "/logs", "/evidence", "/audit", "/stream")
        for suffix in gets:
            response = await gw.client.get(base + suffix, headers=TENANT_B)
            assert (response.status_code, response.headers["content-type"]) == (404, PROBLEM), suffix
        posts = {"/pause": {}, "/resume": {}, "/cancel": {"reason": "x"}, "/replay": {},
                 "/steps/approve/approvals": {"decision": "approve"}, "/steps/approve/retry": {}}
        for suffix, body in posts.items():
            response = await gw.client.post(base + suffix, json=body, headers={**TENANT_B, "X-User-Id": "boss"})
            assert response.status_code == 404, suffix
        assert (await gw.client.get("/api/v1/executions", headers=TENANT_B)).json()["items"] == []
        assert len((await gw.client.get("/api/v1/executions", headers=TENANT_A)).json()["items"]) == 1
        assert (await gw.client.get(base + "/logs", headers=TENANT_A)).status_code == 200
