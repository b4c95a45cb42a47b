"""``apply``: the rules of one execution, as a pure function of (state, message, now).

A call builds one transition (``_Turn``): the messages are applied in order, then every
step that became ready is started (or skipped, parked, decided), the execution's status
follows from its steps, and the timer is armed for the next deadline. The transition ends
as a list of effects (``runtime.core.effects``) with at most one ``Commit`` holding every
record it made: step states, the header when it changed, logs, audit entries, evidence,
consumed events. Every state change bumps ``Execution.version`` once per transition.

The rules, in words:
- A step starts when each dependency is finished (succeeded, skipped, or failed/rejected
  with ``continueOnError``) and, for task kinds, a ``maxConcurrentSteps`` slot is free. A
  step whose dependencies were all skipped, a branch target its conditional did not take,
  and a step whose ``when`` is false are skipped.
- A step that fails without ``continueOnError`` fails the execution: steps in flight are
  cancelled, steps never started stay pending.
- Pause stops new starts (``pausing`` until the tasks in flight end); parked waits go on.
  Paused time does not count against the execution's timeout.
- Cancel and the execution's timeout cancel everything in flight at once.
- Control that does not fit the state is refused (``Conflict``) and changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

import attrs

from runtime.core import effects as fx
from runtime.core.messages import (
    Begin,
    Cancel,
    Continue,
    DeliverEvent,
    Message,
    Pause,
    Resume,
    RetryStep,
    Tick,
)
from runtime.core.plan import Plan
from runtime.core.scope import build_scope
from runtime.core.state import ExecutionState
from runtime.language import templates
from runtime.language.conditions import PatternError, evaluate
from runtime.model import (
    AuditEntry,
    Evidence,
    Execution,
    ExecutionStatus,
    LogEntry,
    Runbook,
    Step,
    StepError,
    StepState,
    StepStatus,
)
from runtime.model.errors import Conflict, NotFound, RunbookError
from runtime.model.records import Change

ES = ExecutionStatus
SS = StepStatus
SYSTEM = "system"
_ACTIVE = (ES.RUNNING, ES.AWAITING_APPROVAL)
_DONE = (SS.SUCCEEDED, SS.SKIPPED)
_FAILED = (SS.FAILED, SS.REJECTED)


def apply(state: ExecutionState, message: Message, now: datetime) -> tuple[ExecutionState, list[fx.Effect]]:
    """Apply one message; see ``apply_all``."""
    return apply_all(state, (message,), now)


def apply_all(state: ExecutionState, messages: Iterable[Message],
              now: datetime) -> tuple[ExecutionState, list[fx.Effect]]:
    """Apply ``messages`` in order as one transition; the next state and its effects.

    The state is taken over: the one returned is the one to use next (it may be the same
    object). A ``RunbookError`` raised for a message that carries a reply refuses that
    message only (``Refuse``); anything else raised is a bug and leaves the state unusable
    (the shell restarts the execution from committed state).
    """
    turn = _Turn(state, now)
    for message in messages:
        turn.handle(message)
    if turn.hold:
        turn.after.append(fx.Continue())
    else:
        turn.schedule()
    turn.arm_timer()
    return state, turn.finish()


def created(runbook: Runbook, *, execution_id: str, input: Any, context: dict[str, Any], input_hash: str,
            idempotency_key: str | None, dedup: bool, replay_of: str | None, now: datetime,
            actor: str | None, reason: str | None, parent: tuple[str, str, int] | None = None) -> Change:
    """The records of a new execution (``pending``; its ``Begin`` starts it once committed).
    ``parent``: (execution id, step id, depth) of a child started by a run-runbook step."""
    execution = Execution(
        id=execution_id, runbook_id=runbook.id, runbook_version=runbook.version,
        tenant_id=context["tenantId"], status=ES.PENDING, created_at=now,
        steps={s.id: StepState(SS.PENDING, s.type) for s in runbook.steps},
        input=input, context=context, input_hash=input_hash, idempotency_key=idempotency_key,
        deduplicated=dedup, replay_of=replay_of, version=1,
    )
    if parent is not None:
        execution = attrs.evolve(execution, parent_execution_id=parent[0], parent_step_id=parent[1], depth=parent[2])
    ids: dict[str, Any] = {"runbookId": runbook.id, "runbookVersion": runbook.version}
    if parent is not None:
        ids |= {"parentExecutionId": parent[0], "parentStepId": parent[1]}
    audit = AuditEntry(execution_id, now, actor or str(context.get("userId") or SYSTEM), "execution.started",
                       None, context.get("legalBasis"), reason or context.get("reason"),
                       {**ids, "replayOf": replay_of})
    log = LogEntry(execution_id, now, "info", "execution created", None, ids)
    return Change(new_execution=execution, dedup=dedup, audit=(audit,), logs=(log,))


def crashed(execution: Execution, message: str, now: datetime) -> Change:
    """The records that fail an execution whose actor kept crashing (its steps stay as they are)."""
    error = StepError("crashed", f"execution actor crashed repeatedly: {message}")
    failed = attrs.evolve(execution, status=ES.FAILED, error=error, completed_at=now,
                          version=execution.version + 1)
    audit = AuditEntry(execution.id, now, SYSTEM, "execution.failed", data={"error": error.message})
    return Change(execution=failed, audit=(audit,))


def steps_to_retry(plan: Plan, execution: Execution, step_id: str) -> set[str]:
    """The step, the steps its failure cancelled, and everything downstream that did not succeed."""
    reset = {step_id} | {sid for sid, s in execution.steps.items() if s.status is SS.CANCELLED}
    frontier = list(reset)
    while frontier:
        for child in plan.dependents.get(frontier.pop(), ()):
            if child not in reset and execution.steps[child].status is not SS.SUCCEEDED:
                reset.add(child)
                frontier.append(child)
    return reset


def error_json(error: StepError | None) -> dict[str, Any] | None:
    if error is None:
        return None
    return {"code": error.code, "message": error.message, "retryable": error.retryable}


class _Turn:
    """One transition in progress; it is the ``StepOps`` the kinds are handed."""

    def __init__(self, state: ExecutionState, now: datetime) -> None:
        self.s = state
        self.plan = state.plan
        self._now = now
        self.ex = state.execution
        self._own = False  # self.ex (and its steps dict) is this turn's private copy
        self._header = False  # a field other than ``steps`` changed
        self._scope: dict[str, Any] | None = None  # the scope without stepId, while valid
        self.changed: dict[str, None] = {}  # the steps changed, in order
        self.logs: list[LogEntry] = []
        self.audits: list[AuditEntry] = []
        self.evidence: list[Evidence] = []
        self.consumed: list[str] = []
        self.before: list[fx.Effect] = []
        self.after: list[fx.Effect] = []
        self.hold = False  # commit and answer this transition before scheduling (a retry)

    # ------------------------------------------------------------------ reading
    @property
    def now(self) -> datetime:
        return self._now

    @property
    def execution(self) -> Execution:
        return self.ex

    def step_state(self, step_id: str) -> StepState:
        return self.ex.steps[step_id]

    def scope(self, step_id: str | None = None) -> dict[str, Any]:
        if self._scope is None:
            self._scope = build_scope(self.ex)
        return {**self._scope, "stepId": step_id} if step_id is not None else dict(self._scope)

    def current_attempt(self, step_id: str) -> str | None:
        return self.s.attempts.get(step_id)

    # ------------------------------------------------------------------ writing
    def _mine(self) -> None:
        if not self._own:  # the first change of this turn: copy once, one version per turn
            self.ex = attrs.evolve(self.ex, steps=dict(self.ex.steps), version=self.ex.version + 1)
            self._own = True

    def set_step(self, step_id: str, **changes: Any) -> StepState:
        self._mine()
        old = self.ex.steps[step_id]
        state = self.ex.steps[step_id] = attrs.evolve(old, **changes)
        if old.status is SS.SUCCEEDED or state.status is SS.SUCCEEDED:
            self._scope = None  # outputs in scope changed
        self.changed[step_id] = None
        return state

    def _replace_step(self, step_id: str, state: StepState) -> None:
        self._mine()
        self.ex.steps[step_id] = state
        self._scope = None
        self.changed[step_id] = None

    def _set(self, **changes: Any) -> None:
        self._mine()
        self.ex = attrs.evolve(self.ex, **changes)  # shares this turn's steps dict
        self._header = True

    def log(self, level: str, text: str, step_id: str | None = None, /, **data: Any) -> None:
        self.logs.append(LogEntry(self.ex.id, self._now, level, text, step_id, data or None))

    def audit(self, action: str, actor: str = SYSTEM, step_id: str | None = None,
              reason: str | None = None, **data: Any) -> None:
        context = self.ex.context
        self.audits.append(AuditEntry(
            self.ex.id, self._now, actor, action, step_id, context.get("legalBasis"),
            reason if reason is not None else context.get("reason"), data or None,
        ))

    def add_records(self, logs: Sequence[LogEntry] = (), evidence: Sequence[Evidence] = ()) -> None:
        self.logs += logs
        self.evidence += evidence

    def consume_event(self, event_id: str) -> None:
        self.consumed.append(event_id)

    def note(self, text: str) -> None:
        self.before.append(fx.Note(text))

    def answer_state(self, reply: Any) -> None:
        if reply is not None:
            self.after.append(fx.AnswerState(reply))

    def answer(self, reply: Any, value: Any) -> None:
        if reply is not None:
            self.after.append(fx.Answer(reply, value))

    # ------------------------------------------------------------------ step lifecycle
    def mark_started(self, step: Step, status: StepStatus, **extra: Any) -> None:
        state = self.ex.steps[step.id]
        attempt = state.attempts + 1
        started = state.started_at if state.status.in_progress and state.started_at else self._now
        self.set_step(step.id, status=status, attempts=attempt, started_at=started, completed_at=None,
                      error=None, **extra)
        self.log("info", "step started", step.id, attempt=attempt, type=step.type)
        self.audit("step.started", step_id=step.id)

    def succeed(self, step_id: str, output: Any) -> None:
        self.set_step(step_id, status=SS.SUCCEEDED, output=output, error=None, completed_at=self._now)
        self.log("info", "step succeeded", step_id)
        self.audit("step.succeeded", step_id=step_id)

    def fail(self, step_id: str, error: StepError, status: StepStatus = SS.FAILED) -> None:
        self.set_step(step_id, status=status, error=error, completed_at=self._now)
        self.log("error", f"step {status.value}: {error.message}", step_id, code=error.code)
        self.audit(f"step.{status.value}", step_id=step_id, error=error_json(error))
        if not self.plan.by_id[step_id].continue_on_error and not self.ex.status.finished:
            self._finish(ES.FAILED, attrs.evolve(error, step_id=step_id))

    def skip(self, step_id: str, why: str) -> None:
        self.set_step(step_id, status=SS.SKIPPED, started_at=None, completed_at=self._now)
        self.log("info", f"step skipped: {why}", step_id)
        self.audit("step.skipped", step_id=step_id)

    # ------------------------------------------------------------------ tasks
    def spawn(self, step: Step) -> None:
        s = self.s
        s.issued += 1
        attempt_id = f"{s.incarnation}.{s.issued}"
        s.attempts[step.id] = attempt_id
        self.after.append(fx.SpawnAttempt(step.id, attempt_id, self.ex.steps[step.id].attempts, self.scope(step.id)))

    def attempt_over(self, step_id: str) -> None:
        self.s.attempts.pop(step_id, None)

    def cancel_attempt(self, step_id: str) -> None:
        attempt_id = self.s.attempts.pop(step_id, None)
        if attempt_id is None:
            return
        for index, effect in enumerate(self.after):
            if isinstance(effect, fx.SpawnAttempt) and effect.attempt_id == attempt_id:
                del self.after[index]  # started in this very transition: it never runs
                return
        self.before.append(fx.CancelAttempt(step_id, attempt_id))

    # ------------------------------------------------------------------ children, notifications
    def start_child(self, step: Step, child_id: str, runbook_id: str, version: int | None, input: Any,
                    context: Any) -> None:
        attempt = self.ex.steps[step.id].attempts
        self.after.append(fx.StartChild(step.id, attempt, child_id, runbook_id, version, input, dict(context),
                                        self.ex.depth + 1))

    def cancel_child(self, child_id: str, reason: str) -> None:
        self.after.append(fx.CancelChild(child_id, reason))

    def notify(self, step: Step, config: Any, payload: Any) -> None:
        attempt = self.ex.steps[step.id].attempts
        self.after.append(fx.Notify(step.id, attempt, dict(config), self.scope(step.id), dict(payload),
                                    step.retry_policy))

    # ------------------------------------------------------------------ parked steps
    def park(self, step_id: str, deadline: datetime | None) -> None:
        self.s.parked[step_id] = deadline

    def unpark(self, step_id: str) -> None:
        self.s.parked.pop(step_id, None)

    def subscribe(self, step_id: str, event_type: str, key: str, filter: Any) -> None:
        self.s.subscriptions[step_id] = (event_type, key)
        self.before.append(fx.Subscribe(step_id, self.ex.tenant_id, event_type, key, filter))

    def unsubscribe(self, step_id: str) -> None:
        found = self.s.subscriptions.pop(step_id, None)
        if found is not None:
            self.before.append(fx.Unsubscribe(step_id, self.ex.tenant_id, *found))

    # ------------------------------------------------------------------ messages
    def handle(self, message: Message) -> None:
        reply = getattr(message, "reply", None)
        try:
            _HANDLERS.get(type(message), _Turn._to_step)(self, message)
        except RunbookError as exc:
            if reply is None:
                raise
            self.after.append(fx.Refuse(reply, exc))

    def _to_step(self, message: Any) -> None:
        step = self.plan.by_id.get(message.step_id)
        if step is None:
            if isinstance(message, DeliverEvent):
                self.answer(message.reply, False)
                return
            raise NotFound(f"execution {self.ex.id} has no step '{message.step_id}'")
        self.plan.kinds[step.id].message(self, step, message)

    def _begin(self, message: Begin) -> None:
        s = self.s
        s.incarnation, s.issued, s.armed = message.incarnation, 0, False
        s.attempts.clear()
        s.parked.clear()
        s.subscriptions.clear()
        if self.ex.status is ES.PENDING:
            timeout = self.plan.runbook.timeout_ms
            deadline = self._now + timedelta(milliseconds=timeout) if timeout else None
            self._set(status=ES.RUNNING, started_at=self._now, deadline_at=deadline)
            self.log("info", "execution started")
            self.audit("execution.running")
        if self.ex.status.finished:
            return
        for step in self.plan.steps:
            state = self.ex.steps[step.id]
            if state.status.in_progress:
                self.plan.kinds[step.id].resume(self, step, state)

    def _tick(self, message: Tick) -> None:
        if self.ex.status.finished:
            return
        at = max(self._now, message.at)  # everything due at the armed time fires
        deadline = self.ex.deadline_at
        if deadline is not None and self.ex.paused_at is None and at >= deadline:
            timeout = self.plan.runbook.timeout_ms
            self._finish(ES.TIMED_OUT, StepError("timeout", f"execution timed out after {timeout} ms", False))
            return
        for step_id, due in list(self.s.parked.items()):
            if due is not None and at >= due and step_id in self.s.parked and not self.ex.status.finished:
                self.plan.kinds[step_id].timeout(self, self.plan.by_id[step_id])

    def _pause(self, message: Pause) -> None:
        if self.ex.status not in _ACTIVE:
            raise Conflict(f"cannot pause an execution that is {self.ex.status.value}")
        self._set(status=ES.PAUSING if self.s.attempts else ES.PAUSED, paused_at=self._now)
        self.log("info", f"execution {self.ex.status.value}", reason=message.reason)
        self.audit("execution.pause", message.actor, reason=message.reason)
        self.answer_state(message.reply)

    def _resume(self, message: Resume) -> None:
        ex = self.ex
        if ex.status not in (ES.PAUSED, ES.PAUSING):
            raise Conflict(f"cannot resume an execution that is {ex.status.value}")
        paused = self._now - (ex.paused_at or self._now)
        self._set(status=ES.RUNNING, paused_at=None,
                  deadline_at=ex.deadline_at + paused if ex.deadline_at else None,
                  paused_duration_ms=ex.paused_duration_ms + int(paused.total_seconds() * 1000))
        self.log("info", "execution resumed", reason=message.reason)
        self.audit("execution.resume", message.actor, reason=message.reason)
        self.answer_state(message.reply)

    def _cancel(self, message: Cancel) -> None:
        if self.ex.status.finished:
            raise Conflict(f"cannot cancel an execution that is {self.ex.status.value}")
        self._finish(ES.CANCELLED, StepError("cancelled", message.reason, False), message.actor, message.reason)
        self.answer_state(message.reply)

    def _retry(self, message: RetryStep) -> None:
        ex, step_id = self.ex, message.step_id
        if step_id not in ex.steps:
            raise NotFound(f"execution {ex.id} has no step '{step_id}'")
        if ex.status is not ES.FAILED:
            raise Conflict(f"only a failed execution can retry a step (this one is {ex.status.value})")
        status = ex.steps[step_id].status
        if status not in _FAILED:
            raise Conflict(f"step '{step_id}' is {status.value}, not failed or rejected")
        reset = sorted(steps_to_retry(self.plan, ex, step_id))
        for sid in reset:
            old = self.ex.steps[sid]
            self._replace_step(sid, StepState(SS.PENDING, old.type, attempts=old.attempts))
        timeout = self.plan.runbook.timeout_ms
        self._set(status=ES.RUNNING, error=None, completed_at=None, output=None,
                  deadline_at=self._now + timedelta(milliseconds=timeout) if timeout else None)
        self.audits.append(AuditEntry(ex.id, self._now, message.actor, "step.retry", step_id,
                                      ex.context.get("legalBasis"), message.reason, {"reset": reset}))
        self.log("info", "step retry requested", step_id, reset=reset)
        self.s.pending = list(self.plan.steps)
        self.s.blocked_on.clear()
        self.hold = True
        self.answer_state(message.reply)

    # ------------------------------------------------------------------ scheduling
    def schedule(self) -> None:
        """Start (or skip, decide, park) every pending step that can; again while steps end
        within the pass, since that can make others ready. A step whose dependency was last
        seen not done costs one look until that dependency is done."""
        s, steps = self.s, self.ex.steps
        progressed = True
        while progressed and not self.ex.status.finished:
            progressed = False
            steps = self.ex.steps
            s.pending = [p for p in s.pending if steps[p.id].status is SS.PENDING]
            for step in s.pending:
                if self.ex.steps[step.id].status is not SS.PENDING or self._blocked(step):
                    continue  # (decided meanwhile in this pass: a branch not taken)
                if self._try_start(step) and self.ex.steps[step.id].status.finished:
                    progressed = True
                if self.ex.status.finished:
                    return
        self._update_status()

    def _done(self, dep_id: str) -> bool:
        status = self.ex.steps[dep_id].status
        return status in _DONE or (status in _FAILED and self.plan.by_id[dep_id].continue_on_error)

    def _blocked(self, step: Step) -> bool:
        seen = self.s.blocked_on.get(step.id)
        if seen is not None and not self._done(seen):
            return True
        for dep in step.depends_on or ():
            if not self._done(dep):
                self.s.blocked_on[step.id] = dep
                return True
        return False

    def _try_start(self, step: Step) -> bool:
        steps = self.ex.steps
        deps = step.depends_on or ()
        undecided = [o for o in self.plan.branch_owners.get(step.id, ()) if steps[o].status is not SS.SUCCEEDED]
        if undecided:  # its conditional was skipped (or failed): the branch is not taken
            self.skip(step.id, f"branch of '{undecided[0]}' not taken")
            return True
        if deps and all(steps[d].status is SS.SKIPPED for d in deps):
            self.skip(step.id, "every dependency was skipped")
            return True
        if self.ex.status not in _ACTIVE:
            return False
        try:
            if step.when is not None and not evaluate(step.when, self.scope(step.id)):
                self.skip(step.id, "'when' condition is false")
                return True
        except PatternError as exc:
            self.fail(step.id, StepError(exc.code, f"'when': {exc}", False))
            return True
        kind = self.plan.kinds[step.id]
        if kind.uses_slot and len(self.s.attempts) >= self.plan.max_running:
            return False
        kind.begin(self, step)
        return True

    def _update_status(self) -> None:
        ex = self.ex
        if ex.status.finished or ex.status is ES.PENDING:
            return
        if ex.status is ES.PAUSING and not self.s.attempts:
            self._set(status=ES.PAUSED)
            self.log("info", "execution paused")
            self.audit("execution.paused")
            return
        if ex.status not in _ACTIVE:
            return
        finished = True
        in_progress = False
        approvals_only = True  # every step in progress is an approval waiting for decisions
        for state in ex.steps.values():
            step_status = state.status
            if step_status.finished:
                continue
            finished = False
            if step_status.in_progress:
                in_progress = True
                if step_status is not SS.AWAITING_APPROVAL:
                    approvals_only = False
        if finished:
            self._complete()
            return
        status = ES.AWAITING_APPROVAL if in_progress and approvals_only else ES.RUNNING
        if status is not ex.status:
            self._set(status=status)
            self.audit(f"execution.{status.value}")

    def _complete(self) -> None:
        try:
            output = self._output()
        except templates.TemplateError as exc:
            self._finish(ES.FAILED, StepError("template", f"execution output: {exc}"))
            return
        self._set(output=output)
        self._finish(ES.COMPLETED, None)

    def _output(self) -> Any:
        if self.plan.runbook.output is not None:
            return templates.render(self.plan.runbook.output, self.scope())
        for step in reversed(self.plan.steps):
            state = self.ex.steps[step.id]
            if state.status is SS.SUCCEEDED:
                return state.output
        return None

    def _finish(self, status: ExecutionStatus, error: StepError | None, actor: str = SYSTEM,
                reason: str | None = None) -> None:
        why = "execution " + status.value
        for step_id in [*self.s.attempts, *self.s.parked]:
            self._cancel_step(step_id, why)
        self._set(status=status, error=error, completed_at=self._now)
        self.log("error" if error else "info", f"execution {status.value}", data=error_json(error))
        self.audit(f"execution.{status.value}", actor, reason=reason, error=error_json(error))

    def _cancel_step(self, step_id: str, why: str) -> None:
        self.plan.kinds[step_id].cancel(self, self.plan.by_id[step_id])
        self.s.attempts.pop(step_id, None)
        self.s.parked.pop(step_id, None)
        self.set_step(step_id, status=SS.CANCELLED, completed_at=self._now, error=StepError("cancelled", why, False))
        self.log("warning", "step cancelled", step_id, reason=why)
        self.audit("step.cancelled", step_id=step_id)

    # ------------------------------------------------------------------ the end of the turn
    def arm_timer(self) -> None:
        s, ex = self.s, self.ex
        wake: datetime | None = None
        if not ex.status.finished:
            if ex.deadline_at is not None and ex.paused_at is None:
                wake = ex.deadline_at
            for due in s.parked.values():
                if due is not None and (wake is None or due < wake):
                    wake = due
        if not s.armed or wake != s.wake_at:
            s.wake_at, s.armed = wake, True
            self.before.append(fx.ArmTimer(wake))

    def finish(self) -> list[fx.Effect]:
        ex = self.ex
        if not self._own and (self.logs or self.audits or self.evidence or self.consumed):
            self._mine()  # records without a state change still make a new version
            ex = self.ex
        self.s.execution = ex
        effects = self.before
        if self._own:
            positions = self.plan.positions
            effects.append(fx.Commit(Change(
                execution=ex if self._header else None,
                steps=tuple((ex.id, sid, positions[sid], ex.steps[sid]) for sid in self.changed),
                logs=tuple(self.logs), audit=tuple(self.audits), evidence=tuple(self.evidence),
                consume_events=tuple(self.consumed), version=(ex.id, ex.version),
            )))
        effects += self.after
        return effects


_HANDLERS: dict[type, Callable[[_Turn, Any], None]] = {
    Begin: _Turn._begin,
    Continue: lambda turn, message: None,
    Tick: _Turn._tick,
    Pause: _Turn._pause,
    Resume: _Turn._resume,
    Cancel: _Turn._cancel,
    RetryStep: _Turn._retry,
}
