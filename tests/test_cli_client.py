"""The client commands of ``runbooks`` end to end against a real ``runbooks serve`` process
(started with ``--port``, ``--store sqlite:///...`` and ``--runbooks-dir``), exit codes included."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from gateway.cli import main
from gateway.client import ApiClient, Identity
from tests.gateway_fixtures import free_port

REPO = pathlib.Path(__file__).resolve().parent.parent
APPROVAL = {"id": "approve-me", "steps": [
    {"id": "prepare", "type": "conditional", "config": {"condition": {"field": "input.value", "operator": "gt",
                                                                      "value": 0}}},
    {"id": "approve", "type": "human-approval",
     "config": {"approvers": ["boss", "cto"], "message": "Ship ${input.value}?"}}]}
WAITS = {"id": "waits", "steps": [
    {"id": "wait", "type": "wait-for-event", "config": {"eventType": "ticket.closed", "correlationKey": "${input.ticket}"}},
    {"id": "after", "type": "conditional", "config": {"condition": {"field": "wait.payload.ok", "operator": "eq",
                                                                    "value": True}}}]}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("cli-client")
    runbooks = tmp / "runbooks"
    runbooks.mkdir()
    for doc in (APPROVAL, WAITS):
        (runbooks / f"{doc['id']}.json").write_text(json.dumps(doc))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PORT", "STORAGE_BACKEND", "RUNBOOKS_DIR")}
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port), "--store", f"sqlite:///{tmp / 'x.db'}",
         "--runbooks-dir", str(runbooks)], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, "runbooks serve did not start"
            time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)


def cli(server: str, capsys: pytest.CaptureFixture[str], *argv: str, user: str = "alice") -> tuple[int, str, str]:
    code = main([argv[0], "--server", server, "--user", user, *argv[1:]])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def started(server: str, capsys: pytest.CaptureFixture[str], runbook: str, input: dict[str, object]) -> str:
    code, out, _ = cli(server, capsys, "start", runbook, "--input", json.dumps(input), "--force", "--json")
    assert code == 0
    execution_id: str = json.loads(out)["id"]
    return execution_id


def wait_for(server: str, execution_id: str, predicate: object, within_s: float = 10) -> dict[str, object]:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        body = httpx.get(f"{server}/api/v1/executions/{execution_id}").json()
        if predicate(body):  # type: ignore[operator]
            return body  # type: ignore[no-any-return]
        time.sleep(0.05)
    raise AssertionError(f"execution {execution_id} never reached the state: {body}")


def test_start_approvals_approve_watch_status_list(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(server, capsys, "start", "approve-me", "--input", '{"value": 5}', "--context",
                         '{"legalBasis": "change CHG-1"}', "--force")
    assert code == 0 and err == ""
    execution_id = out.split()[1]
    assert out.startswith(f"execution {execution_id} of approve-me v1: ")
    wait_for(server, execution_id, lambda e: e["status"] == "awaiting_approval")

    code, out, _ = cli(server, capsys, "approvals", user="boss")
    assert code == 0 and f"{execution_id} approve (approve-me): 1 more approval(s) needed" in out
    assert "Ship 5?" in out
    assert cli(server, capsys, "approvals", user="intern")[1] == "nothing waits for your decision\n"
    code, out, _ = cli(server, capsys, "approvals", "--json", user="cto")
    assert [item["executionId"] for item in json.loads(out)["items"]] == [execution_id]

    code, out, err = cli(server, capsys, "approve", execution_id, "approve", user="intern")
    assert (code, out, err) == (1, "", "runbooks approve: 'intern' is not an approver of this step\n")

    watch = subprocess.Popen([sys.executable, "-m", "gateway.cli", "watch", execution_id, "--server", server],
                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)  # let watch connect: it prints the state it finds first in any case
        code, out, _ = cli(server, capsys, "approve", execution_id, "approve", "--comment", "go", user="boss")
        assert code == 0 and out == f"approve: succeeded; execution {execution_id} is completed\n"
        watched, watch_err = watch.communicate(timeout=30)
    finally:
        watch.kill()
    assert watch.returncode == 0, watch_err
    assert "approve                  succeeded" in watched and "\ncompleted\n" in watched

    code, out, _ = cli(server, capsys, "status", execution_id)
    assert code == 0 and out.startswith(f"execution {execution_id} of approve-me v1: completed")
    assert "approve                  succeeded         attempts 1" in out
    assert json.loads(cli(server, capsys, "status", execution_id, "--json")[1])["context"]["legalBasis"] == "change CHG-1"
    code, out, _ = cli(server, capsys, "list", "--status", "completed", "--runbook", "approve-me")
    assert code == 0 and execution_id in out and "completed" in out
    assert execution_id not in cli(server, capsys, "list", "--status", "running")[1]
    code, out, _ = cli(server, capsys, "logs", execution_id)
    assert code == 0 and "[approve] approval decision: approve" in out


def test_pause_resume_publish_logs_follow_and_refusals(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    execution_id = started(server, capsys, "waits", {"ticket": "T-9"})
    wait_for(server, execution_id, lambda e: e["steps"]["wait"]["status"] == "waiting")
    code, out, _ = cli(server, capsys, "pause", execution_id, "--reason", "maintenance")
    assert code == 0 and out == f"execution {execution_id} is paused\n"
    code, _, err = cli(server, capsys, "pause", execution_id)
    assert code == 1 and err.startswith("runbooks pause: ") and err.count("\n") == 1
    assert cli(server, capsys, "resume", execution_id)[1] == f"execution {execution_id} is running\n"

    follow = subprocess.Popen([sys.executable, "-m", "gateway.cli", "logs", execution_id, "--follow", "--server",
                               server], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        code, out, _ = cli(server, capsys, "publish", "ticket.closed", "T-9", "--payload", '{"ok": true}')
        assert (code, out) == (0, "delivered to 1 waiting step(s)\n")
        followed, follow_err = follow.communicate(timeout=30)
    finally:
        follow.kill()
    assert follow.returncode == 0, follow_err
    assert "execution paused" in followed and "[wait] " in followed
    assert followed.rstrip().splitlines()[-1].split()[1] == "info"
    assert "execution completed" in followed or "completed" in followed.splitlines()[-1]

    code, out, _ = cli(server, capsys, "publish", "ticket.closed", "nobody", "--json")
    assert code == 0 and json.loads(out) == {"delivered": 0, "retained": True}


def test_cancel_retry_replay_and_errors(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    first = started(server, capsys, "approve-me", {"value": 1})
    wait_for(server, first, lambda e: e["status"] == "awaiting_approval")
    with pytest.raises(SystemExit) as usage:
        main(["cancel", first, "--server", server])  # a reason is required
    assert usage.value.code == 2
    capsys.readouterr()
    code, out, _ = cli(server, capsys, "cancel", first, "--reason", "not needed")
    assert code == 0 and out == f"execution {first} is cancelled\n"
    audit = httpx.get(f"{server}/api/v1/executions/{first}/audit").json()["items"]
    assert any(e["action"] == "execution.cancelled" and e["reason"] == "not needed" for e in audit)

    second = started(server, capsys, "approve-me", {"value": 2})
    wait_for(server, second, lambda e: e["status"] == "awaiting_approval")
    assert cli(server, capsys, "approve", second, "approve", "--reject", user="cto")[0] == 0
    wait_for(server, second, lambda e: e["status"] == "failed")
    code, out, _ = cli(server, capsys, "retry", second, "approve", "--reason", "try again")
    assert code == 0 and out.startswith(f"approve: retried; execution {second} is ")
    wait_for(server, second, lambda e: e["steps"]["approve"]["status"] == "awaiting_approval")
    code, out, _ = cli(server, capsys, "replay", second)
    assert code == 0 and out.startswith(f"replay of {second}: execution ")
    replay_id = out.split()[4]
    assert httpx.get(f"{server}/api/v1/executions/{replay_id}").json()["replayOf"] == second

    assert cli(server, capsys, "status", "nope") == (1, "", "runbooks status: execution nope not found\n")
    assert cli(server, capsys, "retry", replay_id, "approve")[0] == 1
    code, _, err = cli(f"http://127.0.0.1:{free_port()}", capsys, "list")
    assert code == 1 and err.startswith("runbooks list: cannot reach http://127.0.0.1:") and err.count("\n") == 1
    code, _, err = cli(server, capsys, "start", "approve-me", "--input", "{bad")
    assert (code, err) == (2, "runbooks start: --input: not JSON: Expecting property name enclosed in double "
                              "quotes: line 1 column 2 (char 1)\n")


def test_identity_and_server_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"items": [], "nextCursor": None})

    with ApiClient("http://gw.test", Identity(token="t0k", user="u", tenant="t"),
                   transport=httpx.MockTransport(handler)) as client:
        client.get("/api/v1/executions", {"status": None, "limit": 5})
    assert seen[0].headers["Authorization"] == "Bearer t0k"
    assert (seen[0].headers["X-User-Id"], seen[0].headers["X-Tenant-Id"]) == ("u", "t")
    assert str(seen[0].url) == "http://gw.test/api/v1/executions?limit=5"

    monkeypatch.setenv("RUNBOOKS_SERVER", "http://127.0.0.1:9")  # discard port: nothing listens
    monkeypatch.setenv("RUNBOOKS_TOKEN", "from-env")
    errors: list[str] = []

    def unreachable(*argv: str) -> int:
        import io

        err = io.StringIO()
        from gateway.cli_client import run_client_command

        args = __import__("gateway.cli", fromlist=["_parser"])._parser().parse_args(list(argv))
        code = run_client_command(args, io.StringIO(), err)
        errors.append(err.getvalue())
        return code

    assert unreachable("list") == 1
    assert errors[0].startswith("runbooks list: cannot reach http://127.0.0.1:9")


def test_watch_follows_in_a_thread_too(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    execution_id = started(server, capsys, "waits", {"ticket": "T-10"})
    wait_for(server, execution_id, lambda e: e["steps"]["wait"]["status"] == "waiting")
    states: list[str] = []

    def follow() -> None:
        with ApiClient(server, Identity()) as client:
            states.extend(state["status"] for state in client.stream(execution_id))

    reader = threading.Thread(target=follow)
    reader.start()
    time.sleep(0.3)
    httpx.post(f"{server}/api/v1/events", json={"type": "ticket.closed", "correlationKey": "T-10",
                                                "payload": {"ok": False}})
    reader.join(timeout=20)
    assert not reader.is_alive() and states[0] == "running" and states[-1] == "completed"
