"""``runbooks plan FILE --input JSON [--context JSON] [--replies FILE]``: what the runbook would
do for that input, step by step, without a single call.

The plan is a real run of the engine on a virtual clock with the replies file's canned
replies (``runtime.testing``), stopped as soon as nothing more could happen without an
answer it does not have: a call with no reply (the plan cannot tell what comes after it),
or steps waiting for an event or a person (shown as what they would wait for, and until
when). Steps are listed in the order they would start, with the events and approvals of
the replies file where they arrive, then the steps it would not reach. Exit status: 0 a
plan was made, 1 the start would be refused (the input or the context), 2 usage or a bad
file.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from typing import Any, Final, TextIO

import attrs

from gateway.case_report import duration_text
from gateway.cli_run import UsageError, json_argument
from gateway.cli_test import quiet_engine
from runtime.core.explain import explain
from runtime.kinds.approval_inbox import rendered_config
from runtime.model import Execution, Runbook, StepState, StepStatus
from runtime.testing import Moment, Outcome, load_plan, run_case
from runtime.testing.canned import NO_REPLY, describe

WORDS: Final = {"succeeded": "succeeds", "failed": "fails", "skipped": "is skipped", "rejected": "is rejected",
                "cancelled": "is cancelled", "waiting": "would wait", "awaiting_approval": "would wait",
                "running": "is still running", "retrying": "is still retrying", "pending": "is not reached"}


def plan_command(file: str, input_text: str | None, context_text: str | None, replies: str | None,
                 out: TextIO, err: TextIO) -> int:
    try:
        input = json_argument("--input", input_text, default={})
        context = json_argument("--context", context_text, default={}, mapping=True)
    except UsageError as exc:
        print(f"runbooks plan: {exc}", file=err)
        return 2
    suite, problems = load_plan(pathlib.Path(file), pathlib.Path(replies) if replies else None, input)
    if suite is None:
        for problem in problems:
            print(str(problem), file=err)
        return 2
    case = attrs.evolve(suite.cases[0], context={**suite.cases[0].context, **context})
    with quiet_engine():
        outcome = run_case(suite, case, plan=True)
    source = f"replies from {replies}" if replies else "no replies given (--replies FILE)"
    print(f"plan of {outcome.runbook.id} v{outcome.runbook.version}, {source}; nothing was called", file=out)
    for line in plan_lines(outcome):
        print(line, file=out)
    return 1 if outcome.execution is None else 0


def plan_lines(outcome: Outcome) -> list[str]:
    execution = outcome.execution
    if execution is None:
        return ["the start would be refused:", *(f"  {reason}" for reason in outcome.refused)]
    why = reasons(execution, outcome.runbook)
    width = max(len(step_id) for step_id in execution.steps)
    lines: list[str] = []
    number = 0
    for entry in _order(execution, outcome.timeline):
        if isinstance(entry, Moment):
            lines.append(f"{'':4}{'+' + duration_text(entry.at_ms):>10}  {entry.what}")
            continue
        runs = execution.steps[entry].status not in (StepStatus.PENDING, StepStatus.SKIPPED)
        number += runs
        marker = f"{number:>3}." if runs else "   -"
        lines += _step_lines(marker, entry, width, execution, outcome, why.get(entry, []))
    return [*lines, _ending(execution, outcome)]


def reasons(execution: Execution, runbook: Runbook) -> Mapping[str, list[str]]:
    """Why each step is as it is, in the sentences of ``runbooks explain``, by step id."""
    depends_on = {step.id: tuple(step.depends_on or ()) for step in runbook.steps}
    no_reply = f": {NO_REPLY}: "  # a call with no reply is shown with the step's calls
    return {item.step_id: [reason for reason in item.reasons if no_reply not in reason]
            for item in explain(execution, depends_on=depends_on) if item.step_id is not None}


def _order(execution: Execution, timeline: tuple[Moment, ...]) -> list[str | Moment]:
    """Step ids in the order they would start, events and approvals where they arrive, then
    the steps that would not start."""
    entries: list[str | Moment] = []
    for moment in timeline:
        if moment.step is None:
            entries.append(moment)
        elif moment.step not in entries:
            entries.append(moment.step)
    return entries + [step_id for step_id in execution.steps if step_id not in entries]


def _step_lines(marker: str, step_id: str, width: int, execution: Execution, outcome: Outcome,
                why: list[str]) -> list[str]:
    state = execution.steps[step_id]
    start = next((m.at_ms for m in outcome.timeline if m.step == step_id), None)
    at = f"+{duration_text(start)}" if start is not None else ""
    error = state.error
    words = "would call" if error is not None and error.code == NO_REPLY else WORDS.get(state.status.value)
    head = f"{marker} {at:>9}  {step_id:<{width}}  {state.type:<14} {words or state.status.value}"
    details = [*_calls(step_id, outcome), *_what(step_id, state, execution, outcome.runbook), *why]
    return [head, *(f"{'':{18 + width}}{line}" for line in details)]


def _calls(step_id: str, outcome: Outcome) -> list[str]:
    """One line per request, with the answers it got in turn (a retried call: ``503, 200``)."""
    grouped: list[tuple[str, list[str]]] = []
    for call in (c for c in outcome.calls if c.key == step_id):
        what = ("notifies " if call.notification else "") + describe(call.kind, call.request)
        answer = call.answer if call.answer is not None else "no reply given: the plan cannot tell what comes after"
        if grouped and grouped[-1][0] == what:
            grouped[-1][1].append(answer)
        else:
            grouped.append((what, [answer]))
    return [f"{what} -> {', '.join(answers)}" for what, answers in grouped]


def _what(step_id: str, state: StepState, execution: Execution, runbook: Runbook) -> list[str]:
    status = state.status
    if status in (StepStatus.WAITING, StepStatus.AWAITING_APPROVAL):
        return [_wait(runbook, rendered_config(execution, runbook, step_id), status, step_id)]
    return []  # (a decision, an error: in the sentences of ``reasons``)


def _wait(runbook: Runbook, config: Mapping[str, Any], status: StepStatus, step_id: str) -> str:
    timeout = config.get("timeoutMs", runbook.step(step_id).timeout_ms)
    if status is StepStatus.AWAITING_APPROVAL:
        approvers = ", ".join(str(a) for a in config.get("approvers") or []) or "nobody"
        then = f", at most {duration_text(int(timeout))}, then {config.get('timeoutAction', 'fail')}" if timeout else \
            ", with no deadline"
        return f"for {config.get('minApprovals', 1)} approval(s) by {approvers}{then}"
    timeout = timeout or 3_600_000
    filtered = " passing its filter" if config.get("filter") else ""
    return (f"for event '{config.get('eventType')}' with key '{config.get('correlationKey')}'{filtered}, "
            f"at most {duration_text(int(timeout))}, then fails (timeout)")


def _ending(execution: Execution, outcome: Outcome) -> str:
    took = duration_text(outcome.virtual_ms)
    if outcome.stopped == "waiting":
        return f"stops after {took}: every step in progress waits for an answer the replies do not give"
    if outcome.stopped == "until":
        return f"still {execution.status.value} after {took}"
    error = execution.error
    if error is not None and error.code == NO_REPLY:
        return f"stops after {took} at step '{error.step_id}': a call with no reply (give one with --replies)"
    failure = f": step '{error.step_id}' {error.code}: {error.message}" if error is not None else ""
    return f"ends {execution.status.value} after {took}{failure}"
