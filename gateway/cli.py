"""The ``runbooks`` command: ``serve``, the local ``run FILE`` and ``validate FILE...``, the
runbook tests ``test PATH...`` and ``plan FILE`` (``gateway.cli_test``, ``gateway.cli_plan``),
the audit ledger's ``audit export|verify|key|erase`` (``gateway.cli_audit``; ``erase`` is a
client of a running server), and the client commands of a running server (``gateway.cli_client``).

Exit status: 0 done, 1 refused or failed, 2 usage (argparse's own, or a bad option value:
one line on stderr), 141 when whoever reads the output has gone (``runbooks list | head -1``),
as for a command that SIGPIPE ends: no traceback, nothing more is written.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

import trio

from gateway.cli_audit import add_audit_commands, audit_command
from gateway.cli_client import add_client_commands, add_connection_options, run_client_command
from gateway.cli_plan import plan_command
from gateway.cli_run import UsageError, run_file, run_options, validate_files
from gateway.cli_test import test_paths
from gateway.serve import add_serve_arguments, serve_from_args

BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a command that SIGPIPE ended


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # the reader went away (`| head -1`): point stdout at /dev/null so that the
        # interpreter's last flush at exit does not fail again, and say nothing
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return BROKEN_PIPE


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    if not hasattr(args, "client_command"):
        given = [f"--{name}" for name in ("server", "token", "user", "tenant") if getattr(args, name) is not None]
        if given:
            print(f"runbooks {args.command}: {', '.join(given)}: only for the client commands (start, list, status...)",
                  file=sys.stderr)
            return 2
    if args.command == "serve":
        return serve_from_args(args)
    if args.command == "validate":
        return validate_files(args.files, sys.stdout)
    if args.command == "test":
        return test_paths(args.paths, sys.stdout, args.junit)
    if args.command == "plan":
        return plan_command(args.file, args.input, args.context, args.replies, sys.stdout, sys.stderr)
    if args.command == "audit":
        return audit_command(args)
    if args.command == "run":
        try:
            options = run_options(args, terminal=sys.stdin.isatty())
        except UsageError as exc:
            print(f"runbooks run: {exc}", file=sys.stderr)
            return 2
        return trio.run(run_file, pathlib.Path(args.file), options)
    return run_client_command(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="runbooks", description="Run, validate and serve runbooks; "
                                     "drive a running server.")
    add_connection_options(parser)  # a client command's --server etc. may also come before it
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="serve the REST API and the web console",
                                description="Serve the REST API and the web console (flags win over the environment).")
    add_serve_arguments(serve)
    run = commands.add_parser("run", help="run one runbook locally to its end, with a live display",
                              description="Run one runbook locally to its end; exit status 0 only if it completed.")
    run.add_argument("file")
    run.add_argument("--input", default=None, help="JSON text, or @file.json")
    run.add_argument("--context", default=None, help="JSON object (legalBasis, reason...), or @file.json")
    run.add_argument("--store", default="memory", help="memory (default), sqlite:///file.db, postgresql://...")
    run.add_argument("--base-url", default=None, help="base of relative call-service URLs (default CALL_SERVICE_BASE_URL)")
    run.add_argument("--secrets", default=None, help="secrets file for the runtime (RUNBOOKS_SECRETS_FILE)")
    run.add_argument("--no-prompt", action="store_true", help="never ask at the terminal: wait for timeouts")
    run.add_argument("--with", dest="with_files", action="append", default=[], metavar="FILE",
                     help="register this runbook first (a sub-runbook the file runs); repeatable")
    run.add_argument("--trigger", default=None, metavar="ID",
                     help="start as this trigger of the runbook would now: its input and context, context.trigger")
    run.add_argument("--event", default=None, help="with --trigger of an event rule: {correlationKey, payload}")
    validate = commands.add_parser("validate", help="report every problem of every file")
    validate.add_argument("files", nargs="+")
    test = commands.add_parser("test", help="run the test cases kept beside runbooks (virtual clock, no network)",
                               description="Run the cases of NAME.test.yaml files: exit 0 all passed, 1 a case "
                               "failed, 2 a file could not be run.")
    test.add_argument("paths", nargs="+", metavar="PATH", help="a runbook, its NAME.test.yaml, or a directory")
    test.add_argument("--junit", default=None, metavar="FILE", help="also write the results as JUnit XML")
    plan = commands.add_parser("plan", help="which steps would run, in what order, for an input (no call made)",
                               description="Show which steps would run for this input and these replies, "
                               "without a single call.")
    plan.add_argument("file")
    plan.add_argument("--input", default=None, help="JSON text, or @file.json")
    plan.add_argument("--context", default=None, help="JSON object (legalBasis, reason...), or @file.json")
    plan.add_argument("--replies", default=None, metavar="FILE",
                      help="canned replies, events and approvals (YAML or JSON, as a test case gives them)")
    add_audit_commands(commands)
    add_client_commands(commands)
    return parser


if __name__ == "__main__":
    sys.exit(main())
