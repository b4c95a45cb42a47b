"""The client commands of ``runbooks`` end to end against a real ``runbooks serve`` process
(started with ``--port``, ``--store sqlite:///...`` and ``--runbooks-dir``), exit codes included;
a server restarted under ``watch`` and ``logs --follow``; and a command queued (202) because
the process that owns the execution is stopped (two processes on PostgreSQL)."""

from __future__ import annotations

import io
import json
import os
import pathlib
import re
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
import trio

from gateway.cli import _parser, main
from gateway.cli_client import run_client_command
from gateway.client import ApiClient, ApiError, Identity
from runtime import open_runtime
from tests.cluster_nodes import nodes
from tests.gateway_fixtures import free_port, wait_until_ready

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
PICKY = {"id": "picky", "steps": [
    {"id": "wait", "type": "wait-for-event", "config": {"eventType": "build.done", "correlationKey": "B-1",
                                                        "filter": {"field": "payload.ok", "operator": "eq",
                                                                   "value": True}}}]}
TWINS = {"id": "twins", "steps": [
    {"id": "wait", "type": "wait-for-event", "config": {"eventType": "never", "correlationKey": "twins"}}]}
TWIN_IDS = ("feedface" + "a" * 24, "feedface" + "b" * 24)  # one 8-character prefix, two executions


@contextmanager
def served(directory: pathlib.Path, port: int | None = None) -> Iterator[str]:
    """``runbooks serve`` on SQLite in ``directory`` (its runbooks: ``directory/runbooks``); SIGTERM at the end."""
    port = port or free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PORT", "STORAGE_BACKEND", "RUNBOOKS_DIR")}
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port), "--store",
         f"sqlite:///{directory / 'x.db'}", "--runbooks-dir", str(directory / "runbooks")], cwd=REPO, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, process)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)


def with_runbooks(directory: pathlib.Path, *docs: dict[str, object]) -> pathlib.Path:
    (directory / "runbooks").mkdir()
    for doc in docs:
        (directory / "runbooks" / f"{doc['id']}.json").write_text(json.dumps(doc))
    return directory


async def two_twins(database: pathlib.Path) -> None:
    """Two executions whose ids share their first 8 characters (ids are random otherwise)."""
    async with open_runtime(f"sqlite:///{database}") as rt:
        await rt.register_runbook(TWINS)
        for twin in TWIN_IDS:
            await rt.starter.start("twins", {}, {"userId": "alice"}, force=True, execution_id=twin)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory = with_runbooks(tmp_path_factory.mktemp("cli-client"), APPROVAL, WAITS, PICKY)
    trio.run(two_twins, directory / "x.db")
    with served(directory) as url:
        yield url


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
    waiting = wait_for(server, execution_id, lambda e: e["status"] == "awaiting_approval")
    digest = waiting["steps"]["approve"]["approvalRequest"]["digest"]  # type: ignore[index]
    assert f"digest {digest}" in cli(server, capsys, "status", execution_id)[1]

    code, out, _ = cli(server, capsys, "approvals", user="boss")
    assert code == 0 and f"{execution_id} approve (approve-me): 1 more approval(s) needed" in out
    # the hint is a command that works as it is written: with the identity (and server) it needs
    assert f"approve with `runbooks approve {execution_id} approve --server {server} --user boss`" in out
    assert "Ship 5?" in out and f"digest {digest}" in out
    assert cli(server, capsys, "approvals", user="intern")[1] == "nothing waits for your decision\n"
    code, out, _ = cli(server, capsys, "approvals", "--json", user="cto")
    assert [item["executionId"] for item in json.loads(out)["items"]] == [execution_id]

    code, out, err = cli(server, capsys, "approve", execution_id, "approve", user="intern")
    assert (code, out, err) == (1, f"approve: Ship 5?\ndeciding on digest {digest}\n",
                                "runbooks approve: 'intern' is not an approver of this step\n")
    code, out, err = cli(server, capsys, "approve", execution_id, "approve", "--digest", "0" * 64, user="boss")
    assert code == 1 and out == "" and f"now shows digest {digest}" in err  # not what boss reviewed: refused

    watch = subprocess.Popen([sys.executable, "-m", "gateway.cli", "watch", execution_id, "--server", server],
                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)  # let watch connect: it prints the state it finds first in any case
        code, out, _ = cli(server, capsys, "approve", execution_id, "approve", "--comment", "go", user="boss")
        assert code == 0 and out == (f"approve: Ship 5?\ndeciding on digest {digest}\n"
                                     f"approve: succeeded; execution {execution_id} is completed\n")
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
    header, *rows = out.splitlines()
    assert code == 0 and header.split() == ["EXECUTION", "STATUS", "RUNBOOK", "VERSION", "CREATED"]
    assert any(row.split()[:4] == [execution_id, "completed", "approve-me", "v1"] for row in rows)
    starts = {line.index(word) for line in out.splitlines() for word in line.split()[1:2]}
    assert starts == {header.index("STATUS")}  # aligned columns
    assert cli(server, capsys, "list", "--status", "timed_out", "--runbook", "approve-me")[1] == (
        "no executions with status timed_out of runbook approve-me\n")
    assert execution_id not in cli(server, capsys, "list", "--status", "running")[1]
    code, out, _ = cli(server, capsys, "logs", execution_id)
    assert code == 0 and "[approve] approval decision: approve" in out
    audit = httpx.get(f"{server}/api/v1/executions/{execution_id}/audit").json()["items"]
    assert [a["data"]["digest"] for a in audit if a["action"] == "approval.decided"] == [digest]


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
    assert code == 0 and json.loads(out) == {"delivered": 0, "retained": True, "refusedByFilter": 0}
    code, out, _ = cli(server, capsys, "publish", "ticket.closed", "nobody")
    assert out == "not delivered: no step waits for it; retained for the first step that will take it\n"


def test_publish_says_when_a_waiting_step_s_filter_refused_the_event(server: str,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    execution_id = started(server, capsys, "picky", {})
    wait_for(server, execution_id, lambda e: e["steps"]["wait"]["status"] == "waiting")
    code, out, _ = cli(server, capsys, "publish", "build.done", "B-1", "--payload", '{"ok": false}')
    assert (code, out) == (0, "not delivered: a step waits but its filter refused the event (1 step(s)); "
                              "retained for the first step that will take it\n")
    refused = httpx.post(f"{server}/api/v1/events", json={"type": "build.done", "correlationKey": "B-1",
                                                          "payload": {"ok": False}}).json()
    assert refused == {"delivered": 0, "retained": True, "refusedByFilter": 1}
    code, out, _ = cli(server, capsys, "publish", "build.done", "B-1", "--payload", '{"ok": true}')
    assert (code, out) == (0, "delivered to 1 waiting step(s)\n")


def test_cancel_retry_replay_and_errors(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    first = started(server, capsys, "approve-me", {"value": 1})
    wait_for(server, first, lambda e: e["status"] == "awaiting_approval")
    with pytest.raises(SystemExit) as usage:
        main(["cancel", first, "--server", server])  # a reason is required
    assert usage.value.code == 2
    capsys.readouterr()
    code, out, _ = cli(server, capsys, "cancel", first, "--reason", "not needed")
    assert code == 0 and out == f"execution {first} is cancelled\n"
    code, out, err = cli(server, capsys, "cancel", first, "--reason", "twice")  # says so, and that is fine
    assert (code, out, err) == (0, f"execution {first} was already cancelled\n", "")
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

    assert cli(server, capsys, "status", "nope") == (1, "", "runbooks status: execution nope not found (a prefix "
                                                            "of an id needs at least 8 characters)\n")
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


def test_a_read_beside_a_stream_waits_for_a_restarting_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """``logs --follow`` reads the new entries each time the stream gives a state; the server
    can go away just after (a restart): that read waits for it as the stream does, and a
    refusal that is an answer (404) is not retried."""
    sleeps: list[float] = []
    monkeypatch.setattr("gateway.client.time.sleep", sleeps.append)
    calls = iter([httpx.ConnectError("Connection refused"), httpx.ConnectError("Connection refused"),
                  httpx.Response(200, json={"items": [], "nextCursor": None}),
                  httpx.Response(404, json={"detail": "execution x not found"})])

    def handler(request: httpx.Request) -> httpx.Response:
        answer = next(calls)
        if isinstance(answer, Exception):
            raise answer
        return answer

    notices: list[str] = []
    with ApiClient("127.0.0.1:9", Identity(user="ops"), transport=httpx.MockTransport(handler),
                   notice=notices.append) as client:
        assert client.get_while_following("/api/v1/executions/x/logs") == {"items": [], "nextCursor": None}
        with pytest.raises(ApiError, match="not found"):
            client.get_while_following("/api/v1/executions/x/logs")
    assert sleeps == [0.2, 0.5]
    assert [n.split(";")[1] for n in notices] == [" reconnecting to http://127.0.0.1:9 (1/12)...",
                                                  " reconnecting to http://127.0.0.1:9 (2/12)..."]


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


def test_short_ids_server_anywhere_and_problems_beyond_three(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    execution_id = started(server, capsys, "approve-me", {"value": 7})
    wait_for(server, execution_id, lambda e: e["status"] == "awaiting_approval")
    host_port = server.removeprefix("http://")
    # the 12 characters the console shows; --server before the command and without a scheme
    assert main(["--server", host_port, "--user", "boss", "status", execution_id[:12]]) == 0
    assert capsys.readouterr().out.startswith(f"execution {execution_id} of approve-me v1: awaiting_approval")
    code, out, _ = cli(server, capsys, "approve", execution_id[:8], "approve", user="boss")
    assert code == 0 and out.startswith("approve: Ship 7?\ndeciding on digest ")
    assert out.endswith(f"approve: succeeded; execution {execution_id} is completed\n")

    code, out, err = cli(server, capsys, "status", "feedface")
    assert (code, out) == (2, "") and err.count("\n") == 1
    assert err.startswith("runbooks status: 'feedface' is the start of 2 executions: ")
    assert f"{TWIN_IDS[0]} (twins, running)" in err and f"{TWIN_IDS[1]} (twins, running)" in err
    assert cli(server, capsys, "status", "feedfaceb")[1].startswith(f"execution {TWIN_IDS[1]} of twins v1: ")
    assert cli(server, capsys, "status", "feedfac")[:2] == (1, "")  # 7 characters: too short to be a prefix
    code, _, err = cli(server, capsys, "status", "0123456789ab")
    assert (code, err) == (1, "runbooks status: no execution starts with '0123456789ab' (among the 10,000 "
                              "newest executions of the tenant)\n")
    assert main(["--server", server, "validate", str(REPO / "examples" / "risk-assessment.yaml")]) == 2

    # a problem list is cut after three, and says how many more there are
    broken = {"id": "broken", "steps": [{"id": f"s{n}", "type": f"nope-{n}"} for n in range(5)]}
    answer = httpx.post(f"{server}/api/v1/runbooks", json=broken, headers={"X-User-Id": "alice"})
    assert answer.status_code == 422 and len(answer.json()["errors"]) == 5
    assert answer.json()["detail"].startswith("5 problems: steps[0].type: ")
    assert answer.json()["detail"].endswith("; and 2 more")
    bad_start = {"runbookId": 5, "version": "x", "input": {}, "context": 3, "force": 1}
    answer = httpx.post(f"{server}/api/v1/executions", json=bad_start, headers={"X-User-Id": "alice"})
    count = len(answer.json()["errors"])
    assert count > 3 and answer.json()["detail"].endswith(f"; and {count - 3} more")


def test_output_to_a_closed_pipe_ends_quietly(server: str) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # `| head -1` that has already gone
    try:
        result = subprocess.run([sys.executable, "-m", "gateway.cli", "list", "--server", server], cwd=REPO,
                                stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=30, check=False)
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (141, "")


def first_line(process: subprocess.Popen[str], within_s: float = 30) -> str:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], within_s)
    assert ready, "nothing printed"
    return process.stdout.readline()


def test_watch_and_logs_follow_reconnect_when_the_server_restarts(tmp_path: pathlib.Path) -> None:
    directory, port = with_runbooks(tmp_path, WAITS), free_port()
    with served(directory, port) as url:
        answer = httpx.post(f"{url}/api/v1/executions", json={"runbookId": "waits", "input": {"ticket": "R-1"}})
        execution_id = answer.json()["id"]
        wait_for(url, execution_id, lambda e: e["steps"]["wait"]["status"] == "waiting")
        followers = [subprocess.Popen([sys.executable, "-m", "gateway.cli", *argv, "--server", f"127.0.0.1:{port}"],
                                      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                     for argv in (["watch", execution_id[:12]], ["logs", execution_id, "--follow"])]
        try:
            assert "wait" in first_line(followers[0])  # watch shows the state it found: it is connected
            assert first_line(followers[1])
        except BaseException:
            for process in followers:
                process.kill()
            raise
    try:  # the server has stopped (SIGTERM) and starts again on the same port and store
        with served(directory, port) as url:
            httpx.post(f"{url}/api/v1/events", json={"type": "ticket.closed", "correlationKey": "R-1",
                                                     "payload": {"ok": True}}).raise_for_status()
            (watched, watch_err), (followed, follow_err) = [process.communicate(timeout=60) for process in followers]
    finally:
        for process in followers:
            process.kill()
    assert followers[0].returncode == 0, watch_err
    assert re.search(r"runbooks watch: .*; reconnecting to http://127\.0\.0\.1:\d+ \(1/12\)\.\.\.", watch_err)
    assert re.search(r"after\s+succeeded", watched) and "\ncompleted\n" in watched
    assert followers[1].returncode == 0, follow_err
    assert "runbooks logs: " in follow_err and "reconnecting" in follow_err
    assert "execution completed" in followed


@pytest.mark.postgres
@pytest.mark.slow
async def test_a_command_queued_for_a_stopped_owner_is_one_line_and_exit_0(schema: str,
                                                                          tmp_path: pathlib.Path) -> None:
    def run_cli(*argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = run_client_command(_parser().parse_args(list(argv)), out, err)
        return code, out.getvalue(), err.getvalue()

    async with nodes(schema, "http://127.0.0.1:9", tmp_path, LEASE_TTL_MS=60_000, FORWARD_WAIT_MS=300) as group, \
            httpx.AsyncClient(timeout=20, headers={"X-User-Id": "ops"}) as client:
        owner, other = await group.start("owner"), await group.start("other")
        assert (await client.post(f"{owner.url}/api/v1/runbooks", json=APPROVAL)).status_code == 201
        ids = []
        for value in (1, 2):
            answer = await client.post(f"{owner.url}/api/v1/executions", params={"force": "true"},
                                       json={"runbookId": "approve-me", "input": {"value": value}})
            ids.append(answer.json()["id"])
        with trio.fail_after(15):
            for execution_id in ids:
                while (await client.get(f"{other.url}/api/v1/executions/{execution_id}")).json()[  # noqa: ASYNC110
                        "status"] != "awaiting_approval":
                    await trio.sleep(0.05)
        owner.stall()  # SIGSTOP: it owns both and answers nothing; its lease has a minute to go
        code, out, err = await trio.to_thread.run_sync(
            run_cli, "approve", ids[0], "approve", "--server", other.url, "--user", "boss")
        assert (code, err) == (0, "")
        assert re.fullmatch(rf"approve: Ship 1\?\ndeciding on digest [0-9a-f]{{64}}\n"
                            rf"execution {ids[0]}: approve of approve queued as command \w+; "
                            r"the next owner applies it\n", out)
        code, out, err = await trio.to_thread.run_sync(
            run_cli, "cancel", ids[1], "--reason", "not now", "--server", other.url, "--json")
        assert (code, err) == (0, "") and json.loads(out)["status"] == "queued" and json.loads(out)["commandId"]
        owner.go_on()
        with trio.fail_after(15):
            while [(await client.get(f"{other.url}/api/v1/executions/{execution_id}")).json()[  # noqa: ASYNC110
                    "status"] for execution_id in ids] != ["completed", "cancelled"]:
                await trio.sleep(0.05)
