"""The ``runbooks`` command (SPEC section 9): ``serve``, ``run FILE``, ``validate FILE...``.

``run`` executes one runbook locally (memory store unless ``--store``) with a live line per
state change of each step; when stdin is a terminal it asks for approval decisions and
event payloads as the execution reaches them. Exit status 0 only if it completed.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Any, TextIO

import trio

from runtime import Execution, RunbookError, Runtime, ValidationError, open_runtime
from runtime.core import build_scope
from runtime.settings import Settings
from runtime.templates import render
from runtime.wire import load_document


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        from gateway.serve import serve_main

        return serve_main(args.rest)
    if args.command == "validate":
        return validate_files(args.files, sys.stdout)
    try:
        run_input = _input(args.input)
    except (OSError, ValueError) as exc:
        print(f"--input: {exc}", file=sys.stderr)
        return 2
    return trio.run(run_file, pathlib.Path(args.file), run_input, args.store, args.base_url,
                    sys.stdin.isatty() and not args.no_prompt)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="runbooks", description="Run, validate and serve runbooks.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the REST API (configuration from the environment)")
    serve.add_argument("rest", nargs=argparse.REMAINDER)
    run = commands.add_parser("run", help="run one runbook to its end")
    run.add_argument("file")
    run.add_argument("--input", default=None, help="JSON text, or @file.json")
    run.add_argument("--store", default="memory", help="memory (default), sqlite:///file.db, postgresql://...")
    run.add_argument("--base-url", default=None, help="CALL_SERVICE_BASE_URL for relative call-service URLs")
    run.add_argument("--no-prompt", action="store_true", help="never ask at the terminal")
    validate = commands.add_parser("validate", help="report every problem of every file")
    validate.add_argument("files", nargs="+")
    return parser


def _input(text: str | None) -> Any:
    if text is None:
        return {}
    if text.startswith("@"):
        text = pathlib.Path(text[1:]).read_text()
    return json.loads(text)


def validate_files(files: list[str], out: TextIO) -> int:
    """Print every problem of every file; 1 if any file has one."""
    from runtime.steps.registry import StepTypes
    from runtime.validate import validate_document

    failed = False
    for name in files:
        try:
            problems = validate_document(load_document(pathlib.Path(name)), StepTypes())
        except ValidationError as exc:
            problems = exc.problems
        except OSError as exc:
            print(f"{name}: cannot read: {exc.strerror}", file=out)
            failed = True
            continue
        for problem in problems:
            print(f"{name}: {problem.path}: {problem.message}", file=out)
        if not problems:
            print(f"{name}: valid", file=out)
        failed = failed or bool(problems)
    return 1 if failed else 0


async def run_file(path: pathlib.Path, run_input: Any, store: str, base_url: str | None,
                   interactive: bool, out: TextIO = sys.stdout) -> int:
    try:
        async with open_runtime(store, settings=Settings(call_service_base_url=base_url)) as rt:
            runbook = await rt.register_runbook(path)
            execution = await rt.start(runbook.id, run_input, {"userId": "cli"}, force=True)
            print(f"execution {execution.id} of {runbook.id} v{runbook.version}", file=out)
            final = await _follow(rt, execution.id, interactive, out)
    except RunbookError as exc:
        for line in _error_lines(exc):
            print(line, file=out)
        return 1
    print(f"{final.status.value}" + (f": {final.error.message}" if final.error else ""), file=out)
    if final.output is not None:
        print(json.dumps(final.output, indent=2, default=str), file=out)
    return 0 if final.status.value == "completed" else 1


def _error_lines(exc: RunbookError) -> list[str]:
    if isinstance(exc, ValidationError):
        return [f"{p.path}: {p.message}" for p in exc.problems]
    return [str(exc)]


async def _follow(rt: Runtime, execution_id: str, interactive: bool, out: TextIO) -> Execution:
    seen: dict[str, str] = {}
    asked: set[str] = set()
    start = trio.current_time()
    async with trio.open_nursery() as prompts:
        final = None
        async for execution in rt.watch(execution_id):
            for step_id, state in execution.steps.items():
                if seen.get(step_id) != state.status.value:
                    seen[step_id] = state.status.value
                    took = ""
                    if state.completed_at and state.started_at:
                        took = f" ({(state.completed_at - state.started_at).total_seconds():.2f} s)"
                    elapsed = trio.current_time() - start
                    print(f"[{elapsed:7.2f}s] {step_id:<24} {state.status.value}{took}", file=out)
                if interactive and step_id not in asked and state.status.value in ("awaiting_approval", "waiting"):
                    asked.add(step_id)
                    prompts.start_soon(_prompt, rt, execution, step_id, state.status.value, out)
            final = execution
        prompts.cancel_scope.cancel()
    assert final is not None
    return final


async def _prompt(rt: Runtime, execution: Execution, step_id: str, status: str, out: TextIO) -> None:
    runbook = await rt.get_runbook(execution.runbook_id, execution.runbook_version, tenant_id=execution.tenant_id)
    config = runbook.step(step_id).config
    if status == "awaiting_approval":
        approvers = config.get("approvers") or []
        while True:
            answer = await _ask(f"{step_id}: approve or reject, as which approver {approvers}? [approve <user>|reject <user>] ")
            parts = answer.split()
            if len(parts) == 2 and parts[0] in ("approve", "reject"):
                try:
                    await rt.submit_approval(execution.id, step_id, approver=parts[1], decision=parts[0])
                except RunbookError as exc:
                    print(f"  refused: {exc}", file=out)
                    continue
                if rt.get(execution.id).steps[step_id].status.value != "awaiting_approval":
                    return
    else:
        correlation = render(config["correlationKey"], build_scope(execution, step_id))
        while True:
            answer = await _ask(f"{step_id}: waiting for event {config.get('eventType')!r} "
                                f"key {correlation!r}; payload JSON to send (empty: {{}}) ")
            try:
                payload = json.loads(answer) if answer.strip() else {}
            except ValueError as exc:
                print(f"  not JSON: {exc}", file=out)
                continue
            await rt.publish_event(config["eventType"], str(correlation), payload, tenant_id=execution.tenant_id)
            return


async def _ask(question: str) -> str:
    return await trio.to_thread.run_sync(input, question, abandon_on_cancel=True)


if __name__ == "__main__":
    sys.exit(main())
