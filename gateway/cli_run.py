"""``runbooks run FILE`` and ``runbooks validate FILE...``: the local commands.

``run`` registers the file on a runtime of its own (the memory store unless ``--store``),
starts one execution and shows its progress live until it ends; exit status 0 only if it
completed. What happens when a step waits for a person depends on where it runs:

- on a terminal it asks: an approval decision (showing the step's rendered message, its
  approvers and how many approvals are still needed), or an event's payload (asked again
  for as long as the step still waits, e.g. after an event its filter refused);
- with ``--no-prompt`` it asks nothing and waits (timeouts and ``timeoutAction`` decide);
- without a terminal (and without ``--no-prompt``) it prints one line per waiting step
  saying what it waits for and how to answer, and once nothing else can move (every step
  still in progress waits for a person or an event) it stops with exit status 1. With a
  persistent ``--store`` the execution is kept there: ``runbooks serve --store`` on the
  same store resumes it, and ``runbooks approve`` / ``runbooks publish`` answer it.

``--with FILE`` registers other runbooks first (the sub-runbooks a ``run-runbook`` step
starts); ``--trigger ID`` starts the execution as one of the runbook's triggers would now
(``gateway.run_trigger``).
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

import attrs
import trio

from gateway.display import Progress, output_text, summary
from gateway.run_trigger import TriggerRunError, trigger_hint, trigger_start
from runtime import (
    Execution,
    RunbookError,
    Runtime,
    Settings,
    StepStatus,
    ValidationError,
    check_store_url,
    open_runtime,
)
from runtime.documents.lines import located, with_lines
from runtime.documents.triggers import rfc3339, triggers_of
from runtime.kinds.approval_inbox import awaiting_steps, rendered_config
from runtime.model.wire import load_document, to_json
from runtime.security.secrets import SecretsFileError, load_secrets_file

WAITS = (StepStatus.AWAITING_APPROVAL, StepStatus.WAITING)
MOVING = (StepStatus.RUNNING, StepStatus.RETRYING)


class UsageError(Exception):
    """A bad command-line value: one line, exit status 2."""


@attrs.frozen
class RunOptions:
    input: Any = attrs.Factory(dict)
    context: dict[str, Any] = attrs.Factory(dict)
    store: str = "memory"
    base_url: str | None = None
    mode: str = "wait"  # "ask" (a terminal), "wait" (--no-prompt) or "hint" (no terminal)
    with_files: tuple[str, ...] = ()  # registered before the file (its sub-runbooks)
    trigger: str | None = None  # start as this trigger would: its input (unless --input) and context
    event: dict[str, Any] | None = None  # the event an event rule's trigger is given
    input_given: bool = False  # --input given: it replaces the input of --trigger


def json_argument(name: str, text: str | None, *, default: Any = None, mapping: bool = False) -> Any:
    """JSON text or ``@file`` of an option; ``UsageError`` naming the option if it is not."""
    if text is None:
        return default
    try:
        if text.startswith("@"):
            text = pathlib.Path(text[1:]).read_text(encoding="utf-8")
        value = json.loads(text)
    except OSError as exc:
        raise UsageError(f"{name}: cannot read {text[1:]}: {exc.strerror}") from None
    except ValueError as exc:
        raise UsageError(f"{name}: not JSON: {exc}") from None
    if mapping and not isinstance(value, dict):
        raise UsageError(f"{name}: must be a JSON object")
    return value


def run_options(args: Any, *, terminal: bool, env: dict[str, str] | os._Environ[str] = os.environ) -> RunOptions:
    """The options of ``run`` from its parsed arguments (flags win over the environment)."""
    base_url = args.base_url or env.get("CALL_SERVICE_BASE_URL") or None
    if base_url is not None and not base_url.startswith(("http://", "https://")):
        raise UsageError(f"--base-url: must be an absolute http(s) URL, got {base_url!r}")
    try:
        check_store_url(args.store)  # nothing is opened
    except ValueError as exc:
        raise UsageError(f"--store: {exc}") from None
    if args.secrets is not None:
        if not pathlib.Path(args.secrets).is_file():
            raise UsageError(f"--secrets: no such file: {args.secrets}")
        try:
            load_secrets_file(args.secrets)
        except SecretsFileError as exc:
            raise UsageError(f"--secrets: {exc}") from None
        os.environ["RUNBOOKS_SECRETS_FILE"] = str(pathlib.Path(args.secrets).resolve())
    mode = "wait" if args.no_prompt else ("ask" if terminal else "hint")
    for other in args.with_files:
        if not pathlib.Path(other).is_file():
            raise UsageError(f"--with: no such file: {other}")
    if args.event is not None and args.trigger is None:
        raise UsageError("--event: only with --trigger (an event rule of the runbook)")
    return RunOptions(json_argument("--input", args.input, default={}),
                      json_argument("--context", args.context, default={}, mapping=True),
                      args.store, base_url, mode, tuple(args.with_files), args.trigger,
                      json_argument("--event", args.event, mapping=True), args.input is not None)


def validate_files(files: list[str], out: TextIO) -> int:
    """Print every problem of every file; 1 if any file has one."""
    from runtime.documents.validate import validate_document
    from runtime.shell.step_types import StepTypes

    failed = False
    for name in files:
        document: dict[str, Any] = {}
        try:
            document = load_document(pathlib.Path(name))
            problems = validate_document(document, StepTypes())
        except ValidationError as exc:
            problems = exc.problems
        except OSError as exc:
            print(f"{name}: cannot read: {exc.strerror}", file=out)
            failed = True
            continue
        if document and problems:
            problems = with_lines(problems, pathlib.Path(name).read_bytes())
        for problem in problems:
            print(located(name, problem), file=out)
        if not problems:
            print(f"{name}: valid", file=out)
            for line in trigger_lines(document):
                print(f"  {line}", file=out)
        failed = failed or bool(problems)
    return 1 if failed else 0


def trigger_lines(document: dict[str, Any]) -> list[str]:
    """One line per trigger of a valid document: what starts it (and, for a schedule, when next)."""
    lines = []
    now = datetime.now(UTC)
    for trigger in triggers_of(document):
        if trigger.kind == "schedule":
            lines.append(f"trigger {trigger.id}: schedule '{trigger.schedule}' in {trigger.timezone} "
                         f"(catchUp {trigger.catch_up}), next {rfc3339(trigger.next_due(now))}")
        else:
            where = " passing its filter" if trigger.filter else ""
            lines.append(f"trigger {trigger.id}: every event '{trigger.event_type}'{where}")
    return lines


async def run_file(path: pathlib.Path, options: RunOptions, out: TextIO = sys.stdout,
                   err: TextIO = sys.stderr) -> int:
    try:
        settings = Settings(call_service_base_url=options.base_url,
                            secrets_file=os.environ.get("RUNBOOKS_SECRETS_FILE") or None)
        async with open_runtime(options.store, settings=settings) as rt:
            for other in options.with_files:
                await rt.register_runbook(pathlib.Path(other))
            runbook = await rt.register_runbook(path)
            input, context = _start_values(runbook.document, options)
            execution = await rt.start(runbook.id, input, {"userId": "cli", **context}, force=True)
            print(f"execution {execution.id} of {runbook.id} v{runbook.version}", file=out, flush=True)
            final = await _Follow(rt, options, out, err).run(execution.id)
    except TriggerRunError as exc:
        print(f"runbooks run: {exc}", file=err)
        return 2
    except RunbookError as exc:
        for line in _error_lines(exc):
            print(line, file=out)
        return 1
    if final is None:
        return 1
    print(_with_hint(summary(to_json(final)), final, runbook.triggers), file=out)
    text = output_text(to_json(final))
    if text is not None:
        print(text, file=out)
    return 0 if final.status.value == "completed" else 1


def _error_lines(exc: RunbookError) -> list[str]:
    if isinstance(exc, ValidationError):
        return [f"{p.path}: {p.message}" for p in exc.problems]
    return [str(exc)]


def _start_values(document: dict[str, Any], options: RunOptions) -> tuple[Any, dict[str, Any]]:
    """The input and context to start with: the options', or those of ``--trigger``."""
    if options.trigger is None:
        return options.input, options.context
    input, context = trigger_start(document, options.trigger, options.event, datetime.now(UTC))
    return (options.input if options.input_given else input), {**context, **options.context}


def _with_hint(line: str, final: Execution, triggers: tuple[dict[str, Any], ...]) -> str:
    error = final.error
    if error is not None and error.code == "config" and "is relative" in error.message:
        return f"{line} (pass --base-url URL, or set CALL_SERVICE_BASE_URL, for relative call-service URLs)"
    if error is not None and error.code == "template" and "trigger" not in final.context:
        return line + trigger_hint(list(triggers))
    return line


class _Follow:
    """Shows every state of one execution and answers (or explains) the steps that wait."""

    def __init__(self, rt: Runtime, options: RunOptions, out: TextIO, err: TextIO) -> None:
        self.rt, self.options, self.out, self.err = rt, options, out, err
        self.progress = Progress(out)
        self.handled: set[tuple[str, int]] = set()  # (step id, attempt) asked or explained
        self.terminal = trio.Lock()  # one question at a time

    async def run(self, execution_id: str) -> Execution | None:
        """The final state; None when it stopped waiting for answers nobody here can give."""
        final = None
        async with trio.open_nursery() as prompts:
            async for execution in self.rt.watch(execution_id):
                self.progress.show(to_json(execution))
                final = execution
                if execution.status.finished:
                    break
                await self._waiting_steps(execution, prompts)
                if self.options.mode == "hint" and _stuck(execution):
                    print(f"execution {execution.id} stopped: every step in progress waits for an answer "
                          "that only a terminal or a server can give", file=self.err, flush=True)
                    final = None
                    break
            prompts.cancel_scope.cancel()
        return final

    async def _waiting_steps(self, execution: Execution, prompts: trio.Nursery) -> None:
        for step_id, state in execution.steps.items():
            if state.status not in WAITS or (step_id, state.attempts) in self.handled:
                continue
            self.handled.add((step_id, state.attempts))
            runbook = await self.rt.get_runbook(execution.runbook_id, execution.runbook_version,
                                                tenant_id=execution.tenant_id)
            config = rendered_config(execution, runbook, step_id)
            if self.options.mode == "hint":
                print(self._hint(execution, step_id, state.status, config), file=self.err, flush=True)
            elif self.options.mode == "ask":
                ask = self._approve if state.status is StepStatus.AWAITING_APPROVAL else self._send_event
                prompts.start_soon(ask, execution, step_id, config)

    def _hint(self, execution: Execution, step_id: str, status: StepStatus, config: dict[str, Any]) -> str:
        if status is StepStatus.AWAITING_APPROVAL:
            what = f"waits for approval by {', '.join(map(str, config.get('approvers') or []))}"
            answer = f"`runbooks approve {execution.id} {step_id}`"
        else:
            what = f"waits for event {config.get('eventType')!r} with key {str(config.get('correlationKey'))!r}"
            answer = f"`runbooks publish {config.get('eventType')} {config.get('correlationKey')} --payload JSON`"
        where = (f"serve this store (`runbooks serve --store {self.options.store}`) and send {answer}"
                 if self.options.store != "memory" else
                 f"run it with --store sqlite:///FILE, serve that store with `runbooks serve --store` "
                 f"and send {answer}")
        return f"{step_id}: {what}; no terminal to ask on: run on a terminal, or {where}"

    async def _approve(self, execution: Execution, step_id: str, config: dict[str, Any]) -> None:
        while (current := await self.rt.get(execution.id)).steps[step_id].status is StepStatus.AWAITING_APPROVAL:
            runbook = await self.rt.get_runbook(current.runbook_id, current.runbook_version,
                                                tenant_id=current.tenant_id)
            [item] = [i for i in awaiting_steps(current, runbook) if i.step_id == step_id]
            if item.message:
                print(f"{step_id}: {item.message}", file=self.out)
            print(f"{step_id}: approvers {', '.join(item.approvers)}; {item.approvals_needed} more "
                  f"approval(s) needed; digest {item.digest}", file=self.out, flush=True)
            answer = (await self._ask(f"{step_id}: approve <user> [comment] | reject <user> [comment]: ")).split(None, 2)
            if len(answer) < 2 or answer[0] not in ("approve", "reject"):
                print(f"  answer 'approve <user>' or 'reject <user>' (users: {', '.join(item.approvers)})", file=self.out)
                continue
            try:
                await self.rt.submit_approval(execution.id, step_id, approver=answer[1], decision=answer[0],
                                              comment=answer[2] if len(answer) > 2 else None, digest=item.digest)
            except RunbookError as exc:
                print(f"  refused: {exc}", file=self.out)

    async def _send_event(self, execution: Execution, step_id: str, config: dict[str, Any]) -> None:
        event_type, key = str(config.get("eventType")), str(config.get("correlationKey"))
        while (await self.rt.get(execution.id)).steps[step_id].status is StepStatus.WAITING:
            answer = await self._ask(f"{step_id}: waiting for event {event_type!r} with key {key!r}; "
                                     "payload JSON to send (empty: {}): ")
            try:
                payload = json.loads(answer) if answer.strip() else {}
            except ValueError as exc:
                print(f"  not JSON: {exc}", file=self.out)
                continue
            await self.rt.publish_event(event_type, key, payload, tenant_id=execution.tenant_id)
            if (await self.rt.get(execution.id)).steps[step_id].status is StepStatus.WAITING:
                print(f"  {step_id} still waits: the event did not match its filter", file=self.out, flush=True)

    async def _ask(self, question: str) -> str:
        async with self.terminal:
            try:
                return await trio.to_thread.run_sync(input, question, abandon_on_cancel=True)
            except EOFError:
                await trio.sleep_forever()  # the terminal is gone: the step goes on waiting
                raise


def _stuck(execution: Execution) -> bool:
    """Nothing can move without an answer: no step is running and at least one waits."""
    states = [state.status for state in execution.steps.values()]
    return not any(status in MOVING for status in states) and any(status in WAITS for status in states)
