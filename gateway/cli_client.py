"""The client commands of ``runbooks``: start, list, status, watch, approve, pause, resume,
cancel, retry, replay, logs, publish and approvals, against a running server.

Every command takes ``--server URL`` (default ``RUNBOOKS_SERVER``, else
``http://127.0.0.1:3000``), ``--token`` (default ``RUNBOOKS_TOKEN``), in development mode
``--user``/``--tenant``, and ``--json`` (print the API's JSON instead of text). Exit status:
0 done, 1 refused or failed (the problem's ``detail`` on stderr, one line), 2 usage.
``watch`` shows the live display of ``runbooks run`` and exits 0 only if the execution
completed. ``logs --follow`` prints the entries written so far, then follows the execution's
event stream and reads the entries after the last one seen each time its state changes
(entries are committed with the state changes they belong to), until it has finished.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any, TextIO

from gateway.cli_run import UsageError, json_argument
from gateway.client import FINISHED, ApiClient, ApiError, Identity
from gateway.display import Progress, output_text, summary

DEFAULT_SERVER = "http://127.0.0.1:3000"
Command = Callable[[ApiClient, argparse.Namespace, TextIO], int]


def add_client_commands(commands: Any) -> None:
    """Add every client command to the ``runbooks`` sub-parsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--server", default=None, help=f"the gateway (RUNBOOKS_SERVER, else {DEFAULT_SERVER})")
    common.add_argument("--token", default=None, help="bearer token (RUNBOOKS_TOKEN)")
    common.add_argument("--user", default=None, help="development mode: the user (X-User-Id)")
    common.add_argument("--tenant", default=None, help="development mode: the tenant (X-Tenant-Id)")
    common.add_argument("--json", action="store_true", help="print the API's JSON")

    def command(name: str, run: Command, help: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = commands.add_parser(name, parents=[common], help=help, description=help)
        parser.set_defaults(client_command=run)
        return parser

    start = command("start", _start, "start an execution of a runbook")
    start.add_argument("runbook")
    start.add_argument("--input", help="JSON text, or @file.json")
    start.add_argument("--context", help="JSON object (legalBasis, reason...), or @file.json")
    start.add_argument("--version", type=int, help="a version of the runbook (default: the latest)")
    start.add_argument("--force", action="store_true", help="start even if an identical execution is active")
    listing = command("list", _list, "list executions, newest first")
    listing.add_argument("--status")
    listing.add_argument("--runbook")
    listing.add_argument("--limit", type=int, default=50)
    command("status", _status, "show one execution and its steps").add_argument("id")
    command("watch", _watch, "follow an execution live until it ends").add_argument("id")
    approve = command("approve", _approve, "approve (or --reject) an approval step as the calling user")
    approve.add_argument("id")
    approve.add_argument("step")
    approve.add_argument("--reject", action="store_true")
    approve.add_argument("--comment")
    for name in ("pause", "resume", "cancel"):
        control = command(name, _control(name), f"{name} an execution")
        control.add_argument("id")
        control.add_argument("--reason", required=name == "cancel")
    retry = command("retry", _retry, "retry a failed step of a failed execution")
    retry.add_argument("id")
    retry.add_argument("step")
    retry.add_argument("--reason")
    replay = command("replay", _replay, "start a new execution with the same runbook version, input and context")
    replay.add_argument("id")
    replay.add_argument("--reason")
    logs = command("logs", _logs, "print an execution's log entries")
    logs.add_argument("id")
    logs.add_argument("--follow", action="store_true", help="keep printing until the execution ends")
    logs.add_argument("--step", help="only this step's entries")
    logs.add_argument("--level", help="minimum level")
    publish = command("publish", _publish, "publish an event to the steps waiting on it")
    publish.add_argument("type")
    publish.add_argument("key", help="the correlation key")
    publish.add_argument("--payload", help="JSON text, or @file.json")
    command("approvals", _approvals, "the approval steps waiting for my decision")


def run_client_command(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    identity = Identity(args.token or os.environ.get("RUNBOOKS_TOKEN") or None, args.user, args.tenant)
    server = args.server or os.environ.get("RUNBOOKS_SERVER") or DEFAULT_SERVER
    try:
        with ApiClient(server, identity) as client:
            code: int = args.client_command(client, args, out)
            return code
    except UsageError as exc:
        print(f"runbooks {args.command}: {exc}", file=err)
        return 2
    except ApiError as exc:
        print(f"runbooks {args.command}: {exc.detail}", file=err)
        return 1


def _print_json(value: Any, out: TextIO) -> None:
    print(json.dumps(value, ensure_ascii=False, indent=2), file=out)


# ---------------------------------------------------------------------------- commands

def _start(client: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    body = {"runbookId": args.runbook, "input": json_argument("--input", args.input, default={}),
            "context": json_argument("--context", args.context, default={}, mapping=True)}
    if args.version is not None:
        body["version"] = args.version
    execution = client.post("/api/v1/executions", body, params={"force": "true" if args.force else None})
    if args.json:
        _print_json(execution, out)
    else:
        print(f"execution {execution['id']} of {execution['runbookId']} v{execution['runbookVersion']}: "
              f"{execution['status']}", file=out)
    return 0


def _list(client: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    page = client.get("/api/v1/executions", {"status": args.status, "runbookId": args.runbook, "limit": args.limit})
    if args.json:
        _print_json(page, out)
        return 0
    for ex in page["items"]:
        print(f"{ex['id']}  {ex['status']:<17} {ex['runbookId']} v{ex['runbookVersion']}  {ex['createdAt']}", file=out)
    if page["nextCursor"]:
        print("(more: raise --limit, at most 1000)", file=out)
    return 0


def _status(client: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    execution = client.get(f"/api/v1/executions/{args.id}")
    if args.json:
        _print_json(execution, out)
        return 0
    print(f"execution {execution['id']} of {execution['runbookId']} v{execution['runbookVersion']}: "
          f"{summary(execution)}", file=out)
    for step_id, step in execution["steps"].items():
        error = f"  {step['error']['code']}: {step['error']['message']}" if step.get("error") else ""
        print(f"  {step_id:<24} {step['status']:<17} attempts {step['attempts']}{error}", file=out)
    text = output_text(execution)
    if text is not None:
        print(f"output: {text}", file=out)
    return 0


def _watch(client: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    progress = Progress(out)
    last: dict[str, Any] = {}
    for last in client.stream(args.id):
        if args.json:
            print(json.dumps(last, ensure_ascii=False), file=out, flush=True)
        else:
            progress.show(last)
    if not args.json:
        print(summary(last), file=out)
        text = output_text(last)
        if text is not None:
            print(text, file=out)
    return 0 if last.get("status") == "completed" else 1


def _approve(client: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    decision = {"decision": "reject" if args.reject else "approve", "comment": args.comment}
    execution = client.post(f"/api/v1/executions/{args.id}/steps/{args.step}/approvals", decision)
    return _show_execution(execution, args, out, f"{args.step}: {execution['steps'][args.step]['status']}; ")


def _control(action: str) -> Command:
    def control(client: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
        body = {"reason": args.reason} if args.reason else None
        return _show_execution(client.post(f"/api/v1/executions/{args.id}/{action}", body), args, out)

    return control


def _retry(client: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    body = {"reason": args.reason} if args.reason else None
    execution = client.post(f"/api/v1/executions/{args.id}/steps/{args.step}/retry", body)
    return _show_execution(execution, args, out, f"{args.step}: retried; ")


def _replay(client: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    body = {"reason": args.reason} if args.reason else None
    execution = client.post(f"/api/v1/executions/{args.id}/replay", body)
    return _show_execution(execution, args, out, f"replay of {args.id}: ")


def _show_execution(execution: dict[str, Any], args: argparse.Namespace, out: TextIO, prefix: str = "") -> int:
    if args.json:
        _print_json(execution, out)
    else:
        print(f"{prefix}execution {execution['id']} is {execution['status']}", file=out)
    return 0


def _logs(client: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    path, after = f"/api/v1/executions/{args.id}/logs", None

    def print_new() -> None:
        nonlocal after
        while True:
            page = client.get(path, {"stepId": args.step, "level": args.level, "after": after})
            for entry in page["items"]:
                print(json.dumps(entry, ensure_ascii=False) if args.json else _log_line(entry), file=out, flush=True)
                after = entry["seq"]
            if page["nextCursor"] is None:
                return

    print_new()
    if args.follow:
        for state in client.stream(args.id):
            print_new()
            if state["status"] in FINISHED:
                break
    return 0


def _log_line(entry: dict[str, Any]) -> str:
    step = f" [{entry['stepId']}]" if entry.get("stepId") else ""
    data = f" {json.dumps(entry['data'], ensure_ascii=False)}" if entry.get("data") else ""
    return f"{entry['at']} {entry['level']:<7}{step} {entry['message']}{data}"


def _publish(client: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    body = {"type": args.type, "correlationKey": args.key, "payload": json_argument("--payload", args.payload)}
    result = client.post("/api/v1/events", body)
    if args.json:
        _print_json(result, out)
    elif result["delivered"]:
        print(f"delivered to {result['delivered']} waiting step(s)", file=out)
    else:
        print("no step waits for it: retained for the first step that will", file=out)
    return 0


def _approvals(client: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = client.get("/api/v1/approvals", {"cursor": cursor, "limit": 200})
        items += page["items"]
        cursor = page["nextCursor"]
        if cursor is None:
            break
    if args.json:
        _print_json({"items": items, "nextCursor": None}, out)
        return 0
    if not items:
        print("nothing waits for your decision", file=out)
    for item in items:
        print(f"{item['executionId']} {item['stepId']} ({item['runbookId']}): {item['approvalsNeeded']} more "
              f"approval(s) needed; approve with `runbooks approve {item['executionId']} {item['stepId']}`", file=out)
        if item["message"]:
            print(f"    {item['message']}", file=out)
    return 0
