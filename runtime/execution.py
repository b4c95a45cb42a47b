"""The ExecutionActor: owns one execution's state, schedules its steps, handles control.

It starts from the committed state of its execution (a new one, one recovered after a
restart, or one restarted by its supervisor: the same path). Each turn it takes the
messages waiting in its mailbox, applies them to its state, schedules what became ready,
commits the resulting Change through the PersistenceActor and only then spawns the steps
it started and answers the callers. Task steps run as StepActors in the actor's ``steps``
nursery, each in its own cancel scope; approvals and event waits are parked steps with a
deadline held here; conditionals are decided inline.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import attrs
import trio

from actors import Mailbox, Reply, tell
from runtime import templates
from runtime.conditions import evaluate
from runtime.errors import Conflict, NotFound, RunbookError
from runtime.messages import (
    CancelExecution,
    DecideApproval,
    DeliverEvent,
    ExecutionMessage,
    PauseExecution,
    ResumeExecution,
    StepAttemptStarted,
    StepFinished,
    StepProgressed,
    StepRetrying,
    StopExecution,
)
from runtime.model import (
    Approval,
    AuditEntry,
    Event,
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
from runtime.records import Change
from runtime.step import step_actor
from runtime.steps import approval, conditional, wait_for_event
from runtime.steps.context import StepContext
from runtime.steps.loop import LoopRun
from runtime.steps.registry import StepKind
from runtime.wire import sha256_hex

if TYPE_CHECKING:
    from runtime.system import Runtime

ES = ExecutionStatus
SS = StepStatus
SYSTEM = "system"
_ACTIVE = (ES.RUNNING, ES.AWAITING_APPROVAL)


def build_scope(execution: Execution, step_id: str | None = None) -> dict[str, Any]:
    """The template/condition scope: input, context, ids and every succeeded step's output."""
    scope: dict[str, Any] = {
        "input": execution.input,
        "context": execution.context,
        "executionId": execution.id,
        "tenantId": execution.tenant_id,
        "execution": {"id": execution.id, "runbookId": execution.runbook_id, "runbookVersion": execution.runbook_version},
    }
    for sid, state in execution.steps.items():
        if state.status is SS.SUCCEEDED:
            scope[sid] = state.output
    if step_id is not None:
        scope["stepId"] = step_id
    return scope


class _Turn:
    """What one turn of the actor has changed and must commit before acting on it."""

    def __init__(self) -> None:
        self.steps: dict[str, None] = {}  # the steps changed, in order (smaller than a set)
        self.logs: list[LogEntry] = []
        self.audit: list[AuditEntry] = []
        self.evidence: list[Evidence] = []
        self.consumed: list[str] = []
        self.spawn: list[Callable[[], None]] = []
        self.replies: list[tuple[Reply[Any], Any]] = []


class ExecutionActor:
    def __init__(self, runtime: Runtime, execution: Execution, runbook: Runbook) -> None:
        self.rt = runtime
        self.ex = execution
        self.runbook = runbook
        self.steps_by_id: dict[str, Step] = {s.id: s for s in runbook.steps}
        self.positions = {s.id: i for i, s in enumerate(runbook.steps)}
        self.max_running = runbook.max_concurrent_steps or runtime.settings.max_concurrent_steps
        self.branch_owners: dict[str, list[str]] = {}
        for s in runbook.steps:
            if runtime.types[s.type].kind is StepKind.CONDITIONAL:
                for target in {t for branch in conditional.branches(s.config) for t in branch}:
                    self.branch_owners.setdefault(target, []).append(s.id)
        self.turn = _Turn()
        self.tasks: dict[str, trio.CancelScope] = {}
        self.parked: dict[str, float] = {}  # step id -> trio deadline
        self.approval_configs: dict[str, dict[str, Any]] = {}
        self.wait_configs: dict[str, dict[str, Any]] = {}
        self.deadline = math.inf
        self.nursery: trio.Nursery | None = None
        self.stopped = False
        self.committed: Execution | None = None  # the state last committed by this actor
        self.header_changed = False  # a field other than ``steps`` changed since the last commit
        self.draft: Execution | None = None  # self.ex while its steps dict is ours alone to change
        self.clock: datetime | None = None  # the time of this turn (read once per turn)
        self.pending: list[Step] = list(runbook.steps)  # pruned to the PENDING ones by _schedule
        self.blocked_on: dict[str, str] = {}  # step id -> a dependency last seen not done

    # ---------------------------------------------------------------- the loop
    async def run(self, mailbox: Mailbox[ExecutionMessage]) -> None:
        try:
            async with trio.open_nursery() as steps:
                self.nursery = steps
                self._recover()
                await self._settle()
                while not self.ex.status.finished:
                    for message in await self._receive(mailbox):
                        self._handle(message)
                    if self.stopped:
                        break  # nothing of this turn is committed: the new owner redoes it
                    await self._settle()
                steps.cancel_scope.cancel()
        finally:
            self._unsubscribe_all()
        self.rt._execution_ended(self.ex)

    async def _receive(self, mailbox: Mailbox[ExecutionMessage]) -> list[ExecutionMessage]:
        wake = min(self.deadline, *self.parked.values()) if self.parked else self.deadline
        if wake == math.inf:  # no deadline to wake for: no cancel scope to enter and leave
            messages = [await mailbox.receive()]
        else:
            with trio.move_on_at(wake) as timer:
                messages = [await mailbox.receive()]
            if timer.cancelled_caught:
                self.clock = None
                self._on_deadlines()
                return []
        self.clock = None  # a new turn: what it records carries a new time
        while len(messages) < 256:
            try:
                messages.append(mailbox.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                break
        return messages

    async def _settle(self) -> None:
        self._schedule()
        self.draft = None  # from here on self.ex is shared (the Change, the snapshot)
        turn, self.turn = self.turn, _Turn()
        change = Change(
            execution=self.ex if self.header_changed else None,  # steps go as rows, not in the header
            steps=tuple((self.ex.id, sid, self.positions[sid], self.ex.steps[sid]) for sid in turn.steps),
            logs=tuple(turn.logs), audit=tuple(turn.audit), evidence=tuple(turn.evidence),
            consume_events=tuple(turn.consumed),
        )
        if not change.empty:  # a turn that changed nothing (say, an event that did not match)
            await self.rt._commit(change)
            self.committed = self.ex
            self.header_changed = False
            self.rt._publish(self.ex)
        if self.rt.observers:
            for sid in turn.steps:
                state = self.ex.steps[sid]
                if state.status.finished:
                    self.rt._notify("step.finished", (self.ex, sid, state))
        for spawn in turn.spawn:
            spawn()
        for reply, value in turn.replies:
            reply.send(value)

    # ---------------------------------------------------------------- state helpers
    def now(self) -> datetime:
        """The time of the current turn: everything one turn records carries one time (as
        under a MockClock), and the clock is read once per turn, not per record."""
        if self.clock is None:
            self.clock = self.rt.now()
        return self.clock

    def _set_step(self, step_id: str, **changes: Any) -> StepState:
        state = attrs.evolve(self.ex.steps[step_id], **changes)
        if self.ex is self.draft:  # nobody else holds this steps dict yet: change it in place
            self.ex.steps[step_id] = state
        else:  # the first change since self.ex was handed out: copy once
            self.ex = self.draft = attrs.evolve(self.ex, steps={**self.ex.steps, step_id: state})
        self.turn.steps[step_id] = None
        return state

    def _set(self, **changes: Any) -> None:
        owned = self.ex is self.draft
        self.ex = attrs.evolve(self.ex, **changes)  # shares the steps dict, so it stays ours if it was
        self.draft = self.ex if owned else None
        self.header_changed = True

    def _log(self, level: str, text: str, step_id: str | None = None, /, **data: Any) -> None:
        self.turn.logs.append(LogEntry(self.ex.id, self.now(), level, text, step_id, data or None))

    def _audit(self, action: str, actor: str = SYSTEM, step_id: str | None = None,
               reason: str | None = None, **data: Any) -> None:
        self.turn.audit.append(AuditEntry(
            self.ex.id, self.now(), actor, action, step_id, self.ex.context.get("legalBasis"),
            reason if reason is not None else self.ex.context.get("reason"), data or None,
        ))

    def _trio_deadline(self, at: datetime | None) -> float:
        if at is None:
            return math.inf
        return trio.current_time() + (at - self.now()).total_seconds()

    # ---------------------------------------------------------------- start / recovery
    def _recover(self) -> None:
        if self.ex.status is ES.PENDING:
            now = self.now()
            deadline = now + timedelta(milliseconds=self.runbook.timeout_ms) if self.runbook.timeout_ms else None
            self._set(status=ES.RUNNING, started_at=now, deadline_at=deadline)
            self._log("info", "execution started")
            self._audit("execution.running")
        if self.ex.paused_at is None:
            self.deadline = self._trio_deadline(self.ex.deadline_at)
        for step in self.runbook.steps:
            state = self.ex.steps[step.id]
            if state.status in (SS.RUNNING, SS.RETRYING):
                self._log("warning", "step restarted after recovery", step.id)
                self._start_task(step, state.attempts + 1)
            elif state.status in (SS.WAITING, SS.AWAITING_APPROVAL):
                self._park(step, state.deadline_at)

    # ---------------------------------------------------------------- scheduling
    def _schedule(self) -> None:
        """Start (or skip, decide, park) every pending step that can; again while steps finish
        inline, since that can make others ready. Only pending steps are looked at, and one
        whose dependency was last seen not done costs one look until that one is done."""
        progressed = True
        while progressed and not self.ex.status.finished:
            progressed = False
            self.pending = [s for s in self.pending if self.ex.steps[s.id].status is SS.PENDING]
            for step in self.pending:
                if self.ex.steps[step.id].status is not SS.PENDING or self._blocked(step):
                    continue  # (decided meanwhile in this pass: a branch not taken)
                if self._try_start(step) and self.ex.steps[step.id].status.finished:
                    progressed = True
                if self.ex.status.finished:
                    return
        self._update_status()

    def _blocked(self, step: Step) -> bool:
        """Whether a dependency of ``step`` is not done (a cheap early answer for _try_start)."""
        seen = self.blocked_on.get(step.id)
        if seen is not None and not self._dependency_done(seen, self.ex.steps[seen]):
            return True
        for dep in step.depends_on or ():
            if not self._dependency_done(dep, self.ex.steps[dep]):
                self.blocked_on[step.id] = dep
                return True
        return False

    def _try_start(self, step: Step) -> bool:
        deps = [self.ex.steps[d] for d in step.depends_on or ()]
        if not all(self._dependency_done(d, s) for d, s in zip(step.depends_on or (), deps, strict=True)):
            return False
        undecided = [o for o in self.branch_owners.get(step.id, ()) if self.ex.steps[o].status is not SS.SUCCEEDED]
        if undecided:  # its conditional was skipped (or failed): the branch is not taken
            self._skip(step.id, f"branch of '{undecided[0]}' not taken")
            return True
        if deps and all(s.status is SS.SKIPPED for s in deps):
            self._skip(step.id, "every dependency was skipped")
            return True
        if self.ex.status not in _ACTIVE:
            return False
        scope = build_scope(self.ex, step.id)
        if step.when is not None and not evaluate(step.when, scope):
            self._skip(step.id, "'when' condition is false")
            return True
        kind = self.rt.types[step.type].kind
        if kind is StepKind.CONDITIONAL:
            self._decide_conditional(step, scope)
            return True
        if kind in (StepKind.TASK, StepKind.LOOP):
            if len(self.tasks) >= self.max_running:
                return False
            self._start_task(step, self.ex.steps[step.id].attempts + 1, scope)
            return True
        self._begin_parked(step, scope)
        return True

    def _dependency_done(self, dep_id: str, state: StepState) -> bool:
        if state.status in (SS.SUCCEEDED, SS.SKIPPED):
            return True
        return state.status in (SS.FAILED, SS.REJECTED) and self.steps_by_id[dep_id].continue_on_error

    def _skip(self, step_id: str, why: str) -> None:
        now = self.now()
        self._set_step(step_id, status=SS.SKIPPED, started_at=None, completed_at=now)
        self._log("info", f"step skipped: {why}", step_id)
        self._audit("step.skipped", step_id=step_id)

    def _mark_started(self, step: Step, status: StepStatus, attempt: int, **extra: Any) -> None:
        state = self.ex.steps[step.id]
        started = state.started_at if state.status.in_progress and state.started_at else self.now()
        self._set_step(step.id, status=status, attempts=attempt, started_at=started, completed_at=None,
                       error=None, **extra)
        self._log("info", "step started", step.id, attempt=attempt, type=step.type)
        self._audit("step.started", step_id=step.id)

    def _update_status(self) -> None:
        if self.ex.status.finished or self.ex.status is ES.PENDING:
            return
        if self.ex.status is ES.PAUSING and not self.tasks:
            self._set(status=ES.PAUSED)
            self._log("info", "execution paused")
            self._audit("execution.paused")
            return
        if self.ex.status not in _ACTIVE:
            return
        states = self.ex.steps.values()
        if all(s.status.finished for s in states):
            self._complete()
            return
        in_progress = [s for s in states if s.status.in_progress]
        waiting = bool(in_progress) and all(s.status is SS.AWAITING_APPROVAL for s in in_progress)
        status = ES.AWAITING_APPROVAL if waiting else ES.RUNNING
        if status is not self.ex.status:
            self._set(status=status)
            self._audit(f"execution.{status.value}")

    def _complete(self) -> None:
        try:
            output = self._output()
        except templates.TemplateError as exc:
            self._finish(ES.FAILED, StepError("template", f"execution output: {exc}"))
            return
        self._set(output=output)
        self._finish(ES.COMPLETED, None)

    def _output(self) -> Any:
        if self.runbook.output is not None:
            return templates.render(self.runbook.output, build_scope(self.ex))
        for step in reversed(self.runbook.steps):
            state = self.ex.steps[step.id]
            if state.status is SS.SUCCEEDED:
                return state.output
        return None

    def _finish(self, status: ExecutionStatus, error: StepError | None, actor: str = SYSTEM,
                reason: str | None = None) -> None:
        for step_id in list(self.tasks):
            self._cancel_step(step_id, "execution " + status.value)
        for step_id in list(self.parked):
            self._cancel_step(step_id, "execution " + status.value)
        self._set(status=status, error=error, completed_at=self.now())
        self._log("error" if error else "info", f"execution {status.value}", data=_error_json(error))
        self._audit(f"execution.{status.value}", actor, reason=reason, error=_error_json(error))

    def _cancel_step(self, step_id: str, why: str) -> None:
        scope = self.tasks.pop(step_id, None)
        if scope is not None:
            scope.cancel()
        self.parked.pop(step_id, None)
        self._unsubscribe(step_id)
        self._set_step(step_id, status=SS.CANCELLED, completed_at=self.now(),
                       error=StepError("cancelled", why, False))
        self._log("warning", "step cancelled", step_id, reason=why)
        self._audit("step.cancelled", step_id=step_id)

    # ---------------------------------------------------------------- task steps
    def _start_task(self, step: Step, attempt: int, step_scope: dict[str, Any] | None = None) -> None:
        """Mark the step started; its task is spawned once that is committed. ``step_scope``:
        its template scope, if the caller has just built it from the current state."""
        if step_scope is None:
            step_scope = build_scope(self.ex, step.id)
        self._mark_started(step, SS.RUNNING, attempt)
        scope = trio.CancelScope()
        self.tasks[step.id] = scope
        self.turn.spawn.append(lambda: self._spawn_task(step, attempt, scope, step_scope))

    def _spawn_task(self, step: Step, attempt: int, scope: trio.CancelScope, step_scope: dict[str, Any]) -> None:
        assert self.nursery is not None
        if scope.cancel_called:
            return
        self.nursery.start_soon(self._run_task, step, attempt, scope, step_scope, name=f"step {self.ex.id}/{step.id}")

    async def _run_task(self, step: Step, attempt: int, scope: trio.CancelScope, step_scope: dict[str, Any]) -> None:
        address = self.rt._address(self.ex.id)
        report = functools.partial(tell, address)  # the task ends or waits after each report
        step_type = self.rt.types[step.type]
        with scope:
            try:
                config = templates.render(step.config, step_scope) if step_type.kind is StepKind.TASK else step.config
            except templates.TemplateError as exc:
                await report(StepFinished(step.id, error=StepError("template", str(exc), False)))
                return
            assert step_type.executor is not None or step_type.kind is StepKind.LOOP
            if step_type.kind is StepKind.LOOP:
                await self._run_loop(step, config, step_scope, report)
                return
            assert step_type.executor is not None
            policy = step.retry_policy or self.rt.default_retry_policy
            await step_actor(step.id, step_type.executor, self._context_factory(step, config, step_scope),
                             policy, step.timeout_ms, attempt, report)

    def _context_factory(self, step: Step, config: Mapping[str, Any], scope: Mapping[str, Any],
                         iteration: int | None = None) -> Callable[[int], StepContext]:
        def make(attempt: int) -> StepContext:
            return StepContext(config=config, scope=scope, execution_id=self.ex.id, step_id=step.id,
                               tenant_id=self.ex.tenant_id, attempt=attempt, services=self.rt.services,
                               iteration=iteration)
        return make

    async def _run_loop(self, step: Step, config: Mapping[str, Any], scope: Mapping[str, Any], report: Any) -> None:
        body = config["step"]
        body_type = self.rt.types[body["type"]]
        assert body_type.executor is not None
        policy = self.rt.default_retry_policy
        if "retryPolicy" in body:
            from runtime.model import RetryPolicy
            from runtime.wire import from_json, to_json
            policy = from_json({**to_json(policy), **body["retryPolicy"]}, RetryPolicy)

        def make(index: int, iteration_scope: Mapping[str, Any], attempt: int, body_config: Mapping[str, Any]) -> StepContext:
            return self._context_factory(step, body_config, iteration_scope, index)(attempt)

        await LoopRun(step.id, config, scope, body_type.executor, policy, make, report, step.timeout_ms).run()

    # ---------------------------------------------------------------- parked steps
    def _begin_parked(self, step: Step, scope: dict[str, Any]) -> None:
        kind = self.rt.types[step.type].kind
        try:
            templates.render(step.config, scope)
        except templates.TemplateError as exc:
            self._mark_started(step, SS.RUNNING, 1)
            self._step_failed(step.id, StepError("template", str(exc), False))
            return
        default = step.timeout_ms or (wait_for_event.DEFAULT_TIMEOUT_MS if kind is StepKind.EVENT else None)
        timeout = step.config.get("timeoutMs", default)
        deadline = self.now() + timedelta(milliseconds=timeout) if timeout else None
        status = SS.WAITING if kind is StepKind.EVENT else SS.AWAITING_APPROVAL
        self._mark_started(step, status, self.ex.steps[step.id].attempts + 1, deadline_at=deadline, approvals=())
        self._park(step, deadline)

    def _park(self, step: Step, deadline: datetime | None) -> None:
        config = templates.render(step.config, build_scope(self.ex, step.id))
        self.parked[step.id] = self._trio_deadline(deadline)
        if self.rt.types[step.type].kind is StepKind.APPROVAL:
            self.approval_configs[step.id] = config
            if step.id in self.turn.steps:
                self._log("info", "approval requested", step.id, approvers=config.get("approvers"),
                          message=config.get("message"))
            return
        self.wait_configs[step.id] = config
        event = self.rt.router.subscribe(self.ex.tenant_id, config["eventType"], str(config["correlationKey"]),
                                         self.ex.id, step.id, lambda e: wait_for_event.matches(config, e))
        if event is not None:
            self.turn.consumed.append(event.id)
            self._event_arrived(step.id, event)

    def _unsubscribe(self, step_id: str) -> None:
        config = self.wait_configs.pop(step_id, None)
        if config is not None:
            self.rt.router.unsubscribe(self.ex.tenant_id, config["eventType"], str(config["correlationKey"]),
                                       self.ex.id, step_id)

    def _unsubscribe_all(self) -> None:
        for step_id in list(self.wait_configs):
            self._unsubscribe(step_id)

    def _event_arrived(self, step_id: str, event: Event) -> None:
        self.parked.pop(step_id, None)
        self._unsubscribe(step_id)
        self._step_succeeded(step_id, wait_for_event.output(event))
        self._audit("event.received", step_id=step_id, type=event.type, correlationKey=event.correlation_key)

    def _on_deadlines(self) -> None:
        now = trio.current_time()
        if now >= self.deadline and not self.ex.status.finished:
            timeout = StepError("timeout", f"execution timed out after {self.runbook.timeout_ms} ms", False)
            self._finish(ES.TIMED_OUT, timeout)
            return
        for step_id, deadline in list(self.parked.items()):
            if now >= deadline:
                self._parked_timed_out(step_id)

    def _parked_timed_out(self, step_id: str) -> None:
        self.parked.pop(step_id, None)
        step = self.steps_by_id[step_id]
        if self.rt.types[step.type].kind is StepKind.EVENT:
            self._unsubscribe(step_id)
            timeout = step.config.get("timeoutMs", step.timeout_ms or wait_for_event.DEFAULT_TIMEOUT_MS)
            self._step_failed(step_id, StepError("timeout", f"no event within {timeout} ms", False))
            return
        config = self.approval_configs[step_id]
        action = config.get("timeoutAction", "fail")
        approvals = self.ex.steps[step_id].approvals
        self._audit("approval.timed_out", step_id=step_id, timeoutAction=action)
        if action == "approve":
            self._step_succeeded(step_id, approval.output(approvals, approved=True, auto=True))
        elif action == "reject":
            self._step_rejected(step_id, approvals, "approval timed out (timeoutAction reject)")
        else:
            self._step_failed(step_id, StepError("timeout", f"no decision within {config.get('timeoutMs')} ms", False))

    # ---------------------------------------------------------------- outcomes
    def _step_succeeded(self, step_id: str, output: Any) -> None:
        self._set_step(step_id, status=SS.SUCCEEDED, output=output, error=None, completed_at=self.now())
        self._log("info", "step succeeded", step_id)
        self._audit("step.succeeded", step_id=step_id)
        step = self.steps_by_id[step_id]
        if self.rt.types[step.type].kind is StepKind.CONDITIONAL:
            for target in output["skipped"]:
                if self.ex.steps[target].status is SS.PENDING:
                    self._skip(target, f"branch not taken by '{step_id}'")

    def _step_failed(self, step_id: str, error: StepError, status: StepStatus = SS.FAILED) -> None:
        self._set_step(step_id, status=status, error=error, completed_at=self.now())
        self._log("error", f"step {status.value}: {error.message}", step_id, code=error.code)
        self._audit(f"step.{status.value}", step_id=step_id, error=_error_json(error))
        if not self.steps_by_id[step_id].continue_on_error and not self.ex.status.finished:
            self._finish(ES.FAILED, attrs.evolve(error, step_id=step_id))

    def _step_rejected(self, step_id: str, approvals: Any, why: str) -> None:
        self._set_step(step_id, output=approval.output(approvals, approved=False))
        self._step_failed(step_id, StepError("rejected", why, False), SS.REJECTED)

    def _decide_conditional(self, step: Step, scope: dict[str, Any]) -> None:
        self._mark_started(step, SS.RUNNING, self.ex.steps[step.id].attempts + 1)
        result, taken, not_taken = conditional.decide(step.config, scope)
        skipped = [t for t in not_taken if t not in taken]
        output = {"result": result, "branch": taken, "skipped": skipped}
        self._step_succeeded(step.id, output)
        self._set_step(step.id, output={"result": result, "branch": taken})

    # ---------------------------------------------------------------- messages
    def _handle(self, message: ExecutionMessage) -> None:
        reply = getattr(message, "reply", None)
        try:
            self._dispatch(message)
        except RunbookError as exc:
            if reply is None:
                raise
            reply.fail(exc)

    def _dispatch(self, message: ExecutionMessage) -> None:
        match message:
            case StepFinished():
                self._on_step_finished(message)
            case StepRetrying():
                self._on_step_retrying(message)
            case StepAttemptStarted(step_id=step_id, attempt=attempt):
                if step_id in self.tasks:
                    self._set_step(step_id, status=SS.RUNNING, attempts=attempt)
            case StepProgressed(step_id=step_id, progress=progress):
                if step_id in self.tasks:
                    self._set_step(step_id, progress=progress)
            case PauseExecution():
                self._pause(message)
            case ResumeExecution():
                self._resume(message)
            case CancelExecution():
                self._cancel(message)
            case DecideApproval():
                self._decide(message)
            case DeliverEvent():
                self._deliver(message)
            case StopExecution():
                self.stopped = True

    def _on_step_finished(self, message: StepFinished) -> None:
        if self.tasks.pop(message.step_id, None) is None:
            return  # cancelled meanwhile: its outcome no longer counts
        self.turn.logs += message.logs
        self.turn.evidence += message.evidence
        if message.error is None:
            self._step_succeeded(message.step_id, message.output)
        else:
            if message.output is not None:
                self._set_step(message.step_id, output=message.output)
            self._step_failed(message.step_id, message.error)

    def _on_step_retrying(self, message: StepRetrying) -> None:
        if message.step_id not in self.tasks:
            return
        self.turn.logs += message.logs
        self.turn.evidence += message.evidence
        self._set_step(message.step_id, status=SS.RETRYING, error=message.error)
        self._log("warning", f"step retrying in {message.delay_s:.3f} s: {message.error.message}",
                  message.step_id, attempt=message.attempt, code=message.error.code)
        self._audit("step.retrying", step_id=message.step_id, attempt=message.attempt)

    def _pause(self, message: PauseExecution) -> None:
        if self.ex.status not in _ACTIVE:
            raise Conflict(f"cannot pause an execution that is {self.ex.status.value}")
        self._set(status=ES.PAUSING if self.tasks else ES.PAUSED, paused_at=self.now())
        self.deadline = math.inf
        self._log("info", f"execution {self.ex.status.value}", reason=message.reason)
        self._audit("execution.pause", message.actor, reason=message.reason)
        self.turn.replies.append((message.reply, None))

    def _resume(self, message: ResumeExecution) -> None:
        if self.ex.status not in (ES.PAUSED, ES.PAUSING):
            raise Conflict(f"cannot resume an execution that is {self.ex.status.value}")
        paused_at = self.ex.paused_at or self.now()
        paused = self.now() - paused_at
        deadline = self.ex.deadline_at + paused if self.ex.deadline_at else None
        self._set(status=ES.RUNNING, paused_at=None, deadline_at=deadline,
                  paused_duration_ms=self.ex.paused_duration_ms + int(paused.total_seconds() * 1000))
        self.deadline = self._trio_deadline(deadline)
        self._log("info", "execution resumed", reason=message.reason)
        self._audit("execution.resume", message.actor, reason=message.reason)
        self.turn.replies.append((message.reply, None))

    def _cancel(self, message: CancelExecution) -> None:
        if self.ex.status.finished:
            raise Conflict(f"cannot cancel an execution that is {self.ex.status.value}")
        self._finish(ES.CANCELLED, StepError("cancelled", message.reason, False), message.actor, message.reason)
        self.turn.replies.append((message.reply, None))

    def _decide(self, message: DecideApproval) -> None:
        state = self.ex.steps.get(message.step_id)
        if state is None:
            raise NotFound(f"execution {self.ex.id} has no step '{message.step_id}'")
        if state.status is not SS.AWAITING_APPROVAL or message.step_id not in self.approval_configs:
            raise Conflict(f"step '{message.step_id}' is not awaiting approval (it is {state.status.value})")
        config = self.approval_configs[message.step_id]
        approval.check_decision(config, state.approvals, message.approver, message.decision, message.roles)
        decision = Approval(message.approver, message.decision, message.comment, self.now())
        approvals = (*state.approvals, decision)
        self._set_step(message.step_id, approvals=approvals)
        data = {"approver": decision.approver, "decision": decision.decision, "comment": decision.comment}
        self.turn.evidence.append(Evidence(
            sha256_hex(["approval", self.ex.id, message.step_id, state.attempts, decision.approver,
                        decision.at.isoformat()])[:32],
            self.ex.id, message.step_id, "approval_decision", sha256_hex(data), data, decision.at))
        self._log("info", f"approval decision: {decision.decision}", message.step_id, approver=decision.approver)
        self._audit("approval.decided", decision.approver, message.step_id, reason=message.comment,
                    decision=decision.decision)
        result = approval.outcome(config, approvals)
        if result is not None:
            self.parked.pop(message.step_id, None)
            if result == "approved":
                self._step_succeeded(message.step_id, approval.output(approvals, approved=True))
            else:
                self._step_rejected(message.step_id, approvals, f"rejected by {decision.approver}")
        self.turn.replies.append((message.reply, None))

    def _deliver(self, message: DeliverEvent) -> None:
        state = self.ex.steps.get(message.step_id)
        config = self.wait_configs.get(message.step_id)
        if state is None or state.status is not SS.WAITING or config is None:
            message.reply.send(False)
            return
        if not wait_for_event.matches(config, message.event):
            message.reply.send(False)
            return
        self._event_arrived(message.step_id, message.event)
        self.turn.replies.append((message.reply, True))


def _error_json(error: StepError | None) -> dict[str, Any] | None:
    if error is None:
        return None
    return {"code": error.code, "message": error.message, "retryable": error.retryable}
