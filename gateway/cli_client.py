"""The client commands of ``runbooks``: start, list, status, watch, approve, delegate, pause,
resume, cancel, retry, replay, logs, publish, approvals, explain, complete, skip and fork,
against a running server.

Every command takes ``--server URL`` (default ``RUNBOOKS_SERVER``, else
``http://127.0.0.1:3000``; ``host:port`` alone means http), ``--token`` (default
``RUNBOOKS_TOKEN``), in development mode ``--user``/``--tenant``, and ``--json`` (print the
API's JSON instead of text); the identity options and ``--server`` may also come before the
command. An execution is named by its id or by a unique prefix of at least 8 characters
(what the console shows), looked up among the tenant's newest executions. Exit status: 0
done, 1 refused or failed (the problem's ``detail`` on stderr, one line), 2 usage.

A command the server queued (``202``: the process that runs the execution did not answer
in time) prints the command's id; the execution's next owner applies it. ``cancel`` of an
execution that is already cancelled says so and exits 0. ``watch`` shows the live display
of ``runbooks run`` and exits 0 only if the execution completed. ``logs --follow`` prints
the entries written so far, then follows the execution's event stream and reads the entries
after the last one seen each time its state changes (entries are committed with the state
changes they belong to), until it has finished. Both reconnect (with ``Last-Event-ID``) when
the server restarts, saying so on stderr.

``approve`` binds the decision to what the approver was shown: it prints the step's message
and the digest of what the step shows, and sends that digest with the decision (or the one
given with ``--digest``, as ``status`` and ``approvals`` print it), so a decision on
something that changed meanwhile is refused rather than counted.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Callable
from typing import Any, TextIO
from urllib.parse import quote

from gateway.cli_run import UsageError, json_argument
from gateway.client import FINISHED, ApiClient, ApiError, Identity, Queued
from gateway.display import Progress, output_text, summary, table

DEFAULT_SERVER = "http://127.0.0.1:3000"
ID_LENGTH = 32  # an execution id: 32 hexadecimal digits
MIN_PREFIX = 8
SCAN_PAGES = 10  # a prefix is looked up among the tenant's 10,000 newest executions
Command = Callable[[ApiClient, argparse.Namespace, TextIO], int]


def add_connection_options(parser: argparse.ArgumentParser, *, default: Any = None) -> None:
    """``--server``, ``--token``, ``--user``, ``--tenant``: on the ``runbooks`` parser (before the
    command) with ``default=None``, and on each client command with ``default=SUPPRESS``, so
    that a value given before the command is not reset by the command's parser."""
    parser.add_argument("--server", default=default, help=f"the gateway (RUNBOOKS_SERVER, else {DEFAULT_SERVER})")
    parser.add_argument("--token", default=default, help="bearer token (RUNBOOKS_TOKEN)")
    parser.add_argument("--user", default=default, help="development mode: the user (X-User-Id)")
    parser.add_argument("--tenant", default=default, help="development mode: the tenant (X-Tenant-Id)")


def add_client_commands(commands: Any) -> None:
    """Add every client command to the ``runbooks`` sub-parsers."""
    common = argparse.ArgumentParser(add_help=False)
    add_connection_options(common, default=argparse.SUPPRESS)
    common.add_argument("--json", action="store_true", help="print the API's JSON")

    def command(name: str, run: Command, help: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = commands.add_parser(name, parents=[common], help=help, description=help)
        parser.set_defaults(client_command=run)
        return parser

    def execution(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument("id", help=f"execution id, or a unique prefix of at least {MIN_PREFIX} characters")
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
    execution(command("status", _status, "show one execution and its steps"))
    execution(command("watch", _watch, "follow an execution live until it ends"))
    approve = execution(command("approve", _approve, "approve (or --reject) an approval step as the calling user"))
    approve.add_argument("step")
    approve.add_argument("--reject", action="store_true")
    approve.add_argument("--comment")
    approve.add_argument("--digest", help="the digest you reviewed (default: the one shown now, printed first)")
    delegate = execution(command("delegate", _delegate, "hand your vote on an approval step to a user or role:NAME"))
    delegate.add_argument("step")
    delegate.add_argument("--to", required=True, help="a user id, or role:NAME")
    delegate.add_argument("--reason", required=True)
    for name in ("pause", "resume", "cancel"):
        control = execution(command(name, _control(name), f"{name} an execution"))
        control.add_argument("--reason", required=name == "cancel")
    retry = execution(command("retry", _retry, "retry a failed step of a failed execution"))
    retry.add_argument("step")
    retry.add_argument("--reason")
    replay = execution(command("replay", _replay, "start a new execution with the same runbook version, input "
                                                  "and context"))
    replay.add_argument("--reason")
    logs = execution(command("logs", _logs, "print an execution's log entries"))
    logs.add_argument("--follow", action="store_true", help="keep printing until the execution ends")
    logs.add_argument("--step", help="only this step's entries")
    logs.add_argument("--level", help="minimum level")
    publish = command("publish", _publish, "publish an event to the steps waiting on it")
    publish.add_argument("type")
    publish.add_argument("key", help="the correlation key")
    publish.add_argument("--payload", help="JSON text, or @file.json")
    command("approvals", _approvals, "the approval steps waiting for my decision")
    complete = execution(command("complete", _complete, "complete a failed, waiting or awaiting-approval step "
                                                        "by hand: the execution goes on as if it had succeeded"))
    complete.add_argument("step")
    complete.add_argument("--output", help="the step's output: JSON text, or @file.json (default: null)")
    complete.add_argument("--justification", required=True, help="what was done by hand, and why")
    complete.add_argument("--evidence", help="what shows it: JSON text, or @file.json")
    complete.add_argument("--legal-basis", help="when the runbook requires one")
    skip = execution(command("skip", _skip, "skip a failed, waiting or awaiting-approval step by hand"))
    skip.add_argument("step")
    skip.add_argument("--justification", required=True, help="why the step is not needed")
    skip.add_argument("--legal-basis", help="when the runbook requires one")
    fork = execution(command("fork", _fork, "start a new execution that keeps the outputs of the steps before "
                                            "STEP and runs the rest"))
    fork.add_argument("step", help="the first step to run again")
    fork.add_argument("--input", help="a new input: JSON text, or @file.json (default: the old one)")
    fork.add_argument("--version", type=int, help="a version of the runbook (default: the old one's)")
    fork.add_argument("--reason")
    explain = execution(command("explain", _explain, "why an execution and its steps are as they are"))
    explain.add_argument("step", nargs="?", help="only this step")


def run_client_command(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    identity = Identity(getattr(args, "token", None) or os.environ.get("RUNBOOKS_TOKEN") or None,
                        getattr(args, "user", None), getattr(args, "tenant", None))
    server = getattr(args, "server", None) or os.environ.get("RUNBOOKS_SERVER") or DEFAULT_SERVER

    def notice(text: str) -> None:
        print(f"runbooks {args.command}: {text}", file=err, flush=True)

    try:
        with ApiClient(server, identity, notice=notice) as client:
            if getattr(args, "id", None) is not None:
                args.id = resolve_execution(client, args.id)
            code: int = args.client_command(client, args, out)
            return code
    except UsageError as exc:
        print(f"runbooks {args.command}: {exc}", file=err)
        return 2
    except ApiError as exc:
        print(f"runbooks {args.command}: {exc.detail}", file=err)
        return 1


def resolve_execution(client: ApiClient, given: str) -> str:
    """The id of the execution that ``given`` names: the whole id, or a unique prefix of at least
    ``MIN_PREFIX`` characters among the tenant's newest executions."""
    if len(given) >= ID_LENGTH:
        return given
    try:
        return str(client.get(f"/api/v1/executions/{quote(given, safe='')}")["id"])
    except ApiError as exc:
        if exc.status != 404:
            raise
        if len(given) < MIN_PREFIX:
            raise ApiError(404, f"{exc.detail} (a prefix of an id needs at least {MIN_PREFIX} characters)") from None
    found = _starting_with(client, given)
    if len(found) == 1:
        return str(found[0]["id"])
    if not found:
        raise ApiError(404, f"no execution starts with '{given}' (among the {SCAN_PAGES * 1000:,} newest "
                            "executions of the tenant)")
    listed = ", ".join(f"{ex['id']} ({ex['runbookId']}, {ex['status']})" for ex in found)
    raise UsageError(f"'{given}' is the start of {len(found)} executions: {listed}; give more characters")


def _starting_with(client: ApiClient, prefix: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    cursor = None
    for _ in range(SCAN_PAGES):
        page = client.get("/api/v1/executions", {"limit": 1000, "cursor": cursor})
        found += [ex for ex in page["items"] if str(ex["id"]).startswith(prefix)]
        cursor = page["nextCursor"]
        if cursor is None:
            break
    return found


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
              f"{summary(execution)}", file=out)
    return 0


def _list(client: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    page = client.get("/api/v1/executions", {"status": args.status, "runbookId": args.runbook, "limit": args.limit})
    if args.json:
        _print_json(page, out)
        return 0
    if not page["items"]:
        print(f"no executions{_filters(args)}", file=out)
        return 0
    rows = [[ex["id"], ex["status"], ex["runbookId"], f"v{ex['runbookVersion']}", ex["createdAt"]]
            for ex in page["items"]]
    for line in table(["EXECUTION", "STATUS", "RUNBOOK", "VERSION", "CREATED"], rows):
        print(line, file=out)
    if page["nextCursor"]:
        print("(more: raise --limit, at most 1000)", file=out)
    return 0


def _filters(args: argparse.Namespace) -> str:
    said = [f"with status {args.status}" if args.status else "", f"of runbook {args.runbook}" if args.runbook else ""]
    return "".join(f" {text}" for text in said if text)


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
        if step["status"] == "awaiting_approval" and step.get("approvalRequest"):
            print(f"  {'':<24} digest {step['approvalRequest']['digest']}", file=out)
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
    decision = {"decision": "reject" if args.reject else "approve", "comment": args.comment,
                "digest": args.digest or _shown_digest(client, args, out)}
    answer = client.control(f"/api/v1/executions/{args.id}/steps/{args.step}/approvals", decision)
    prefix = "" if isinstance(answer, Queued) else f"{args.step}: {answer['steps'][args.step]['status']}; "
    return _show_execution(answer, args, out, prefix, action=f"{decision['decision']} of {args.step}")


def _shown_digest(client: ApiClient, args: argparse.Namespace, out: TextIO) -> str | None:
    """The digest of what the step shows now, after printing it (on stderr with ``--json``)."""
    step = client.get(f"/api/v1/executions/{args.id}")["steps"].get(args.step) or {}
    request = step.get("approvalRequest")
    if not request:
        return None  # (not an approval waiting: the server says why)
    where = sys.stderr if args.json else out
    message = request["shown"].get("message")
    print(f"{args.step}: {message or 'a decision is waiting'}", file=where)
    print(f"deciding on digest {request['digest']}", file=where)
    return str(request["digest"])


def _delegate(client: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    body = {"to": args.to, "reason": args.reason}
    answer = client.control(f"/api/v1/executions/{args.id}/steps/{args.step}/approvals/delegate", body)
    return _show_execution(answer, args, out, f"{args.step}: vote handed to {args.to}; ",
                           action=f"delegation of {args.step}")


def _control(action: str) -> Command:
    def control(client: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
        body = {"reason": args.reason} if args.reason else None
        try:
            answer = client.control(f"/api/v1/executions/{args.id}/{action}", body)
        except ApiError as exc:
            if exc.status == 409 and action == "cancel" and _status_of(client, args.id) == "cancelled":
                print(f"execution {args.id} was already cancelled", file=out)
                return 0
            raise
        return _show_execution(answer, args, out, action=action)

    return control


def _status_of(client: ApiClient, execution_id: str) -> str:
    return str(client.get(f"/api/v1/executions/{execution_id}")["status"])


def _retry(client: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    body = {"reason": args.reason} if args.reason else None
    answer = client.control(f"/api/v1/executions/{args.id}/steps/{args.step}/retry", body)
    return _show_execution(answer, args, out, f"{args.step}: retried; ", action=f"retry of {args.step}")


def _replay(client: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    body = {"reason": args.reason} if args.reason else None
    execution = client.post(f"/api/v1/executions/{args.id}/replay", body)
    return _show_execution(execution, args, out, f"replay of {args.id}: ")


def _complete(client: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    body: dict[str, Any] = {"output": json_argument("--output", args.output, default=None),
                            "justification": args.justification}
    if args.evidence is not None:
        body["evidence"] = json_argument("--evidence", args.evidence, default=None)
    if args.legal_basis:
        body["context"] = {"legalBasis": args.legal_basis}
    answer = client.control(f"/api/v1/executions/{args.id}/steps/{args.step}/complete", body)
    return _show_execution(answer, args, out, f"{args.step}: completed by hand; ",
                           action=f"completion of {args.step}")


def _skip(client: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    body: dict[str, Any] = {"justification": args.justification}
    if args.legal_basis:
        body["context"] = {"legalBasis": args.legal_basis}
    answer = client.control(f"/api/v1/executions/{args.id}/steps/{args.step}/skip", body)
    return _show_execution(answer, args, out, f"{args.step}: skipped by hand; ", action=f"skip of {args.step}")


def _fork(client: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    body: dict[str, Any] = {"fromStep": args.step}
    if args.input is not None:
        body["input"] = json_argument("--input", args.input)
    if args.version is not None:
        body["version"] = args.version
    if args.reason:
        body["reason"] = args.reason
    execution = client.post(f"/api/v1/executions/{args.id}/fork", body)
    return _show_execution(execution, args, out, f"fork of {args.id} from {args.step}: ")


def _explain(client: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    answer = client.get(f"/api/v1/executions/{args.id}/explain", {"stepId": args.step})
    if args.json:
        _print_json(answer, out)
        return 0
    for item in answer["items"]:
        name = f"step {item['stepId']}" if item["stepId"] is not None else f"execution {args.id}"
        print(f"{name}: {item['status']}", file=out)
        for reason in item["reasons"]:
            print(f"  {reason}", file=out)
    return 0


def _show_execution(answer: dict[str, Any] | Queued, args: argparse.Namespace, out: TextIO, prefix: str = "",
                    action: str = "") -> int:
    if args.json:
        _print_json(answer.body if isinstance(answer, Queued) else answer, out)
    elif isinstance(answer, Queued):
        print(f"execution {args.id}: {action} queued as command {answer.command_id}; the next owner applies it",
              file=out)
    else:
        print(f"{prefix}execution {answer['id']} is {answer['status']}", file=out)
    return 0


def _logs(client: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    path, after = f"/api/v1/executions/{args.id}/logs", None

    def print_new(get: Callable[[str, dict[str, Any]], Any] = client.get) -> None:
        nonlocal after
        while True:
            page = get(path, {"stepId": args.step, "level": args.level, "after": after})
            for entry in page["items"]:
                print(json.dumps(entry, ensure_ascii=False) if args.json else _log_line(entry), file=out, flush=True)
                after = entry["seq"]
            if page["nextCursor"] is None:
                return

    print_new()
    if args.follow:
        for state in client.stream(args.id):
            print_new(client.get_while_following)
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
        kept = "retained for the first step that will take it" if result["retained"] else "not retained"
        refused = result.get("refusedByFilter") or 0
        why = (f"a step waits but its filter refused the event ({refused} step(s))" if refused
               else "no step waits for it")
        print(f"not delivered: {why}; {kept}", file=out)
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
    as_who = "".join(f" --{name} {shlex.quote(value)}" for name in ("server", "user", "tenant")
                     if (value := getattr(args, name, None)))
    for item in items:
        print(f"{item['executionId']} {item['stepId']} ({item['runbookId']}): {item['approvalsNeeded']} more "
              f"approval(s) needed; approve with `runbooks approve {item['executionId']} {item['stepId']}{as_who}`",
              file=out)
        if item["message"]:
            print(f"    {item['message']}", file=out)
        if item.get("digest"):
            print(f"    digest {item['digest']}", file=out)
    return 0
