"""The ``runbooks`` command: ``serve``, the local ``run FILE`` and ``validate FILE...``, and
the client commands of a running server (``gateway.cli_client``).

Exit status: 0 done, 1 refused or failed, 2 usage (argparse's own, or a bad option value:
one line on stderr).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import trio

from gateway.cli_client import add_client_commands, run_client_command
from gateway.cli_run import UsageError, run_file, run_options, validate_files
from gateway.serve import add_serve_arguments, serve_from_args


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return serve_from_args(args)
    if args.command == "validate":
        return validate_files(args.files, sys.stdout)
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
    validate = commands.add_parser("validate", help="report every problem of every file")
    validate.add_argument("files", nargs="+")
    add_client_commands(commands)
    return parser


if __name__ == "__main__":
    sys.exit(main())
