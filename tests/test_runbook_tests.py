"""``runbooks test`` and ``runbooks plan``: cases beside a runbook, run by the real engine on a
virtual clock with canned replies; the examples' own test files; the report, JUnit XML, exit
statuses; every problem of a bad file; a plan of a branching runbook.

The commands run in this process (``gateway.cli.main``): each case is a ``trio.run`` of its
own under ``MockClock``, so these tests are plain functions.
"""

from __future__ import annotations

import pathlib
import textwrap
from typing import Any
from xml.etree import ElementTree as ET

import pytest

from gateway.cli import main
from runtime.testing import find_test_files, load_suite, run_case
from runtime.testing.match import differences, url_matches

REPO = pathlib.Path(__file__).resolve().parent.parent
DAY_MS = 86_400_000


def write(directory: pathlib.Path, name: str, text: str) -> pathlib.Path:
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def outcome_of(test_file: pathlib.Path, case: int = 0) -> Any:
    suite, problems = load_suite(test_file, [])
    assert suite is not None, problems
    return run_case(suite, suite.cases[case])


FETCH = """\
    id: fetch-and-store
    steps:
      - id: fetch
        type: call-service
        config: {url: "http://127.0.0.1:1/things/${input.id}", method: POST, body: {id: "${input.id}"}}
        retryPolicy: {maxRetries: 7, initialDelayMs: 86400000, backoffMultiplier: 1, maxDelayMs: 86400000, jitter: false}
      - id: store
        type: call-service
        config: {url: /store, method: PUT, body: {thing: "${fetch}"}}
    output: "${fetch.name}"
"""


def fetch_cases(directory: pathlib.Path, cases: str) -> pathlib.Path:
    """FETCH and its test file: a case that passes, then ``cases`` (indented as list items)."""
    write(directory, "fetch-and-store.yaml", FETCH)
    return write(directory, "fetch-and-store.test.yaml", """\
        cases:
          - name: passes
            input: {id: T-1}
            replies: {fetch: {body: {name: widget}}, store: {status: 204}}
            expect: {status: completed}
""" + cases)


# ---------------------------------------------------------------------- the examples
def test_the_examples_own_test_files_pass(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "test", str(REPO / "examples"))
    assert status == 0, out
    lines = out.splitlines()
    examples = {p.name for p in (REPO / "examples").glob("*.test.yaml")}
    assert {"deploy-approval.test.yaml", "phishing-triage.test.yaml", "risk-assessment.test.yaml",
            "siem-alert-rule.test.yaml", "nightly-health-report.test.yaml"} <= examples
    assert all(line.startswith("PASS  ") for line in lines[:-1])
    assert {line.split(" > ")[0].rsplit("/", 1)[-1] for line in lines[:-1]} == examples
    assert lines[-1].startswith(f"{len(lines) - 1} passed in ")
    # each line says the real and the virtual time the case took: a four-hour timeout took 4 h
    assert any("nobody decides within four hours" in line and "4 h virtual" in line for line in lines)


def test_a_runbook_file_names_its_test_file_beside_it(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "test", str(REPO / "examples" / "risk-assessment.yaml"))
    assert status == 0
    assert all("risk-assessment.test.yaml > " in line for line in out.splitlines()[:-1])


# ---------------------------------------------------------------------- virtual time, no network
def test_a_week_of_daily_retries_runs_on_the_virtual_clock(tmp_path: pathlib.Path) -> None:
    write(tmp_path, "fetch-and-store.yaml", FETCH)
    test_file = write(tmp_path, "fetch-and-store.test.yaml", """\
        cases:
          - name: the service is down for a week
            input: {id: T-1}
            replies:
              fetch: [{status: 503}, {status: 503}, {status: 503}, {status: 503}, {status: 503}, {status: 503},
                      {status: 503}, {status: 200, body: {name: widget}}]
              store: {status: 204}
            expect:
              status: completed
              steps: {fetch: {status: succeeded, attempts: 8}}
              outputs: {execution.output: widget}
              calls: {fetch: 8, store: [{method: PUT, url: /store, body: {thing: {name: widget}}}]}
        """)
    outcome = outcome_of(test_file)
    assert outcome.execution.status.value == "completed"
    # the virtual clock went through seven days of backoff (no jitter: exactly one day each);
    # the URL is a closed local port: nothing was sent anywhere
    assert outcome.virtual_ms == 7 * DAY_MS
    assert [c.at_ms for c in outcome.calls if c.key == "fetch"] == [n * DAY_MS for n in range(8)]
    assert [c.answer for c in outcome.calls] == ["503"] * 7 + ["200", "204"]


def test_an_approval_timeout_of_four_hours_then_the_timeout_action(tmp_path: pathlib.Path) -> None:
    write(tmp_path, "gate.yaml", """\
        id: gate
        steps:
          - id: approve
            type: human-approval
            approvalConfig: {approvers: [ann], timeoutMs: 14400000, timeoutAction: approve}
          - id: after
            type: call-service
            config: {url: /after}
    """)
    test_file = write(tmp_path, "gate.test.yaml", """\
        cases:
          - name: silence approves
            replies: {after: {status: 200}}
            expect: {status: completed, outputs: {approve.autoApproved: true}}
        """)
    outcome = outcome_of(test_file)
    assert outcome.execution.status.value == "completed"
    assert outcome.virtual_ms == 4 * 3_600_000
    assert outcome.calls[0].at_ms == 4 * 3_600_000


# ---------------------------------------------------------------------- failures, readable
def test_a_failing_case_shows_expected_against_actual(tmp_path: pathlib.Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    test_file = fetch_cases(tmp_path, """\
          - name: expects what did not happen
            input: {id: T-2}
            replies:
              fetch: {status: 404, body: {error: no such thing}}
            expect:
              status: completed
              steps: {fetch: succeeded, store: {status: succeeded}}
              outputs: {fetch.name: widget}
              calls:
                fetch: [{method: POST, body: {id: T-9}}]
                store: 1
        """)
    status, out, _ = run(capsys, "test", str(test_file))
    assert status == 1
    lines = out.splitlines()
    assert lines[0].startswith(f"PASS  {test_file} > passes  (")
    assert lines[1].startswith(f"FAIL  {test_file} > expects what did not happen  (")
    report = [line.strip() for line in lines[2:]]
    assert report[:7] == [
        'status: expected "completed", got "failed" (step \'fetch\': http_status: POST '
        'http://127.0.0.1:1/things/T-2 answered 404)',
        'steps.fetch: expected "succeeded", got "failed" (http_status: POST http://127.0.0.1:1/things/T-2 answered 404)',
        'steps.store: expected "succeeded", got "pending"',
        'outputs.fetch.name: expected "widget", got (absent)',
        'calls.fetch[0].body.id: expected "T-9", got "T-2"',
        "calls.store: expected 1 call(s), got 0 call(s)",
        "what happened:",
    ]
    assert report[7:9] == ["0 s  fetch running", "0 s  fetch failed"]
    assert lines[-1].startswith("1 passed, 1 failed in ")


def test_a_call_with_no_canned_reply_fails_the_case_naming_the_step_and_the_request(
        tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, "fetch-and-store.yaml", FETCH)
    test_file = write(tmp_path, "fetch-and-store.test.yaml", """\
        cases:
          - name: store has no reply
            input: {id: T-1}
            replies: {fetch: {body: {name: widget}}}
            expect: {status: failed}
          - name: a list of replies is used up
            input: {id: T-2}
            replies: {fetch: [{status: 500}]}
            expect: {status: failed, steps: {fetch: {error: no_canned_reply, attempts: 2}}}
        """)
    status, out, _ = run(capsys, "test", str(test_file))
    assert status == 1
    assert ("no canned reply: step 'store' call 1 (the case has no replies for 'store'): "
            'PUT http://call-service.test/store {"thing": {"name": "widget"}}') in out
    # the failure is not retried, and the case fails even though it expected the execution to fail
    assert ("no canned reply: step 'fetch' call 2 (its list of 1 reply is used up (one call per reply)): "
            'POST http://127.0.0.1:1/things/T-2 {"id": "T-2"}') in out
    assert out.count("FAIL  ") == 2


def test_junit_xml_for_ci(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = fetch_cases(tmp_path, """\
          - name: wrong
            input: {id: T-1}
            replies: {fetch: {body: {name: widget}}, store: {status: 204}}
            expect: {outputs: {execution.output: gadget}}
        """)
    bad = write(tmp_path, "broken.test.yaml", "cases: []\nrunbook: fetch-and-store.yaml\n")
    junit = tmp_path / "results.xml"
    status, _, _ = run(capsys, "test", str(good), str(bad), "--junit", str(junit))
    assert status == 2  # a bad file wins over a failed case
    root = ET.parse(junit).getroot()
    assert (root.tag, root.get("tests"), root.get("failures"), root.get("errors")) == ("testsuites", "3", "1", "1")
    suite, broken = root.findall("testsuite")
    assert (suite.get("name"), suite.get("tests"), suite.get("failures")) == (str(good), "2", "1")
    fine, wrong = suite.findall("testcase")
    assert (fine.get("name"), fine.get("classname"), fine.find("failure")) == ("passes", "fetch-and-store", None)
    assert fine.find("properties/property").attrib == {"name": "virtualMs", "value": "0"}
    failure = wrong.find("failure")
    assert failure.get("message") == 'outputs.execution.output: expected "gadget", got "widget"'
    assert "what happened:" in failure.text
    error = broken.find("testcase/error")
    assert error.get("message") == f"{bad}: cases: must be a non-empty list of cases"


# ---------------------------------------------------------------------- bad files
def test_a_bad_test_file_reports_every_problem_with_its_path(tmp_path: pathlib.Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, "gate.yaml", """\
        id: gate
        steps:
          - {id: check, type: call-service, config: {url: /check}}
          - id: route
            type: conditional
            config: {condition: {field: check.ok, operator: eq, value: true}, trueBranch: approve, falseBranch: []}
          - {id: approve, type: human-approval, approvalConfig: {approvers: [ann]}}
    """)
    test_file = write(tmp_path, "gate.test.yaml", """\
        cases:
          - name: one
            replies:
              check: {status: 700, colour: red}
              route: {status: 200}
              nowhere: {status: 200}
            approvals: [{stepId: check, approver: ann, decision: maybe}]
            events: [{type: x}]
            expect: {status: done, steps: {check: finished}, verdict: ok}
          - name: one
            expect: {}
        """)
    status, out, _ = run(capsys, "test", str(test_file), str(tmp_path / "missing.yaml"))
    assert status == 2
    problems = [line.removeprefix("ERROR ") for line in out.splitlines() if line.startswith("ERROR ")]
    prefix = f"{test_file}: cases"
    assert problems == [
        f"{tmp_path / 'missing.yaml'}: no such file",
        f"{prefix}[0].replies.check.colour: unknown field (known: status, body, headers, error, match, delayMs)",
        f"{prefix}[0].replies.check.status: must be an integer from 100 to 599",
        f"{prefix}[0].replies.route: step 'route' (conditional) makes no outbound call: a reply for it would "
        "never be used",
        f"{prefix}[0].replies.nowhere: no step 'nowhere' (name a step of the runbook, or runbook/step for a "
        "step of a sub-runbook it runs)",
        f"{prefix}[0].events[0].key: required",
        f"{prefix}[0].approvals[0].stepId: 'check' is not a human-approval step of the runbook",
        f"{prefix}[0].approvals[0].decision: must be approve or reject",
        f"{prefix}[0].expect.verdict: unknown field (known: status, steps, outputs, calls, audit, error)",
        f"{prefix}[0].expect.status: must be one of pending, running, awaiting_approval, pausing, paused, "
        "completed, failed, cancelled, timed_out, refused",
        f"{prefix}[0].expect.steps.check.status: must be one of pending, running, retrying, waiting, "
        "awaiting_approval, succeeded, failed, rejected, skipped, cancelled",
        f"{prefix}[1].expect: expects nothing: give at least one of status, steps, outputs, calls, audit, error",
        f"{prefix}[1].name: 'one' is also the name of cases[0]",
    ]
    assert out.splitlines()[-1].startswith("0 passed, 2 files with problems in ")


def test_an_invalid_runbook_or_a_missing_one_is_a_bad_file(tmp_path: pathlib.Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, "loops.yaml", "id: loops\nsteps:\n  - {id: a, type: call-service, dependsOn: [b], config: {url: /a}}"
                                  "\n  - {id: b, type: nope, dependsOn: [a]}\n")
    write(tmp_path, "loops.test.yaml", "cases: [{name: x, expect: {status: completed}}]\n")
    orphan = write(tmp_path, "orphan.test.yaml", "cases: [{name: x, expect: {status: completed}}]\n")
    parent = write(tmp_path, "parent.yaml", "id: parent\nsteps:\n  - {id: child, type: run-runbook, "
                                            "config: {runbookId: somewhere-else}}\n")
    write(tmp_path, "parent.test.yaml", "cases: [{name: x, expect: {status: completed}}]\n")
    unreadable = write(tmp_path, "bad.test.yaml", "cases: [unclosed\n")
    status, out, _ = run(capsys, "test", str(tmp_path))
    assert status == 2
    assert f"ERROR {tmp_path / 'loops.yaml'}: steps[1].type: unknown step type 'nope'" in out
    assert f"ERROR {orphan}: no runbook beside it (looked for orphan.yaml, .yml, .json); name it with 'runbook:'" in out
    assert (f"ERROR {parent}: steps[0].config.runbookId: runbook 'somewhere-else' is not among the files given nor "
            "beside parent.yaml: a test cannot start it") in out
    assert f"ERROR {unreadable}: not valid YAML or JSON" in out
    assert "PASS" not in out and "FAIL" not in out


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["test"])
    assert exit_.value.code == 2
    capsys.readouterr()
    status, _, err = run(capsys, "plan", str(REPO / "examples" / "risk-assessment.yaml"), "--input", "{nope")
    assert status == 2
    assert err.startswith("runbooks plan: --input: not JSON")


# ---------------------------------------------------------------------- replies and requests
def test_grpc_replies_and_notifications_are_served_without_a_network(tmp_path: pathlib.Path) -> None:
    write(tmp_path, "inventory.yaml", """\
        id: inventory
        steps:
          - id: lookup
            type: call-service
            config: {protocol: grpc, target: "127.0.0.1:1", service: inv.Inventory, method: Get,
                     message: {sku: "${input.sku}"}}
            retryPolicy: {maxRetries: 2, initialDelayMs: 1000, jitter: false}
          - id: approve
            type: human-approval
            approvalConfig: {approvers: ["role:stock"], notify: {url: "http://127.0.0.1:1/hook"}}
    """)
    test_file = write(tmp_path, "inventory.test.yaml", """\
        cases:
          - name: unavailable once, then found, then approved
            input: {sku: S-1}
            replies:
              lookup:
                - {code: UNAVAILABLE, message: restarting}
                - {match: {message: {sku: S-1}}, code: OK, message: {sku: S-1, count: "3"}}
              approve: {status: 200}
            approvals: [{atMs: 60000, stepId: approve, approver: ann, decision: approve, roles: [stock]}]
            expect:
              status: completed
              steps: {lookup: {status: succeeded, attempts: 2}}
              outputs: {lookup.count: "3"}
              calls:
                lookup: [{service: inv.Inventory, method: Get}, {metadata: {x-tenant-id: default}}]
                approve: [{method: POST, url: "http://127.0.0.1:1/hook", body: {stepId: approve, approvers: ["role:stock"]}}]
              audit: [execution.started, approval.notified, {action: approval.decided, actor: ann}]
        """)
    outcome = outcome_of(test_file)
    from runtime.testing import verdict
    suite, _ = load_suite(test_file, [])
    assert verdict(suite.cases[0], outcome) == []
    assert [(c.key, c.kind, c.answer, c.notification) for c in outcome.calls] == [
        ("lookup", "grpc", "UNAVAILABLE", False), ("lookup", "grpc", "OK", False), ("approve", "http", "200", True)]


def test_an_approval_the_step_does_not_await_fails_the_case(tmp_path: pathlib.Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, "gate.yaml", "id: gate\nsteps:\n  - {id: approve, type: human-approval, "
                                 "approvalConfig: {approvers: [ann, cy], minApprovals: 2}}\n")
    test_file = write(tmp_path, "gate.test.yaml", """\
        cases:
          - name: bob is not an approver, ann decides twice, an event comes too late
            approvals:
              - {stepId: approve, approver: bob, decision: approve}
              - {atMs: 1000, stepId: approve, approver: ann, decision: approve}
              - {atMs: 2000, stepId: approve, approver: ann, decision: reject}
              - {atMs: 3000, stepId: approve, approver: cy, decision: approve}
            events: [{atMs: 9000, type: late, key: k}]
            expect: {status: completed}
        """)
    status, out, _ = run(capsys, "test", str(test_file))
    assert status == 1
    assert "approvals[0]: at 0 ms, bob could not approve 'approve': " in out
    assert "approvals[2]: at 2000 ms, ann could not reject 'approve': " in out
    assert "approvals[1]" not in out and "approvals[3]" not in out
    assert "events[0]: at 9000 ms: not handed over, the execution was completed by then (3000 ms)" in out


def test_an_execution_that_would_wait_forever_ends_the_case_at_once(tmp_path: pathlib.Path) -> None:
    write(tmp_path, "gate.yaml", "id: gate\nsteps:\n  - {id: approve, type: human-approval, "
                                 "approvalConfig: {approvers: [ann]}}\n")
    test_file = write(tmp_path, "gate.test.yaml", "cases: [{name: x, expect: {status: awaiting_approval}}]\n")
    outcome = outcome_of(test_file)
    assert (outcome.stopped, outcome.virtual_ms, outcome.execution.status.value) == ("waiting", 0, "awaiting_approval")


def test_matching_rules() -> None:
    assert url_matches("/things/*", "http://x.test/things/T-1")
    assert url_matches("/things?id=1", "http://x.test/things?id=1")
    assert not url_matches("/things", "http://x.test/things/T-1")
    assert url_matches("http://x.test/*/T-1", "http://x.test/things/T-1")
    assert differences({"a": 1, "b": [{"c": True}]}, {"a": 1.0, "b": [{"c": True, "d": 0}], "e": 2}) == []
    assert [d.path for d in differences({"a": True, "b": [1, 2]}, {"a": 1, "b": [1]})] == [".a", ".b"]


def test_the_paths_a_user_may_name(tmp_path: pathlib.Path) -> None:
    runbook = write(tmp_path, "fetch-and-store.yaml", FETCH)
    test_file = write(tmp_path, "fetch-and-store.test.yaml", "cases: [{name: x, expect: {status: completed}}]\n")
    for paths in ([str(runbook)], [str(test_file)], [str(tmp_path)], [str(runbook), str(test_file)]):
        tests, _, problems = find_test_files(paths)
        assert (tests, problems) == ([runbook.with_name("fetch-and-store.test.yaml")], []), paths


# ---------------------------------------------------------------------- plan
def test_plan_of_a_branching_runbook(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    replies = write(tmp_path, "replies.yaml", """\
        replies:
          analyze: {body: {riskScore: 8.5, category: c2, summary: beacon}}
          escalate: {status: 201, body: {incidentId: INC-1}}
        """)
    status, out, _ = run(capsys, "plan", str(REPO / "examples" / "risk-assessment.yaml"), "--replies", str(replies),
                         "--input", '{"alertId": "A-1", "source": "edr", "host": "h-1", "indicators": []}')
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == f"plan of risk-assessment v1, replies from {replies}; nothing was called"
    steps = [line.split()[:4] for line in lines[1:] if line[:4].strip() in ("1.", "2.", "3.", "4.", "-")]
    assert steps == [["1.", "+0", "s", "analyze"], ["2.", "+0", "s", "route"], ["3.", "+0", "s", "escalate"],
                     ["-", "+0", "s", "auto-close"], ["4.", "+0", "s", "record-decision"]]
    text = "\n".join(line.strip() for line in lines)
    assert "POST http://call-service.test/analyze" in text and "-> 200" in text
    assert ("route            conditional    succeeds\nready once 'analyze' succeeded\n"
            "condition analyze.riskScore = 8.5 gt 7 → true: took the true branch ('escalate')") in text
    assert "skipped: branch not taken by 'route'" in text
    assert "auto-close       call-service   is skipped" in text
    assert ("record-decision  call-service   would call\nPOST http://call-service.test/alerts/A-1/notes" in text
            and "-> no reply given: the plan cannot tell what comes after" in text)
    assert lines[-1] == "stops after 0 s at step 'record-decision': a call with no reply (give one with --replies)"


def test_plan_shows_what_a_waiting_step_would_wait_for(tmp_path: pathlib.Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    replies = write(tmp_path, "replies.json", '{"replies": {"build": {"body": {"commit": "c1", "artifact": "a"}},'
                                              ' "environment-health": {"body": {"status": "ok"}}}}')
    status, out, _ = run(capsys, "plan", str(REPO / "examples" / "deploy-approval.yaml"), "--replies", str(replies),
                         "--input", '{"service": "checkout", "version": "2.14.0", "environment": "production", '
                                    '"changeTicket": "CHG-1"}')
    assert status == 0
    text = "\n".join(line.strip() for line in out.splitlines())
    assert ("approve             human-approval would wait\nfor 1 approval(s) by rm.jane, rm.omar, sre.lead.priya, "
            "at most 4 h, then reject") in text
    assert "-            deploy              call-service   is not reached" in text
    assert out.splitlines()[-1] == "stops after 0 s: every step in progress waits for an answer the replies do not give"
    # a refused start is exit 1 with the reasons
    status, out, _ = run(capsys, "plan", str(REPO / "examples" / "deploy-approval.yaml"), "--input", "{}")
    assert status == 1
    assert "the start would be refused:" in out


async def test_runbooks_dir_skips_the_test_files_beside_the_runbooks() -> None:
    from gateway.serve import load_runbooks_dir
    from runtime import open_runtime

    async with open_runtime("memory") as rt:
        registered = await load_runbooks_dir(rt, str(REPO / "examples"))
    assert sorted(r.id for r in registered) == ["deploy-approval", "nightly-health-report", "phishing-triage",
                                                "risk-assessment", "siem-alert-rule"]
