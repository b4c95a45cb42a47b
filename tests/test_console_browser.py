"""The web console in headless Chromium (Debian's, driven by Playwright): a real
``runbooks serve`` (SQLite in a temporary directory, examples/ as RUNBOOKS_DIR) with the demo
services, the deploy-approval example started from the Runbooks page, watched live,
approved as the right user after a refusal for the wrong one (the digest of what the step
shows on the page and sent with the decision), another execution cancelled
and its audit read (with the audit ledger's "verified" mark), a trigger switched off and on, a step's "Why" read and the step completed
by hand. Every test asserts the page asked no other host and logged no console
error. Screenshots go to tests/artifacts/. Skips without Chromium, except under CI=true.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.gateway_fixtures import free_port, wait_until_ready

CHROMIUM = "/usr/bin/chromium"
REPO = pathlib.Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "tests" / "artifacts"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
DEPLOY_INPUT = {"service": "checkout", "version": "2.14.0", "environment": "staging", "changeTicket": "CHG-1042"}

if not pathlib.Path(CHROMIUM).exists() or pytest.importorskip("playwright") is None:
    if os.environ.get("CI", "").lower() == "true":
        raise RuntimeError(f"{CHROMIUM} is missing under CI=true (.ci/run installs it)")
    pytest.skip(f"{CHROMIUM} is not installed", allow_module_level=True)

from playwright.sync_api import Browser, Page, expect, sync_playwright  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("console")
    demo = subprocess.Popen([sys.executable, str(REPO / "examples" / "demo_services.py"), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert demo.stdout is not None
    demo_url = demo.stdout.readline().split(" on ", 1)[1].strip()
    port = free_port()
    env = {**os.environ, "CALL_SERVICE_BASE_URL": demo_url}
    env.pop("RUNBOOKS_TOKENS_FILE", None)
    gateway = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port), "--store", f"sqlite:///{tmp / 'c.db'}",
         "--runbooks-dir", str(REPO / "examples")], env=env, cwd=REPO,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, gateway)
        yield url
    finally:
        for process in (gateway, demo):
            process.terminate()
            process.wait(timeout=20)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, args=ARGS, headless=True, viewport={"width": 1360, "height": 900})
            try:
                yield context  # type: ignore[misc]
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


class Watched:
    """A page whose requests and console errors are recorded."""

    def __init__(self, context: Any, server: str) -> None:
        self.page: Page = context.new_page()
        self.hosts: set[str] = set()
        self.errors: list[str] = []
        self.page.on("request", lambda request: self.hosts.add(urlsplit(request.url).netloc or request.url))
        self.page.on("console", lambda message: self.errors.append(message.text) if message.type == "error" else None)
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.set_default_timeout(15_000)
        self.server = server

    def check(self) -> None:
        expected = urlsplit(self.server).netloc
        assert self.hosts <= {expected}, f"requests to other hosts: {self.hosts - {expected}}"
        # a refused API call (403) is logged by Chromium as a failed resource load: not a page error
        errors = [e for e in self.errors if "status of 403" not in e and "status of 409" not in e]
        assert not errors, errors

    def sign_in(self, path: str, user: str, tenant: str = "default") -> None:
        self.page.goto(f"{self.server}{path}?user={user}&tenant={tenant}")
        expect(self.page.get_by_label("User")).to_have_value(user)  # prefilled from ?user=
        expect(self.page.get_by_label("Tenant")).to_have_value(tenant)
        self.page.get_by_role("button", name="Continue", exact=True).click()

    def close(self) -> None:
        self.page.close()


def _shot(page: Page, name: str, *, full_page: bool = True) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=full_page)


def _start_deploy(server: str, user: str) -> str:
    body = {"runbookId": "deploy-approval", "input": DEPLOY_INPUT, "context": {"legalBasis": "change CHG-1042"}}
    answer = httpx.post(f"{server}/api/v1/executions?force=true", json=body, headers={"X-User-Id": user})
    assert answer.status_code == 201, answer.text
    execution_id: str = answer.json()["id"]
    return execution_id


def test_start_from_runbooks_watch_live_and_approve(server: str, browser: Browser) -> None:
    watched = Watched(browser, server)
    page = watched.page
    try:
        watched.sign_in("/runbooks", "alice")
        expect(page.get_by_role("heading", name="Runbooks")).to_be_visible()
        page.get_by_role("button", name="Start deploy-approval").click()
        service = page.get_by_label("service *")
        service.fill("Checkout Service")  # the schema's pattern refuses it: the form is not sent
        page.get_by_label("version *").fill("2.14.0")
        page.get_by_label("environment *").select_option("staging")
        page.get_by_label("changeTicket *").fill("CHG-1042")
        page.get_by_label("Legal basis").fill("change CHG-1042")
        page.get_by_role("button", name="Start", exact=True).click()
        assert service.evaluate("e => [e.validity.valid, e.validationMessage]") == [
            False, "Must match ^[a-z0-9][a-z0-9-]*$"]
        assert "/executions/" not in page.url
        service.fill("checkout")
        page.get_by_role("button", name="Start", exact=True).click()
        page.wait_for_url(re.compile(r"/executions/[0-9a-f]{32}$"))
        execution_id = page.url.rsplit("/", 1)[1]

        approve_node = page.locator('g.node[data-step="approve"]')
        expect(approve_node).to_have_attribute("data-status", "awaiting_approval")  # live, through the stream
        expect(page.locator('g.node[data-step="build"]')).to_have_attribute("data-status", "succeeded")
        expect(page.get_by_role("button", name="Pause", exact=True)).to_be_enabled()
        expect(page.get_by_role("button", name="Resume", exact=True)).to_be_disabled()
        # the step that waits for a decision is selected by itself, with what it asks and of whom
        expect(approve_node).to_have_class(re.compile(r"\bselected\b"))
        waiting = page.get_by_role("region", name="Waiting for a decision")
        expect(waiting).to_contain_text(re.compile(r"CHG-1042: deploy checkout 2\.14\.0 \(commit [0-9a-f]{12}\) to "
                                                   r"staging\? Environment health: healthy\."))
        expect(waiting).to_contain_text("May decide: rm.jane, rm.omar, sre.lead.priya · 1 more approval needed")
        digest = httpx.get(f"{server}/api/v1/executions/{execution_id}").json()["steps"]["approve"]["approvalRequest"]["digest"]
        expect(waiting.locator("code.digest")).to_have_text(digest)
        _shot(page, "execution-graph.png", full_page=False)

        approve_node.click()  # alice is not an approver: refused, with the problem's detail
        page.get_by_role("button", name="Approve", exact=True).click()
        page.get_by_role("button", name="Confirm", exact=True).click()
        expect(page.get_by_role("alert")).to_have_text("'alice' is not an approver of this step")
        watched.close()

        watched = Watched(browser, server)
        page = watched.page
        page.goto(f"{server}/approvals")  # the identity is kept for the tab only: a new one asks again
        watched.sign_in("/approvals", "rm.jane")
        card = page.get_by_role("article").filter(has_text=execution_id[:12])
        expect(card).to_contain_text("CHG-1042: deploy checkout 2.14.0")
        expect(card).to_contain_text("1 more approval needed")
        _shot(page, "approvals.png")
        expect(card.locator("code.digest")).to_have_text(digest)
        card.get_by_label("Comment").fill("go")
        card.get_by_role("button", name="Approve", exact=True).click()
        with page.expect_request(lambda r: r.method == "POST" and r.url.endswith("/steps/approve/approvals")) as sent:
            page.get_by_role("button", name="Confirm", exact=True).click()
        assert json.loads(sent.value.post_data or "{}")["digest"] == digest  # the decision is bound to what was shown
        expect(page.get_by_text("Nothing waits for your decision.")).to_be_visible()

        page.goto(f"{server}/executions/{execution_id}")
        expect(page.locator('g.node[data-step="deploy"]')).to_have_attribute("data-status", "succeeded")
        expect(page.locator(".summary, .row").first).to_contain_text("completed")
        expect(page.get_by_role("region", name="Output of the execution")).to_contain_text('"status": "rolling-out"')
        page.get_by_role("tab", name="Evidence").click()
        expect(page.locator("code.sha").first).to_have_text(re.compile(r"^[0-9a-f]{64}$"))
        watched.check()
    finally:
        watched.close()


def test_cancel_another_execution_and_read_its_audit(server: str, browser: Browser) -> None:
    execution_id = _start_deploy(server, "bob")
    watched = Watched(browser, server)
    page = watched.page
    try:
        watched.sign_in(f"/executions/{execution_id}", "bob")
        expect(page.locator('g.node[data-step="approve"]')).to_have_attribute("data-status", "awaiting_approval")
        page.get_by_role("button", name="Cancel", exact=True).click()
        page.get_by_label("Reason").fill("release postponed")
        page.get_by_role("button", name="Confirm", exact=True).click()
        expect(page.locator('g.node[data-step="approve"]')).to_have_attribute("data-status", "cancelled")
        expect(page.get_by_role("button", name="Cancel", exact=True)).to_be_disabled()
        expect(page.get_by_role("button", name="Replay", exact=True)).to_be_enabled()
        page.get_by_role("tab", name="Audit").click()
        row = page.get_by_role("row").filter(has_text="execution.cancelled")
        expect(row).to_contain_text("bob")
        expect(row).to_contain_text("release postponed")
        mark = page.locator("#ledger-mark")  # the tenant's hash-chained ledger, checked as an auditor's verifier would
        expect(mark).to_have_attribute("data-verified", "true")
        expect(mark).to_contain_text("verified")

        page.get_by_role("link", name="Executions").click()
        expect(page.get_by_role("table", name="Executions")).to_contain_text("cancelled")
        expect(page.get_by_role("button", name=re.compile("^cancelled: [1-9]"))).to_be_visible()
        _shot(page, "executions.png")
        page.keyboard.press("Tab")  # keyboard reachable, focus visible

        page.get_by_role("link", name="Triggers").click()  # the schedule of examples/nightly-health-report.yaml
        row = page.get_by_role("row").filter(has_text="every-morning")
        expect(row).to_contain_text("0 6 * * * (Europe/Berlin)")
        row.get_by_role("button", name="Disable", exact=True).click()
        page.get_by_label("Reason").fill("holiday")
        page.get_by_role("button", name="Confirm", exact=True).click()
        expect(row.get_by_role("button", name="Enable", exact=True)).to_be_visible()
        row.get_by_role("button", name="Enable", exact=True).click()
        page.get_by_role("button", name="Confirm", exact=True).click()
        expect(row.get_by_role("button", name="Disable", exact=True)).to_be_visible()
        watched.check()
    finally:
        watched.close()


def test_why_and_complete_by_hand_on_the_step_view(server: str, browser: Browser) -> None:
    execution_id = _start_deploy(server, "carol")
    watched = Watched(browser, server)
    page = watched.page
    try:
        watched.sign_in(f"/executions/{execution_id}", "carol")
        approve_node = page.locator('g.node[data-step="approve"]')
        expect(approve_node).to_have_attribute("data-status", "awaiting_approval")
        why = page.get_by_role("region", name="Why")
        expect(why).to_contain_text("ready once 'environment-health' succeeded")
        page.locator('g.node[data-step="build"]').click()  # succeeded: nothing to take over
        expect(page.get_by_role("button", name="Complete by hand")).to_be_disabled()
        expect(page.get_by_role("button", name="Skip by hand")).to_be_disabled()
        approve_node.click()
        page.get_by_label("Output for Complete (JSON)").fill('{"approved": true, "approvals": []}')
        page.get_by_role("button", name="Complete by hand").click()
        page.get_by_label("Reason").fill("approved in the change meeting")
        page.get_by_role("button", name="Confirm", exact=True).click()
        expect(approve_node).to_have_attribute("data-status", "succeeded")
        expect(why).to_contain_text("completed by hand by carol: approved in the change meeting")
        expect(page.get_by_role("button", name="Complete by hand")).to_be_disabled()
        expect(page.locator('g.node[data-step="deploy"]')).to_have_attribute("data-status",
                                                                             re.compile("^(running|succeeded)$"))
        _shot(page, "by-hand.png")
        watched.check()
    finally:
        watched.close()


def test_validate_shows_problems_by_path_and_static_files_are_cached(server: str, browser: Browser) -> None:
    watched = Watched(browser, server)
    page = watched.page
    try:
        watched.sign_in("/runbooks", "carol")
        page.get_by_label("Runbook document (YAML or JSON)").fill("id: broken\nsteps:\n  - {id: a, type: nope}\n")
        page.get_by_role("button", name="Validate", exact=True).click()
        expect(page.get_by_role("list", name="Problems")).to_contain_text("steps[0].type: unknown step type 'nope'")
        expect(page.get_by_role("list", name="Problems")).to_contain_text("(step 'a', line 3)")  # where to look
        page.get_by_label("Runbook document (YAML or JSON)").fill(
            "id: console-made\nsteps:\n  - {id: gate, type: human-approval, config: {approvers: [carol]}}\n")
        page.get_by_role("button", name="Validate", exact=True).click()
        expect(page.get_by_text("Valid.")).to_be_visible()
        page.get_by_role("button", name="Register", exact=True).click()
        expect(page.get_by_text("Registered console-made version 1.")).to_be_visible()
        expect(page.get_by_role("table", name="Runbooks")).to_contain_text("console-made")
        for control in page.locator("input, select, textarea").all():  # every control has a label
            name = control.get_attribute("id")
            assert name and page.locator(f'label[for="{name}"]').count() == 1, name
        watched.check()
    finally:
        watched.close()
    asset = httpx.get(f"{server}/console/app.js")
    assert asset.headers["content-type"] == "text/javascript; charset=utf-8"
    again = httpx.get(f"{server}/console/app.js", headers={"If-None-Match": asset.headers["etag"]})
    assert again.status_code == 304
    deep = httpx.get(f"{server}/executions/no/such/page")
    assert deep.status_code == 200 and deep.headers["content-type"].startswith("text/html")
    assert httpx.get(f"{server}/api/v1/nothing").headers["content-type"] == "application/problem+json"


ELEVEN = {"id": "eleven-steps", "steps": [
    *[{"id": f"step-{n:02d}", "type": "conditional", "config": {"condition": {"field": "input.n", "operator": "gt",
                                                                             "value": 0}}} for n in range(1, 11)],
    {"id": "wrap-up", "type": "human-approval", "dependsOn": ["step-01", "step-10"],  # an edge across 9 levels
     "config": {"approvers": ["boss"], "message": "Close ${input.n}?"}}]}
ELEVEN["steps"][5]["dependsOn"] = ["step-02"]  # and a branch beside the chain

# every point of every edge that lies inside a node other than the edge's own two
CROSSINGS = """() => {
  const nodes = [...document.querySelectorAll("g.node")].map((g) => [g.dataset.step, g.querySelector("rect").getBoundingClientRect()]);
  const found = [];
  for (const path of document.querySelectorAll("path.edge")) {
    const m = path.getScreenCTM();
    for (let at = 0; at <= path.getTotalLength(); at += 3) {
      const p = path.getPointAtLength(at).matrixTransform(m);
      for (const [id, r] of nodes) if (id !== path.dataset.from && id !== path.dataset.to
          && p.x > r.left + 1 && p.x < r.right - 1 && p.y > r.top + 1 && p.y < r.bottom - 1) found.push(`${path.dataset.from}->${path.dataset.to} over ${id}`);
    }
  }
  return [...new Set(found)];
}"""
# every node within the graph's box and the window, and the page no wider than the window
CLIPPED = """() => {
  const box = document.querySelector(".graph").getBoundingClientRect();
  const out = [...document.querySelectorAll("g.node rect")].map((r) => [r.parentNode.dataset.step, r.getBoundingClientRect()])
    .filter(([, r]) => r.left < box.left || r.right > box.right || r.right > window.innerWidth).map(([id]) => id);
  return { out, pageWidth: document.documentElement.scrollWidth, window: window.innerWidth };
}"""


def test_a_long_runbook_fits_without_crossings_and_the_pages_work_at_420_px(server: str, browser: Browser) -> None:
    assert httpx.post(f"{server}/api/v1/runbooks", json=ELEVEN, headers={"X-User-Id": "dana"}).status_code == 201
    answer = httpx.post(f"{server}/api/v1/executions", json={"runbookId": "eleven-steps", "input": {"n": 3}},
                        headers={"X-User-Id": "dana"})
    execution_id = answer.json()["id"]
    watched = Watched(browser, server)
    page = watched.page
    try:
        for width, shot in ((1400, "graph-1400.png"), (420, "graph-420.png")):
            page.set_viewport_size({"width": width, "height": 900})
            watched.sign_in(f"/executions/{execution_id}", "dana") if width == 1400 else page.reload()
            expect(page.locator('g.node[data-step="wrap-up"]')).to_have_attribute("data-status", "awaiting_approval")
            expect(page.get_by_role("region", name="Waiting for a decision")).to_contain_text("Close 3?")
            _shot(page, shot)
            assert page.evaluate(CROSSINGS) == []
            assert page.evaluate(CLIPPED) == {"out": [], "pageWidth": width, "window": width}
        for path, heading in (("/executions", "Executions"), ("/runbooks", "Runbooks"), ("/approvals", "Approvals"),
                              ("/triggers", "Triggers")):
            page.goto(f"{server}{path}")
            expect(page.get_by_role("heading", name=heading, exact=True)).to_be_visible()
            assert page.evaluate("document.documentElement.scrollWidth") == 420, path
        _shot(page, "triggers-420.png")
        watched.check()
    finally:
        watched.close()
