"""End to end: every runbook in examples/, loaded from its file, run by the engine against
the fake HTTP service (CALL_SERVICE_BASE_URL points at it). Real clock; each test is fast."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from runtime import Runtime, Settings, ValidationError, open_runtime
from runtime.documents.validate import validate_document
from runtime.model.wire import load_document
from runtime.shell.step_types import StepTypes
from tests.fake_service import FakeService, Response, fake_service

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
LIMIT_S = 10


@pytest.fixture
async def svc() -> AsyncIterator[FakeService]:
    async with fake_service() as service:
        yield service


@pytest.fixture
async def ert(svc: FakeService) -> AsyncIterator[Runtime]:
    settings = Settings(default_max_retries=0, call_service_base_url=svc.url)
    async with open_runtime("memory", settings=settings) as runtime:
        yield runtime


async def until(rt: Runtime, execution_id: str, predicate: Any) -> Any:
    with trio.fail_after(LIMIT_S):
        async for execution in rt.watch(execution_id):
            if predicate(execution):
                return execution
    raise AssertionError(f"execution finished before the condition held: {await rt.get(execution_id)}")


async def finished(rt: Runtime, execution_id: str) -> Any:
    with trio.fail_after(LIMIT_S):
        return await rt.wait(execution_id)


def test_every_example_is_valid_and_documented() -> None:
    files = sorted(p for p in EXAMPLES.glob("*.yaml") if not p.name.endswith(".test.yaml"))
    assert {f.name for f in files} >= {"deploy-approval.yaml", "risk-assessment.yaml", "phishing-triage.yaml"}
    for path in files:
        doc = load_document(path)
        assert validate_document(doc, StepTypes()) == [], path.name
        assert doc["id"] == path.stem
        assert path.read_text().startswith("#"), f"{path.name} starts with a comment explaining it"
        for step in doc["steps"]:
            if step["type"] == "call-service":
                assert step["config"]["url"].startswith("/"), f"{path.name}: {step['id']} URL must be relative"


def test_phishing_triage_uses_every_step_type() -> None:
    doc = load_document(EXAMPLES / "phishing-triage.yaml")
    assert {s["type"] for s in doc["steps"]} == {"call-service", "wait-for-event", "human-approval",
                                                 "conditional", "loop"}


# ---- deploy-approval ---------------------------------------------------------------------------

DEPLOY_INPUT = {"service": "checkout", "version": "2.14.0", "environment": "production", "changeTicket": "CHG-1042"}


def script_deploy(svc: FakeService) -> None:
    svc.script("/ci/builds/checkout/2.14.0",
               Response(json={"status": "passed", "commit": "9f2c1ab", "artifact": "registry/checkout:2.14.0"}))
    svc.script("/environments/production/health", Response(json={"status": "healthy"}))
    svc.script("/deployments", Response(201, json={"deploymentId": "dep-77", "status": "rolling"}))


async def test_deploy_approval_end_to_end(ert: Runtime, svc: FakeService) -> None:
    script_deploy(svc)
    await ert.register_runbook(EXAMPLES / "deploy-approval.yaml")
    ex = await ert.start("deploy-approval", input=DEPLOY_INPUT, context={"tenantId": "shop", "userId": "ci-bot"})
    waiting = await until(ert, ex.id, lambda e: e.status == "awaiting_approval")
    assert svc.count("/deployments") == 0  # nothing deployed before the approval
    assert waiting.steps["build"].output["commit"] == "9f2c1ab"
    requested = [e for e in await ert.logs(ex.id, step_id="approve") if e.message == "approval requested"]
    assert requested[0].data["message"] == (
        "CHG-1042: deploy checkout 2.14.0 (commit 9f2c1ab) to production? Environment health: healthy.")
    assert svc.requests_to("/environments/production/health")[0].query == {"service": "checkout"}

    await ert.submit_approval(ex.id, "approve", approver="rm.jane", decision="approve", comment="go")
    final = await finished(ert, ex.id)
    assert final.status == "completed"
    assert final.output == {"deploymentId": "dep-77", "status": "rolling"}
    (deploy,) = svc.requests_to("/deployments")
    assert deploy.method == "POST"
    assert deploy.headers["idempotency-key"] == f"deploy-{ex.id}"
    assert deploy.headers["x-tenant-id"] == "shop" and deploy.headers["x-execution-id"] == ex.id
    body = deploy.json
    assert {k: body[k] for k in ("service", "version", "commit", "artifact", "environment", "changeTicket")} == {
        "service": "checkout", "version": "2.14.0", "commit": "9f2c1ab", "artifact": "registry/checkout:2.14.0",
        "environment": "production", "changeTicket": "CHG-1042"}
    assert [(a["approver"], a["decision"], a["comment"]) for a in body["approvals"]] == [("rm.jane", "approve", "go")]
    kinds = sorted(e.kind for e in await ert.evidence(ex.id))
    assert kinds == ["approval_decision", "approval_request", "http_response", "http_response", "http_response"]


async def test_deploy_approval_rejected_deploys_nothing(ert: Runtime, svc: FakeService) -> None:
    script_deploy(svc)
    await ert.register_runbook(EXAMPLES / "deploy-approval.yaml")
    ex = await ert.start("deploy-approval", input=DEPLOY_INPUT)
    await until(ert, ex.id, lambda e: e.status == "awaiting_approval")
    await ert.submit_approval(ex.id, "approve", approver="sre.lead.priya", decision="reject", comment="incident open")
    final = await finished(ert, ex.id)
    assert final.status == "failed" and final.error.code == "rejected"
    assert final.steps["deploy"].status == "pending"
    assert svc.count("/deployments") == 0


async def test_deploy_approval_red_build_stops_before_asking(ert: Runtime, svc: FakeService) -> None:
    script_deploy(svc)
    svc.script("/ci/builds/checkout/2.14.0", Response(409, json={"status": "failed"}))
    await ert.register_runbook(EXAMPLES / "deploy-approval.yaml")
    final = await finished(ert, (await ert.start("deploy-approval", input=DEPLOY_INPUT)).id)
    assert final.status == "failed"
    assert final.error.step_id == "build" and final.error.code == "http_status"
    assert svc.count("/ci/builds/checkout/2.14.0") == 1  # 409 is not retried
    assert final.steps["approve"].status == "pending"


async def test_deploy_approval_refuses_bad_input(ert: Runtime) -> None:
    await ert.register_runbook(EXAMPLES / "deploy-approval.yaml")
    with pytest.raises(ValidationError):
        await ert.start("deploy-approval", input={**DEPLOY_INPUT, "environment": "moon"})


# ---- risk-assessment ---------------------------------------------------------------------------

ALERT = {"alertId": "ALR-20931", "source": "edr", "host": "wks-0142", "indicators": ["198.51.100.7"]}


@pytest.mark.parametrize(("score", "escalated"), [(9, True), (7.5, True), (7, False), (2, False)])
async def test_risk_assessment_end_to_end(ert: Runtime, svc: FakeService, score: float, escalated: bool) -> None:
    svc.script("/analyze", Response(json={"riskScore": score, "category": "credential theft",
                                          "summary": "mimikatz-like process"}))
    svc.script("/incidents", Response(201, json={"incidentId": "INC-1"}))
    await ert.register_runbook(EXAMPLES / "risk-assessment.yaml")
    ex = await ert.start("risk-assessment", input=ALERT)
    final = await finished(ert, ex.id)
    assert final.status == "completed"
    assert final.output == {"alertId": "ALR-20931", "riskScore": score, "escalated": escalated}
    assert svc.requests_to("/analyze")[0].json == {"alertId": "ALR-20931", "source": "edr", "host": "wks-0142",
                                                   "indicators": ["198.51.100.7"]}
    taken, skipped = ("escalate", "auto-close") if escalated else ("auto-close", "escalate")
    assert final.steps[taken].status == "succeeded"
    assert final.steps[skipped].status == "skipped"
    assert final.steps["route"].output == {"result": escalated, "branch": [taken]}
    assert svc.count("/incidents") == (1 if escalated else 0)
    assert svc.count("/alerts/ALR-20931/close") == (0 if escalated else 1)
    if escalated:
        incident = svc.requests_to("/incidents")[0]
        assert incident.json["title"] == "credential theft on wks-0142"
        assert incident.headers["idempotency-key"] == f"incident-{ex.id}"
    # the join ran after the branch that was taken
    (note,) = svc.requests_to("/alerts/ALR-20931/notes")
    assert note.json == {"author": "runbook:risk-assessment", "executionId": ex.id, "riskScore": score,
                         "escalated": escalated, "branch": [taken]}
    assert final.steps["record-decision"].status == "succeeded"


# ---- phishing-triage ---------------------------------------------------------------------------

REPORT = {"reportId": "PH-5531", "ticketId": "SOC-8812", "reporter": "m.rossi@example.com"}
SOC = {"tenantId": "soc", "userId": "analyst.lee", "legalBasis": "GDPR Art. 6(1)(f)", "reason": "user report"}
URLS = ["https://login.examp1e.net/a", "https://cdn.example.org/x.js", "http://203.0.113.9/pay"]


def script_phishing(svc: FakeService, verdict: str) -> None:
    svc.script("/phishing/reports/PH-5531/analyze", Response(json={
        "sender": "it-support@examp1e.net", "subject": "Password expires today", "urls": URLS,
        "attachments": [{"name": "invoice.docm", "sha256": "ab" * 32}]}))
    svc.script("/sandbox/submissions", Response(202, json={"submissionId": "sb-42"}))
    svc.script("/phishing/score", Response(json={"verdict": verdict, "confidence": 0.93}))
    # the mail system is briefly busy: the purge is retried at once (Retry-After: 0)
    svc.script("/mail/purge", Response(503, headers={"Retry-After": "0"}), Response(json={"purged": 41}))


async def test_phishing_triage_malicious_path(svc: FakeService) -> None:
    script_phishing(svc, "malicious")
    settings = Settings(default_max_retries=0, call_service_base_url=svc.url)
    async with open_runtime("memory", settings=settings) as rt:
        await rt.register_runbook(EXAMPLES / "phishing-triage.yaml")
        with pytest.raises(ValidationError):  # requireLegalBasis
            await rt.start("phishing-triage", input=REPORT, context={"tenantId": "soc"})
        ex = await rt.start("phishing-triage", input=REPORT, context=SOC)
        waiting = await until(rt, ex.id, lambda e: e.steps["sandbox-result"].status == "waiting")
        assert waiting.status == "running"
        await until(rt, ex.id, lambda e: e.steps["url-reputation"].status == "succeeded")

        # progress from the sandbox does not pass the filter; the final report does
        running = await rt.publish_event("sandbox.detonation.completed", "sb-42", {"status": "running"}, tenant_id="soc")
        assert running.delivered == 0
        assert (await rt.get(ex.id)).steps["sandbox-result"].status == "waiting"
        wrong_tenant = await rt.publish_event("sandbox.detonation.completed", "sb-42",
                                              {"status": "completed"}, tenant_id="other")
        assert wrong_tenant.delivered == 0
        done = await rt.publish_event("sandbox.detonation.completed", "sb-42",
                                      {"status": "completed", "verdict": "malicious", "family": "Emotet"},
                                      tenant_id="soc")
        assert (done.delivered, done.retained) == (1, False)

        current = await until(rt, ex.id, lambda e: e.status == "awaiting_approval")
        assert current.steps["is-malicious"].output == {"result": True, "branch": ["approve-containment"]}
        assert current.steps["close-as-benign"].status == "skipped"
        assert svc.count("/mail/purge") == 0
        await rt.submit_approval(ex.id, "approve-containment", approver="soc.lead.ben", decision="approve",
                                 comment="confirmed campaign")
        final = await finished(rt, ex.id)

    assert final.status == "completed"
    assert final.output == {"reportId": "PH-5531", "verdict": "malicious", "confidence": 0.93, "contained": True}
    statuses = {sid: s.status.value for sid, s in final.steps.items()}
    assert statuses == {
        "analyze-report": "succeeded", "detonate": "succeeded", "sandbox-result": "succeeded",
        "url-reputation": "succeeded", "score": "succeeded", "is-malicious": "succeeded",
        "approve-containment": "succeeded", "purge-messages": "succeeded", "block-sender": "succeeded",
        "close-as-benign": "skipped", "notify-reporter": "succeeded",
    }
    # loop: one lookup per URL, in item order, each with its own idempotency key
    lookups = svc.requests_to("/intel/url-reputation")
    assert sorted(r.query["url"] for r in lookups) == sorted(URLS)
    assert final.steps["url-reputation"].output == [{"ok": True, "path": "/intel/url-reputation"}] * 3
    assert final.steps["url-reputation"].progress == {"done": 3, "total": 3}
    # the score saw the sandbox payload and the reputations
    score = svc.requests_to("/phishing/score")[0].json
    assert score["sandbox"] == {"status": "completed", "verdict": "malicious", "family": "Emotet"}
    assert len(score["urlReputation"]) == 3
    # purge was retried once (503) with one idempotency key
    purges = svc.requests_to("/mail/purge")
    assert len(purges) == 2
    assert {p.headers["idempotency-key"] for p in purges} == {f"purge-{ex.id}"}
    assert svc.requests_to("/sandbox/submissions")[0].headers["idempotency-key"] == f"sandbox-{ex.id}"
    assert svc.requests_to("/notifications")[0].json == {
        "to": "m.rossi@example.com", "template": "phishing-report-outcome", "reportId": "PH-5531",
        "verdict": "malicious"}
    assert svc.count("/tickets/SOC-8812/close") == 0


async def test_phishing_triage_benign_path_with_an_early_sandbox_event(ert: Runtime, svc: FakeService) -> None:
    script_phishing(svc, "benign")
    await ert.register_runbook(EXAMPLES / "phishing-triage.yaml")
    # the sandbox answers before the runbook waits: the event is retained and handed over
    early = await ert.publish_event("sandbox.detonation.completed", "sb-42",
                                    {"status": "completed", "verdict": "clean"}, tenant_id="soc")
    assert (early.delivered, early.retained) == (0, True)
    ex = await ert.start("phishing-triage", input=REPORT, context=SOC)
    final = await finished(ert, ex.id)
    assert final.status == "completed"
    assert final.steps["sandbox-result"].output["payload"] == {"status": "completed", "verdict": "clean"}
    assert final.steps["is-malicious"].output == {"result": False, "branch": ["close-as-benign"]}
    for skipped in ("approve-containment", "purge-messages", "block-sender"):
        assert final.steps[skipped].status == "skipped"
    assert final.steps["notify-reporter"].status == "succeeded"
    assert svc.requests_to("/tickets/SOC-8812/close")[0].json == {
        "resolution": "benign", "verdict": "benign", "confidence": 0.93}
    assert svc.count("/mail/purge") == 0 and svc.count("/mail/blocklist") == 0
    assert final.output["contained"] is False


async def test_phishing_triage_rejected_containment_fails_for_manual_handling(ert: Runtime, svc: FakeService) -> None:
    script_phishing(svc, "suspicious")
    await ert.register_runbook(EXAMPLES / "phishing-triage.yaml")
    await ert.publish_event("sandbox.detonation.completed", "sb-42", {"status": "completed"}, tenant_id="soc")
    ex = await ert.start("phishing-triage", input=REPORT, context=SOC)
    await until(ert, ex.id, lambda e: e.status == "awaiting_approval")
    await ert.submit_approval(ex.id, "approve-containment", approver="ir.manager.kim", decision="reject",
                              comment="internal phishing simulation")
    final = await finished(ert, ex.id)
    assert final.status == "failed" and final.error.code == "rejected"
    assert svc.count("/mail/purge") == 0 and svc.count("/notifications") == 0
    decisions = [a for a in await ert.audit(ex.id) if a.action == "approval.decided"]
    assert decisions[0].legal_basis == "GDPR Art. 6(1)(f)"


# ---- nightly-health-report and siem-alert-rule (triggers) -------------------------------------

async def test_nightly_health_report_is_scheduled_and_posts_with_its_secret(
        ert: Runtime, svc: FakeService, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNBOOKS_SECRET_REPORT_TOKEN", "demo-token")
    svc.script("/environments/production/health", Response(json={"status": "healthy"}))
    await ert.register_runbook(EXAMPLES / "nightly-health-report.yaml")
    [trigger] = await ert.list_triggers()
    assert (trigger.kind, trigger.schedule, trigger.timezone) == ("schedule", "0 6 * * *", "Europe/Berlin")
    assert trigger.next_run_at is not None and trigger.next_run_at > ert.now()
    context = {"trigger": {"kind": "schedule", "id": "every-morning", "at": "2026-01-01T05:00:00Z"}}
    ex = await ert.start("nightly-health-report", input={"environment": "production"}, context=context)
    final = await finished(ert, ex.id)
    assert final.status == "completed", final.error
    (report,) = svc.requests_to("/reports/health")
    assert report.headers["authorization"] == "Bearer demo-token"
    assert report.json == {"environment": "production", "status": "healthy", "runAt": "2026-01-01T05:00:00Z"}


async def test_siem_alert_rule_assesses_severe_alerts_with_a_child(ert: Runtime, svc: FakeService) -> None:
    svc.script("/analyze", Response(json={"riskScore": 9, "category": "credential theft", "summary": "x"}))
    svc.script("/incidents", Response(201, json={"incidentId": "INC-1"}))
    await ert.register_runbook(EXAMPLES / "risk-assessment.yaml")
    await ert.register_runbook(EXAMPLES / "siem-alert-rule.yaml")
    payload = {"severity": 9, "source": "edr", "host": "wks-0142", "indicators": ["198.51.100.7"]}
    quiet = await ert.publish_event("siem.alert", "ALR-1", {**payload, "severity": 3}, tenant_id="soc")
    assert quiet.delivered == 0
    assert (await ert.publish_event("siem.alert", "ALR-20931", payload, tenant_id="soc")).delivered == 1
    [rule_run] = (await ert.list_executions(runbook_id="siem-alert-rule", tenant_id="soc")).items
    final = await finished(ert, rule_run.id)
    assert final.status == "completed", final.error
    assert final.steps["assess"].output == {"alertId": "ALR-20931", "riskScore": 9, "escalated": True}
    (record,) = svc.requests_to("/alerts/ALR-20931/assessment")
    assert record.json == {"riskScore": 9, "escalated": True}
    child = await ert.fetch(final.steps["assess"].child_execution_id)
    assert child.tenant_id == "soc" and child.parent_execution_id == final.id
