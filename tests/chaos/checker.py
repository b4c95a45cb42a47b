"""Judges a round: what every client was told (``History``) against where the database and the
processes ended (``Snapshot``). Each rule returns readable ``Violation``s; ``check`` runs them all.

Each request carries a unique tag (a control's reason, an approval's comment, an event's
payload ``uid``), so its effect is found in the audit trail, the step states and the step
outputs. The rules:

- ``controls``: a control told 2xx is applied exactly once; told 4xx, never; with no answer
  (or a 5xx), at most once.
- ``queued``: a control or event told ``202 queued`` has a command row applied within
  ``bound_s``, every process answers its outcome (applied or refused) at the end, and it is
  applied once if that outcome is a success.
- ``events``: an event told ``delivered: n`` was taken by exactly n steps (more only if an
  earlier attempt without an answer went through too); one told ``retained`` was taken by at most
  one step, or is still retained; an event with no answer was taken at most once per attempt.
- ``calls``: a key the service answered 2xx more than once is explained by a fault between the
  two calls (an in-flight call run again); otherwise the step's call was made twice.
- ``starts``: the starts with one Idempotency-Key were told one execution, and a start told 2xx
  made one execution (no other carries its tag, replays aside).
- ``ended``: every execution finished.
- ``reads``: every process answers each execution's final status (no stale reads).
- ``leftovers``: no command row left unapplied, no wait row of a finished execution.
- ``errors``: no 5xx, except 503 while the process answering had an outage.
- ``exits``: no process ended without being told to.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from itertools import pairwise
from typing import Any

import attrs

from tests.chaos.final import Snapshot
from tests.chaos.history import CONTROLS, History, Request

OUTAGE_GRACE_S = 5.0  # a 503 this long after an outage ended is still the outage's


@attrs.frozen
class Violation:
    rule: str
    message: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.message}"


@attrs.frozen
class Bounds:
    queued_s: float = 15.0  # a 202 is applied within this (database clock, from the command's creation)


def check(history: History, final: Snapshot, bounds: Bounds = Bounds()) -> list[Violation]:
    rules: list[Callable[[History, Snapshot, Bounds], Iterable[Violation]]] = [
        controls, queued, events, calls, starts, ended, reads, leftovers, errors, exits]
    return [violation for rule in rules for violation in rule(history, final, bounds)]


def report(violations: list[Violation]) -> str:
    if not violations:
        return "no violations"
    by_rule = Counter(v.rule for v in violations)
    head = ", ".join(f"{rule}: {count}" for rule, count in sorted(by_rule.items()))
    return f"{len(violations)} violations ({head})\n" + "\n".join(f"  {v}" for v in violations)


def applications(request: Request, final: Snapshot) -> int:
    """How many times the control ``request`` shows in the execution's records."""
    if request.kind == "approve":
        execution = final.executions.get(request.execution or "")
        if execution is None:
            return 0
        step = execution.steps.get(request.step or "", {})
        return sum(1 for decision in step.get("approvals") or () if decision.get("comment") == request.tag)
    return sum(1 for row in final.audit if row.execution_id == request.execution and row.reason == request.tag)


def _command(request: Request, final: Snapshot) -> Any:
    command_id = request.body.get("commandId") if isinstance(request.body, dict) else None
    return next((c for c in final.commands if c.id == command_id), None)


def _queued(request: Request) -> bool:
    return request.status == 202 and isinstance(request.body, dict) and request.body.get("status") == "queued"


def _refused(outcome: Any) -> bool:
    """A command's recorded outcome (``{"ok": true, "execution": ...}`` or ``{"ok": false, "error": ...}``)
    is a refusal."""
    return isinstance(outcome, dict) and not outcome.get("ok")


def controls(history: History, final: Snapshot, bounds: Bounds) -> Iterable[Violation]:
    for request in history.requests:
        if request.kind not in CONTROLS or request.execution is None:
            continue
        count = applications(request, final)
        if _queued(request):
            command = _command(request, final)
            expected = (0, 1) if command is None or command.applied_after_s is None else (
                (0,) if _refused(command.outcome) else (1,))
        elif request.ok:
            expected = (1,)
        elif request.status is not None and request.status < 500:
            expected = (0,)
        else:
            expected = (0, 1)
        if count not in expected:
            yield Violation("controls", f"{request.describe()} -> applied {count} times")


def queued(history: History, final: Snapshot, bounds: Bounds) -> Iterable[Violation]:
    for request in history.requests:
        if not _queued(request):
            continue
        command = _command(request, final)
        if command is None:
            yield Violation("queued", f"{request.describe()} -> no such command row")
        elif command.applied_after_s is None:
            yield Violation("queued", f"{request.describe()} -> never applied")
        elif command.applied_after_s > bounds.queued_s:
            yield Violation("queued", f"{request.describe()} -> applied only {command.applied_after_s:.1f}s later")
    for read in final.command_reads:
        if read.seen not in ("applied", "refused"):
            yield Violation("queued", f"{read.process} answers {read.seen} for command {read.command_id} "
                                      "after the end (GET .../commands/{id})")


def taken(final: Snapshot) -> Counter[str]:
    """Event uid -> how many steps took it (as their output's payload)."""
    counts: Counter[str] = Counter()
    for execution in final.executions.values():
        for state in execution.steps.values():
            output = state.get("output")
            payload = output.get("payload") if isinstance(output, dict) else None
            if isinstance(payload, dict) and isinstance(payload.get("uid"), str):
                counts[payload["uid"]] += 1
    return counts


def events(history: History, final: Snapshot, bounds: Bounds) -> Iterable[Violation]:
    took = taken(final)
    still = Counter(p.get("uid") for p in final.retained if isinstance(p, dict))
    attempts: dict[str, list[Request]] = defaultdict(list)
    for request in history.of("publish"):
        attempts[request.tag].append(request)
    for uid, tries in attempts.items():
        told = [r for r in tries if r.ok and isinstance(r.body, dict) and "delivered" in r.body]
        unknown = sum(1 for r in tries if not r.ok and (r.status is None or r.status >= 500))
        count, kept = took[uid], still[uid]
        what = "; ".join(r.describe() for r in tries)
        if not told:
            if count + kept > len(tries):
                yield Violation("events", f"event {uid} taken {count} times, retained {kept}: {what}")
            continue
        delivered = sum(int(r.body["delivered"]) for r in told)
        expected = delivered + sum(1 for r in told if r.body.get("retained"))
        if count < delivered or count + kept < expected:
            yield Violation("events", f"event {uid} lost: taken by {count} steps, still retained {kept}: {what}")
        elif count + kept > expected + unknown:
            yield Violation("events", f"event {uid} taken too often: by {count} steps, still retained {kept}: "
                                      f"{what}")


def calls(history: History, final: Snapshot, bounds: Bounds) -> Iterable[Violation]:
    answered: dict[tuple[str, str], list[float]] = defaultdict(list)
    for call in final.calls:
        if call.status is not None and 200 <= call.status < 300:
            answered[call.path, call.key].append(call.arrived)
    for (path, key), times in answered.items():
        times.sort()
        for first, again in pairwise(times):
            if not any(o.covers(first, again, 0.0) for o in history.outages):
                yield Violation("calls", f"{path} called again with key {key} at {again:.2f}s after a 2xx "
                                         f"answer to the call at {first:.2f}s, no fault in between")


def starts(history: History, final: Snapshot, bounds: Bounds) -> Iterable[Violation]:
    by_key: dict[str, set[str]] = defaultdict(set)
    for request in history.of("start"):
        if request.ok and isinstance(request.body, dict):
            execution_id = str(request.body.get("id"))
            if execution_id not in final.executions:
                yield Violation("starts", f"{request.describe()} -> no such execution in the database")
            if request.idempotency_key:
                by_key[request.idempotency_key].add(execution_id)
    for key, ids in by_key.items():
        if len(ids) > 1:
            yield Violation("starts", f"Idempotency-Key {key} started {len(ids)} executions: {sorted(ids)}")
    made: dict[str, set[str]] = defaultdict(set)
    for execution in final.executions.values():
        if execution.tag is not None and execution.replay_of is None:
            made[execution.tag].add(execution.id)
    for request in history.of("start"):
        if request.ok and len(made[request.tag]) > 1:
            yield Violation("starts", f"{request.describe()} -> {len(made[request.tag])} executions carry its "
                                      f"tag: {sorted(made[request.tag])}")


def ended(history: History, final: Snapshot, bounds: Bounds) -> Iterable[Violation]:
    for execution in final.executions.values():
        if not execution.finished:
            steps = ", ".join(f"{sid}={state.get('status')}" for sid, state in execution.steps.items())
            owner = execution.owner
            lease = {True: "alive", False: "lease expired", None: "no instance row"}[final.instances.get(owner or "")]
            name = final.names.get(owner or "", owner)
            whose = f"owned by {name}{'' if name == owner else f' ({owner})'} ({lease})" if owner else "owned by nobody"
            started = next((f", started on {r.process} at {r.started:.2f}s" for r in history.of("start")
                            if r.ok and isinstance(r.body, dict) and r.body.get("id") == execution.id), "")
            yield Violation("ended", f"{execution.runbook_id} {execution.id} is still {execution.status} ({steps}), "
                                     f"{whose}{started}")


def reads(history: History, final: Snapshot, bounds: Bounds) -> Iterable[Violation]:
    for read in final.reads:
        execution = final.executions.get(read.execution)
        if execution is not None and read.seen != execution.status:
            yield Violation("reads", f"{read.process} answers {read.seen} for {read.execution}, "
                                     f"the database says {execution.status}")


def leftovers(history: History, final: Snapshot, bounds: Bounds) -> Iterable[Violation]:
    for command in final.commands:
        if command.applied_after_s is None:
            status = getattr(final.executions.get(command.execution_id), "status", None)
            yield Violation("leftovers", f"command {command.id} ({command.kind}) for {command.execution_id} "
                                         f"({status}) never applied")
    for wait in final.waits:
        if wait.execution_status is None or wait.execution_status in ("completed", "failed", "cancelled",
                                                                       "timed_out"):
            yield Violation("leftovers", f"wait row {wait.execution_id}/{wait.step_id} left for a "
                                         f"{wait.execution_status} execution")


def errors(history: History, final: Snapshot, bounds: Bounds) -> Iterable[Violation]:
    for request in history.requests:
        if request.status is None or request.status < 500:
            continue
        if request.status == 503 and any(o.process == request.process and o.covers(
                request.started, request.ended, OUTAGE_GRACE_S) for o in history.outages):
            continue
        yield Violation("errors", request.describe())


def exits(history: History, final: Snapshot, bounds: Bounds) -> Iterable[Violation]:
    for text in history.exits:
        yield Violation("exits", text)
