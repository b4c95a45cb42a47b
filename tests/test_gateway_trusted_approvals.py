"""Approvals an auditor can trust over real HTTP: the approval request in the execution JSON, a
stale digest (409 naming the current one), four eyes (403 naming the rule), delegation, and
signed decision links from a notification through a served gateway behind PUBLIC_URL: the
confirmation page (a GET never decides), one use, and the pages for a used, tampered,
expired or stale link."""

from __future__ import annotations

import json
import logging
import pathlib
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
import trio

from runtime.security.links import LinkClaims, issue
from tests.fake_service import fake_service
from tests.gateway_fixtures import RunningGateway, running_gateway

LINK_KEY = "k" * 40
PUBLIC = "https://runbooks.example/base"
BOSS, STARTER = {"X-User-Id": "boss"}, {"X-User-Id": "sam"}


def four_eyes() -> dict[str, Any]:
    return {"id": "change", "steps": [{"id": "approve", "type": "human-approval", "config": {
        "approvers": ["sam", "boss", "cto"], "minApprovals": 2, "allowDelegation": True}}]}


async def test_stale_digest_is_409_and_four_eyes_is_403_naming_the_rule() -> None:
    async with running_gateway({"REQUIRE_SEPARATION_OF_DUTIES": "true"}) as gw:
        await gw.register(four_eyes())
        started = await gw.start("change", headers=STARTER)
        body = await gw.wait_for(started["id"], "awaiting_approval")
        request = body["steps"]["approve"]["approvalRequest"]
        assert set(request) == {"digest", "shown"} and len(request["digest"]) == 64
        assert request["shown"]["runbook"]["id"] == "change"
        path = f"/api/v1/executions/{started['id']}/steps/approve/approvals"

        stale = await gw.client.post(path, json={"decision": "approve", "digest": "f" * 64}, headers=BOSS)
        assert stale.status_code == 409 and stale.headers["content-type"] == "application/problem+json"
        problem = stale.json()
        assert problem["type"] == "urn:runbooks:problem:stale-digest" and problem["currentDigest"] == request["digest"]
        assert request["digest"] in problem["detail"]
        bad = await gw.client.post(path, json={"decision": "approve", "digest": "nope"}, headers=BOSS)
        assert bad.status_code == 422 and bad.json()["errors"][0]["path"] == "digest"

        own = await gw.client.post(path, json={"decision": "approve", "digest": request["digest"]}, headers=STARTER)
        assert own.status_code == 403
        assert own.json()["type"] == "urn:runbooks:problem:separation-of-duties"
        assert own.json()["detail"].startswith("separation of duties: 'sam' started this execution")
        ok = await gw.client.post(path, json={"decision": "approve", "digest": request["digest"]}, headers=BOSS)
        assert ok.status_code == 200 and ok.json()["steps"]["approve"]["approvals"][0]["digest"] == request["digest"]
        again = await gw.client.post(path, json={"decision": "approve"}, headers=BOSS)
        assert again.status_code == 403 and "already decided" in again.json()["detail"]


async def test_a_vote_is_delegated_over_http_and_audited() -> None:
    async with running_gateway() as gw:
        await gw.register(four_eyes())
        started = await gw.start("change", headers=STARTER)
        await gw.wait_for(started["id"], "awaiting_approval")
        base = f"/api/v1/executions/{started['id']}/steps/approve/approvals"
        missing = await gw.client.post(f"{base}/delegate", json={"to": "dana"}, headers=BOSS)
        assert missing.status_code == 422 and [e["path"] for e in missing.json()["errors"]] == ["reason"]
        handed = await gw.client.post(f"{base}/delegate", json={"to": "dana", "reason": "on call"}, headers=BOSS)
        assert handed.status_code == 200
        assert handed.json()["steps"]["approve"]["delegations"][0] | {"at": None} == {
            "delegator": "boss", "to": "dana", "reason": "on call", "at": None}
        refused = await gw.client.post(base, json={"decision": "approve"}, headers=BOSS)
        assert refused.status_code == 403 and "delegated their vote" in refused.json()["detail"]
        assert (await gw.client.post(base, json={"decision": "approve"}, headers={"X-User-Id": "dana"})).status_code == 200
        audit = (await gw.client.get(f"/api/v1/executions/{started['id']}/audit")).json()["items"]
        [delegated] = [a for a in audit if a["action"] == "approval.delegated"]
        assert (delegated["actor"], delegated["reason"], delegated["data"]["to"]) == ("boss", "on call", "dana")
        spec = (await gw.client.get("/api/v1/openapi.json")).json()
        assert "/api/v1/executions/{executionId}/steps/{stepId}/approvals/delegate" in spec["paths"]


# ---------------------------------------------------------------------------- signed decision links

def linked(hook: str, **config: Any) -> dict[str, Any]:
    return {"id": "release", "steps": [
        {"id": "approve", "type": "human-approval", "config": {
            "approvers": ["boss", "role:cab"], "timeoutMs": 3_600_000, "message": "Ship ${input.v}?",
            "notify": {"url": hook}, **config}},
        {"id": "probe", "type": "wait-for-event", "dependsOn": [],
         "config": {"eventType": "probe", "correlationKey": "${input.v}"}}]}


def env_with_key(tmp_path: pathlib.Path) -> dict[str, str]:
    secrets = tmp_path / "secrets.json"
    secrets.write_text(json.dumps({"shared": {"RUNBOOKS_LINK_KEY": LINK_KEY}}))
    return {"RUNBOOKS_SECRETS_FILE": str(secrets), "PUBLIC_URL": PUBLIC}


def local(gw: RunningGateway, url: str) -> str:
    """A link made for PUBLIC_URL (a proxy in front of the gateway), as the gateway sees it."""
    assert url.startswith(PUBLIC + "/decide/")
    parts = urlsplit(url)
    return parts.path.removeprefix(urlsplit(PUBLIC).path) + (f"?{parts.query}" if parts.query else "")


async def notification(svc: Any, count: int) -> dict[str, Any]:
    with trio.fail_after(10):
        await svc.wait_for("/hook", count)
    body: dict[str, Any] = svc.requests_to("/hook")[count - 1].json
    return body


async def test_a_link_shows_what_it_decides_then_decides_once(tmp_path: pathlib.Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "runbooks.gateway")
    env = env_with_key(tmp_path) | {"DETAILED_LOGGING": "true"}
    async with fake_service() as svc, running_gateway(env) as gw:
        await gw.register(linked(f"{svc.url}/hook", show=[]))
        started = await gw.start("release", {"v": "2.4"})
        body = await notification(svc, 1)
        waiting = await gw.execution(started["id"])
        digest = waiting["steps"]["approve"]["approvalRequest"]["digest"]
        assert body["digest"] == digest
        assert [link["approver"] for link in body["links"]] == ["boss"]  # no link for a role entry
        approve, reject = local(gw, body["approveUrl"]), local(gw, body["rejectUrl"])

        page = await gw.client.get(approve)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert "<strong>Approve</strong>" in page.text and digest in page.text and "Ship 2.4?" in page.text
        assert 'value="approve"' in page.text and 'value="reject"' not in page.text
        assert "Reject</button>" in (await gw.client.get(reject)).text
        assert (await gw.execution(started["id"]))["steps"]["approve"]["approvals"] == []  # a GET never decides

        decided = await gw.client.post(approve, data={"decision": "approve", "comment": "from the link"})
        assert decided.status_code == 200 and "You approved" in decided.text
        after = await gw.execution(started["id"])
        assert after["steps"]["approve"]["status"] == "succeeded"
        assert after["steps"]["approve"]["approvals"][0] | {"at": None} == {
            "approver": "boss", "decision": "approve", "comment": "from the link", "at": None, "digest": digest}
        audit = (await gw.client.get(f"/api/v1/executions/{started['id']}/audit")).json()["items"]
        [entry] = [a for a in audit if a["action"] == "approval.decided"]
        assert entry["data"] | {"decision": None, "evidence": None} == {"decision": None, "evidence": None,
                                                                       "digest": digest, "via": "link"}

        # used: both of its URLs are spent, to show and to decide
        for again in (await gw.client.get(reject), await gw.client.post(reject, data={"decision": "reject"})):
            assert again.status_code == 409 and 'data-reason="used"' in again.text and "already used" in again.text
    token = approve.split("/decide/")[1].split("?")[0]
    assert "path=/decide/***" in caplog.text and token not in caplog.text  # a credential: never logged


async def test_a_tampered_expired_or_stale_link_is_refused_with_a_page_that_says_why(tmp_path: pathlib.Path) -> None:
    async with fake_service() as svc, running_gateway(env_with_key(tmp_path)) as gw:
        await gw.register(linked(f"{svc.url}/hook", show=["probe"]))
        started = await gw.start("release", {"v": "2.5"})
        body = await notification(svc, 1)
        approve = local(gw, body["approveUrl"])
        token = approve.split("/decide/")[1].split("?")[0]

        tampered = approve.replace(token, token[:-2] + ("AA" if not token.endswith("AA") else "BB"))
        answer = await gw.client.get(tampered)
        assert answer.status_code == 404 and 'data-reason="invalid"' in answer.text
        assert (await gw.client.get("/decide/not-a-token")).status_code == 404

        waiting = await gw.execution(started["id"])
        step = waiting["steps"]["approve"]
        past = LinkClaims("default", started["id"], "approve", step["attempts"], "boss",
                          step["approvalRequest"]["digest"], gw.runtime.now() - timedelta(seconds=1))
        expired = await gw.client.post(f"/decide/{issue(past, LINK_KEY)}", data={"decision": "approve"})
        assert expired.status_code == 410 and 'data-reason="expired"' in expired.text and "expired at" in expired.text

        assert (await gw.client.post("/api/v1/events", json={"type": "probe", "correlationKey": "2.5",
                                                              "payload": {"ok": True}})).status_code == 202
        stale = await gw.client.get(approve)  # the probe's output is shown: the digest changed since
        assert stale.status_code == 409 and 'data-reason="stale"' in stale.text
        assert (await gw.client.post(approve, data={"decision": "approve"})).status_code == 409
        assert (await gw.execution(started["id"]))["steps"]["approve"]["approvals"] == []


async def test_without_a_signing_key_notifications_carry_no_links(tmp_path: pathlib.Path) -> None:
    async with fake_service() as svc, running_gateway({"PUBLIC_URL": PUBLIC}) as gw:
        await gw.register(linked(f"{svc.url}/hook"))
        await gw.start("release", {"v": "2.6"})
        body = await notification(svc, 1)
        assert body["link"].startswith(PUBLIC) and "approveUrl" not in body and "links" not in body
