"""``runbooks run``: the examples' "run it locally" lines on a terminal (a pty), the prompts
(an approval shows its message; an event refused by the filter is asked for again), the
hint and exit without a terminal, and the options (--context, --base-url and
CALL_SERVICE_BASE_URL, --store, --secrets)."""

from __future__ import annotations

import io
import os
import pathlib
import pty
import re
import select
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from gateway.cli import main
from gateway.cli_run import RunOptions, UsageError, run_file, run_options

REPO = pathlib.Path(__file__).resolve().parent.parent
DEMO_URL = "http://127.0.0.1:3001"
RUN_S = 90


@pytest.fixture(scope="module")
def demo_url() -> Iterator[str]:
    """examples/demo_services.py on a free port (the examples' stand-in services)."""
    process = subprocess.Popen([sys.executable, str(REPO / "examples" / "demo_services.py"), "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("demo services on "), line
        yield line.split(" on ", 1)[1].strip()
    finally:
        process.terminate()
        process.wait(timeout=10)


def run_line(example: str) -> list[str]:
    """The example's "Run it locally" command, as its header comment writes it."""
    header = (REPO / "examples" / example).read_text().split("\n\n", 1)[0]
    lines = header.split("# Run it locally", 1)[1].splitlines()
    command = " ".join(line.lstrip("#").strip().rstrip("\\") for line in lines if line.startswith("#   "))
    return shlex.split(command)


class Terminal:
    """A process on a pseudo-terminal: read what it shows, type answers."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.fd, child = pty.openpty()
        self.process = subprocess.Popen(argv, stdin=child, stdout=child, stderr=child, cwd=REPO, close_fds=True,
                                        env={**os.environ, **(env or {})})
        os.close(child)
        self.screen = ""

    def expect(self, pattern: str, within_s: float = 45) -> str:
        deadline = time.monotonic() + within_s
        while not (found := re.search(pattern, self.screen)):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                raise AssertionError(f"{pattern!r} never appeared; the terminal shows:\n{self.screen}")
            try:
                self.screen += os.read(self.fd, 4096).decode(errors="replace")
            except OSError:  # the process has ended and closed the terminal
                raise AssertionError(f"{pattern!r} never appeared; the terminal shows:\n{self.screen}") from None
        self.screen = self.screen[found.end():]
        return found.group(0)

    def type(self, line: str) -> None:
        os.write(self.fd, (line + "\n").encode())

    def exit_status(self) -> int:
        return self.process.wait(timeout=RUN_S)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        os.close(self.fd)


def as_command(words: list[str], demo_url: str) -> list[str]:
    words = words[len(line_env(words)):]
    assert words[0] == "runbooks" and DEMO_URL in words
    return [sys.executable, "-m", "gateway.cli", *[demo_url if word == DEMO_URL else word for word in words[1:]]]


def line_env(words: list[str]) -> dict[str, str]:
    """The ``NAME=value`` words before the command, as the shell reads them."""
    env = {}
    for word in words:
        if not re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", word):
            break
        name, _, value = word.partition("=")
        env[name] = value
    return env


# the examples the test below runs as their headers say, and what each shows, in order;
# every example is one of these or of the two run (answering prompts) by the tests after it
RUN_BY_THEIR_HEADER = {
    "risk-assessment.yaml": [r"auto-close\s+succeeded", r"escalate\s+skipped|record-decision\s+succeeded",
                             r"\ncompleted"],
    "nightly-health-report.yaml": [r"check-health\s+succeeded", r"post-report\s+succeeded", r"\ncompleted"],
    "siem-alert-rule.yaml": [r"assess\s+succeeded", r"record\s+succeeded", r"\ncompleted",
                             r'"/alerts/ALR-20931/assessment"'],
}
WITH_PROMPTS = ("deploy-approval.yaml", "phishing-triage.yaml")  # the two tests after this one


def test_every_example_has_a_run_line_that_a_test_runs() -> None:
    examples = {path.name for path in (REPO / "examples").glob("*.yaml") if not path.name.endswith(".test.yaml")}
    assert examples == set(RUN_BY_THEIR_HEADER) | set(WITH_PROMPTS)
    for example in examples:
        assert "runbooks" in run_line(example), example


@pytest.mark.slow
@pytest.mark.parametrize("example", sorted(RUN_BY_THEIR_HEADER))
def test_an_example_without_prompts_runs_as_its_header_says(example: str, demo_url: str) -> None:
    words = run_line(example)
    terminal = Terminal(as_command(words, demo_url), line_env(words))
    try:
        for shown in RUN_BY_THEIR_HEADER[example]:
            terminal.expect(shown)
        assert terminal.exit_status() == 0
    finally:
        terminal.close()


@pytest.mark.slow
def test_deploy_approval_asks_with_the_rendered_message(demo_url: str) -> None:
    terminal = Terminal(as_command(run_line("deploy-approval.yaml"), demo_url))
    try:
        terminal.expect(r"approve: CHG-1042: deploy checkout 2\.14\.0 \(commit [0-9a-f]{12}\) to production\? "
                        r"Environment health: healthy\.")
        terminal.expect(r"approvers rm\.jane, rm\.omar, sre\.lead\.priya; 1 more approval\(s\) needed")
        terminal.expect(r"approve <user> \[comment\] \| reject <user> \[comment\]: ")
        terminal.type("approve intern")
        terminal.expect(r"refused: 'intern' is not an approver of this step")
        terminal.type("approve rm.jane ship it")
        terminal.expect(r"deploy\s+succeeded")
        terminal.expect(r"completed")
        terminal.expect(r'"deploymentId"')
        assert terminal.exit_status() == 0
    finally:
        terminal.close()


@pytest.mark.slow
def test_phishing_triage_asks_again_after_an_event_its_filter_refused(demo_url: str) -> None:
    words = run_line("phishing-triage.yaml")
    assert "--context" in words  # requireLegalBasis: the line gives one
    terminal = Terminal(as_command(words, demo_url))
    try:
        terminal.expect(r"sandbox-result: waiting for event 'sandbox\.detonation\.completed' with key 'SB-\w+'")
        terminal.type('{"status": "running", "progress": 40}')
        terminal.expect(r"sandbox-result still waits: the event did not match its filter")
        terminal.expect(r"payload JSON to send")
        terminal.type('{"status": "completed", "verdict": "malicious"}')
        terminal.expect(r'approve-containment: SOC-8812: purge "Invoice overdue" from billing@examp1e\.com')
        terminal.expect(r"approve <user>")
        terminal.type("approve soc.lead.ana contain it")
        terminal.expect(r"notify-reporter\s+succeeded")
        terminal.expect(r"completed")
        assert terminal.exit_status() == 0
    finally:
        terminal.close()


@pytest.mark.slow
def test_without_a_terminal_an_approval_prints_a_hint_and_exits_1(demo_url: str) -> None:
    command = as_command(run_line("deploy-approval.yaml"), demo_url)
    result = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=RUN_S,
                            cwd=REPO, check=False)
    assert result.returncode == 1
    hint = [line for line in result.stderr.splitlines() if line.startswith("approve: ")]
    assert len(hint) == 1, result.stderr
    assert "waits for approval by rm.jane, rm.omar, sre.lead.priya" in hint[0]
    assert "run on a terminal" in hint[0] and "runbooks approve " in hint[0]
    assert "stopped: every step in progress waits for an answer" in result.stderr
    assert re.search(r"approve\s+awaiting_approval", result.stdout)


# ---------------------------------------------------------------------------- options


def write(tmp_path: pathlib.Path, name: str, text: str) -> pathlib.Path:
    path = tmp_path / name
    path.write_text(text)
    return path


async def test_context_reaches_the_execution(tmp_path: pathlib.Path) -> None:
    doc = write(tmp_path, "legal.yaml", "id: legal\nrequireLegalBasis: true\noutput: '${context.legalBasis}'\n"
                "steps:\n  - {id: c, type: conditional, config: {condition: {field: input.n, operator: gt, value: 1}}}\n")
    out = io.StringIO()
    assert await run_file(doc, RunOptions(context={"legalBasis": "incident 7"}), out) == 0
    assert out.getvalue().rstrip().endswith('"incident 7"')
    out = io.StringIO()
    assert await run_file(doc, RunOptions(), out) == 1
    assert "context.legalBasis: required by this runbook" in out.getvalue()


async def test_a_relative_url_without_base_url_names_the_option(tmp_path: pathlib.Path) -> None:
    doc = write(tmp_path, "rel.yaml", "id: rel\nsteps:\n  - {id: s, type: call-service, config: {url: /x}}\n")
    out = io.StringIO()
    assert await run_file(doc, RunOptions(), out) == 1
    last = out.getvalue().strip().splitlines()[-1]
    assert last.startswith("failed: url '/x' is relative") and "--base-url" in last


class Args:
    def __init__(self, **values: object) -> None:
        self.input = self.context = self.base_url = self.secrets = self.trigger = self.event = None
        self.store, self.no_prompt, self.with_files = "memory", False, []
        self.__dict__.update(values)


def test_base_url_comes_from_the_flag_else_the_environment(tmp_path: pathlib.Path) -> None:
    env = {"CALL_SERVICE_BASE_URL": "http://env.test"}
    assert run_options(Args(), terminal=False, env=env).base_url == "http://env.test"
    assert run_options(Args(base_url="http://flag.test"), terminal=False, env=env).base_url == "http://flag.test"
    assert run_options(Args(), terminal=False, env={}).base_url is None
    with pytest.raises(UsageError, match=r"^--base-url: must be an absolute"):
        run_options(Args(base_url="svc.test"), terminal=False, env={})
    assert run_options(Args(), terminal=True, env={}).mode == "ask"
    assert run_options(Args(), terminal=False, env={}).mode == "hint"
    assert run_options(Args(no_prompt=True), terminal=True, env={}).mode == "wait"


def test_secrets_file_is_handed_to_the_runtime(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNBOOKS_SECRETS_FILE", "")  # restored (unset) after the test: run_options sets it
    secrets = write(tmp_path, "secrets.yaml", "shared: {token: s3cr3t}\n")
    run_options(Args(secrets=str(secrets)), terminal=False, env={})
    assert os.environ["RUNBOOKS_SECRETS_FILE"] == str(secrets.resolve())
    with pytest.raises(UsageError, match=r"^--secrets: no such file"):
        run_options(Args(secrets=str(tmp_path / "missing")), terminal=False, env={})
    with pytest.raises(UsageError, match=r"^--secrets: .*must be a mapping with 'shared' and/or 'tenants'"):
        run_options(Args(secrets=str(write(tmp_path, "bad.yaml", "token: s3cr3t\n"))), terminal=False, env={})


def test_bad_options_are_one_line_and_exit_2(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = str(REPO / "examples" / "risk-assessment.yaml")
    for argv, expected in (
        (["--store", "mongodb://x"], "runbooks run: --store: store URL 'mongodb://x' is not supported"),
        (["--input", "{not json"], "runbooks run: --input: not JSON"),
        (["--context", "[1]"], "runbooks run: --context: must be a JSON object"),
        (["--context", f"@{tmp_path / 'none.json'}"], "runbooks run: --context: cannot read"),
    ):
        assert main(["run", doc, *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith(expected) and err.count("\n") == 1, err


TRIGGERED = """id: triggered
triggers:
  - {id: daily, schedule: "0 6 * * *", input: {env: prod}, context: {reason: nightly}}
  - id: on-alert
    event: {type: alert, filter: {field: payload.severity, operator: gte, value: 7}}
    input: {env: "${event.payload.env}"}
    context: {reason: alert}
output: {env: "${input.env}", kind: "${context.trigger.kind}", id: "${context.trigger.id}", reason: "${context.reason}"}
steps:
  - {id: c, type: conditional, config: {condition: {field: input.env, operator: exists}}}
"""


async def test_a_triggered_runbook_runs_by_hand_as_its_trigger_would(tmp_path: pathlib.Path) -> None:
    doc = write(tmp_path, "triggered.yaml", TRIGGERED)
    out, err = io.StringIO(), io.StringIO()
    assert await run_file(doc, RunOptions(), out, err) == 1  # without: the input the trigger gives is missing
    assert "(this runbook is started by its triggers: `--trigger daily` or `--trigger on-alert` runs it as the " \
           "trigger would now)" in out.getvalue()

    out = io.StringIO()
    assert await run_file(doc, RunOptions(trigger="daily"), out, err) == 0
    assert '"env": "prod"' in out.getvalue() and '"kind": "schedule"' in out.getvalue()
    assert '"reason": "nightly"' in out.getvalue()
    out = io.StringIO()
    options = RunOptions(trigger="on-alert", event={"correlationKey": "A-1", "payload": {"severity": 9, "env": "dev"}})
    assert await run_file(doc, options, out, err) == 0 and '"env": "dev"' in out.getvalue()
    out = io.StringIO()
    options = RunOptions(input={"env": "mine"}, input_given=True, context={"reason": "by hand"}, trigger="daily")
    assert await run_file(doc, options, out, err) == 0
    assert '"env": "mine"' in out.getvalue() and '"reason": "by hand"' in out.getvalue()

    for options, said in [
        (RunOptions(trigger="nope"), "--trigger: the runbook has no trigger 'nope' (its triggers: daily, on-alert)"),
        (RunOptions(trigger="daily", event={}), "--event: trigger daily is a schedule, not an event rule"),
        (RunOptions(trigger="on-alert"), "--trigger on-alert is an event rule: give the event with --event"),
        (RunOptions(trigger="on-alert", event={"payload": {"severity": 3}}),
         "--event: the event does not pass the filter of trigger on-alert: it would start nothing")]:
        err = io.StringIO()
        assert await run_file(doc, options, io.StringIO(), err) == 2
        assert err.getvalue().startswith(f"runbooks run: {said}"), err.getvalue()
