"""Why an execution and each of its steps are as they are, in sentences a person reads.

``explain(execution)`` reads the decision records the core committed (``StepState.why``,
``runtime.core.why``) and what the step's own fields already say (approvals and the digest
each was made on, a loop's progress, attempts, a child execution, the error), and gives one
``Explanation`` per step in document order, after one for the execution itself (``step_id``
None: the runbook version it runs, and what started it: a user, a trigger, a parent
execution, a replay or a fork). ``data`` is the record with those fields, for a program.

It is pure: the caller passes the values through the secrets redactor first.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import attrs

from runtime.model import Execution, StepState, StepStatus

SS = StepStatus
_DONE = (SS.SUCCEEDED, SS.SKIPPED)


@attrs.frozen
class Explanation:
    step_id: str | None
    status: str
    reasons: tuple[str, ...]
    data: dict[str, Any]


def explain(execution: Execution, step_id: str | None = None,
            depends_on: Mapping[str, tuple[str, ...]] | None = None) -> list[Explanation]:
    """The execution's explanation then each step's (``step_id``: that step's alone).
    ``depends_on``: each step's dependencies, to say what a pending step waits for."""
    if step_id is not None:
        return [_step(execution, step_id, execution.steps[step_id], depends_on or {})]
    return [_execution(execution),
            *(_step(execution, sid, state, depends_on or {}) for sid, state in execution.steps.items())]


def _execution(ex: Execution) -> Explanation:
    reasons = [f"runs version {ex.runbook_version} of runbook '{ex.runbook_id}'"]
    data: dict[str, Any] = {"runbookId": ex.runbook_id, "runbookVersion": ex.runbook_version}
    trigger = ex.context.get("trigger")
    if isinstance(trigger, Mapping):
        reasons.append(f"started by trigger '{trigger.get('id')}' ({trigger.get('kind')}) at {trigger.get('at')}")
        data["trigger"] = dict(trigger)
    elif ex.parent_execution_id is not None:
        reasons.append(f"started by step '{ex.parent_step_id}' of execution {ex.parent_execution_id}")
        data["parent"] = {"executionId": ex.parent_execution_id, "stepId": ex.parent_step_id}
    else:
        user = ex.context.get("userId")
        reasons.append(f"started by {user}" if user else "started through the embedded API")
        data["startedBy"] = user
    if ex.replay_of is not None:
        reasons.append(f"a replay of execution {ex.replay_of}")
        data["replayOf"] = ex.replay_of
    if ex.forked_from is not None:
        reasons.append(f"a fork of execution {ex.forked_from.get('executionId')} from step "
                       f"'{ex.forked_from.get('stepId')}': the steps before it keep that execution's outputs")
        data["forkedFrom"] = dict(ex.forked_from)
    if ex.context.get("legalBasis"):
        reasons.append(f"legal basis: {ex.context['legalBasis']}")
    return Explanation(None, ex.status.value, tuple(reasons), data)


def _step(ex: Execution, step_id: str, state: StepState, depends_on: Mapping[str, tuple[str, ...]]) -> Explanation:
    why = dict(state.why or {})
    reasons: list[str] = []
    data: dict[str, Any] = dict(why)
    by_hand = why.get("byHand")
    if isinstance(by_hand, Mapping):
        reasons.append(_by_hand(by_hand))
    forked = why.get("forked")
    if isinstance(forked, Mapping):
        reasons.append(f"{forked.get('status')} in execution {forked.get('executionId')}, kept by this fork "
                       "with its output")
    deps = depends_on.get(step_id, ())
    if state.status is SS.PENDING:
        if not forked:
            reasons.append(_pending(ex, deps))
    elif state.started_at is not None or "after" in why:
        reasons.append(_ready(deps, why.get("after") or {}))
    if "when" in why:
        when = why["when"]
        verdict = "so it ran" if when.get("result") else "so it was skipped"
        reasons.append(f"'when' {_checks(when)}, {verdict}")
    if "condition" in why:
        cond = why["condition"]
        branch = ", ".join(f"'{s}'" for s in cond.get("branch") or ()) or "no step"
        side = "true" if cond.get("result") else "false"
        reasons.append(f"condition {_checks(cond)}: took the {side} branch ({branch})")
    skipped = why.get("skipped")
    if skipped and "when" not in why:
        reasons.append(f"skipped: {skipped}")
    if "retries" in why:
        reasons.append(_retries(why["retries"], int(why.get("retried", len(why["retries"])))))
    reasons += _approvals(state, data)
    if state.type == "loop" and state.progress:
        total, done = state.progress.get("total"), state.progress.get("done")
        reasons.append(f"loop over {total} items, {done} ran" if total is not None else f"loop ran {done} times")
        data["loop"] = {"items": total, "ran": done}
    if state.child_execution_id:
        reasons.append(f"started child execution {state.child_execution_id}")
        data["childExecutionId"] = state.child_execution_id
    if state.attempts > 1:
        reasons.append(f"{state.attempts} attempts")
    if state.error is not None and state.status is not SS.SUCCEEDED and not isinstance(by_hand, Mapping):
        reasons.append(f"{state.status.value}: {state.error.code}: {state.error.message}")
    data["attempts"] = state.attempts
    return Explanation(step_id, state.status.value, tuple(reasons), data)


def _by_hand(record: Mapping[str, Any]) -> str:
    done = "completed" if record.get("action") == "completed" else "skipped"
    text = f"{done} by hand by {record.get('actor')}: {record.get('justification')}"
    if record.get("from"):
        text += f" (it was {record['from']})"
    return text


def _ready(deps: tuple[str, ...], unusual: Mapping[str, str]) -> str:
    """What made a step that started ready: its dependencies, each succeeded unless the record
    says otherwise."""
    if not deps:
        return "ready when the execution started (no dependencies)"
    return "ready once " + ", ".join(f"'{dep}' {unusual.get(dep, 'succeeded')}" for dep in deps)


def _pending(ex: Execution, deps: tuple[str, ...]) -> str:
    waiting = [f"'{dep}' ({ex.steps[dep].status.value})" for dep in deps
               if dep in ex.steps and ex.steps[dep].status not in _DONE]
    if ex.status.finished:
        return f"never started: the execution {ex.status.value} first"
    return "not started: waits for " + ", ".join(waiting) if waiting else "not started yet"


def _checks(record: Mapping[str, Any]) -> str:
    parts = [_check(check) for check in record.get("checks") or ()]
    if record.get("more"):
        parts.append(f"and {record['more']} more")
    if len(parts) == 1:
        return parts[0]
    result = "true" if record.get("result") else "false"
    return f"{'; '.join(parts) or 'nothing compared'}: in all {result}"


def _check(check: Mapping[str, Any]) -> str:
    field, actual, operator = check.get("field"), check.get("actual"), check.get("operator")
    result = "true" if check.get("result") else "false"
    if isinstance(actual, Mapping) and actual.get("missing") is True and len(actual) == 1:
        return f"{field} is missing ({operator}) → {result}"
    if operator == "exists":
        return f"{field} exists → {result}"
    return f"{field} = {_shown(actual)} {operator} {_shown(check.get('expected'))} → {result}"


def _shown(value: Any) -> str:
    if isinstance(value, str) and value.endswith("…"):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def _retries(retries: list[Mapping[str, Any]], count: int) -> str:
    each = "; ".join(f"attempt {r.get('attempt')} {r.get('code')}: {r.get('message')}" for r in retries)
    earlier = f" (the last {len(retries)} shown)" if count > len(retries) else ""
    return f"retried {count} time{'s' if count != 1 else ''}{earlier}: {each}"


def _approvals(state: StepState, data: dict[str, Any]) -> list[str]:
    if not state.approvals:
        return []
    data["approvals"] = [{"approver": a.approver, "decision": a.decision, "digest": a.digest,
                          "comment": a.comment} for a in state.approvals]
    lines = []
    for approval in state.approvals:
        word = "approved" if approval.decision == "approve" else "rejected"
        digest = f" on request digest {approval.digest[:12]}…" if approval.digest else ""
        comment = f": {approval.comment}" if approval.comment else ""
        lines.append(f"{word} by {approval.approver}{digest}{comment}")
    return lines
