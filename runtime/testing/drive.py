"""Running one case: the real engine on the memory store, on a virtual clock, with no network.

``run_case`` opens a runtime of its own under ``trio.run`` with ``MockClock(autojump_threshold=0)``
(whenever every task waits, the clock jumps to the next deadline: a four-hour approval
timeout takes no real time), gives it ``CannedReplies`` as its stand-in for the network,
registers the runbook and its sub-runbooks (without their triggers: a test starts its
execution itself), and starts one execution with the case's input and context.

Events and approvals are handed over at their ``atMs`` after the start, once the engine has
done everything it can at that instant. The case ends when the execution finishes, when
nothing more can happen (every step in progress waits for an event or a person, with no
deadline and nothing left to hand over), or at ``untilMs``. A plan (``plan=True``) also ends
when everything in progress waits, deadline or not: it shows what the runbook would wait for.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import trio
from trio.testing import MockClock, wait_all_tasks_blocked

from runtime.api.assembly import open_runtime
from runtime.api.runtime import Runtime
from runtime.model import AuditEntry, Execution, Runbook, StepState, StepStatus
from runtime.model.errors import NotFound, RunbookError
from runtime.security.secrets import ENV_PREFIX
from runtime.shell.settings import Settings
from runtime.testing.canned import Call, CannedReplies
from runtime.testing.spec import ApprovalAt, Case, Delivery, EventAt, Suite

TEST_USER = "runbook-test"  # context.userId of a case's execution unless the case gives one
MOVING = (StepStatus.RUNNING, StepStatus.RETRYING)
WAITS = (StepStatus.WAITING, StepStatus.AWAITING_APPROVAL)


@attrs.frozen
class Moment:
    """Something that happened at a virtual time: a step's new status, or a delivery."""

    at_ms: int
    step: str | None  # None: an event or an approval handed over
    what: str


@attrs.frozen
class Outcome:
    """What one run of a case did, for expectations and plans."""

    runbook: Runbook
    execution: Execution | None  # None: the start was refused
    refused: tuple[str, ...] = ()
    steps: Mapping[str, StepState] = attrs.Factory(dict)  # keyed as a test file names them
    scope: Mapping[str, Any] = attrs.Factory(dict)  # what an expected output's path resolves in
    calls: tuple[Call, ...] = ()
    problems: tuple[tuple[str, str], ...] = ()  # (where, what): calls with no reply, refused deliveries
    audit: tuple[AuditEntry, ...] = ()
    timeline: tuple[Moment, ...] = ()
    virtual_ms: int = 0
    stopped: str = "finished"  # "finished" | "waiting" (nothing more could happen) | "until"


def run_case(suite: Suite, case: Case, *, executors: Mapping[str, Any] | None = None,
             plan: bool = False) -> Outcome:
    """Run one case to its end on a virtual clock (a ``trio.run`` of its own)."""
    clock = MockClock(autojump_threshold=0)
    return trio.run(_run_case, suite, case, dict(executors or {}), plan, clock=clock)


async def _run_case(suite: Suite, case: Case, executors: dict[str, Any], plan: bool) -> Outcome:
    book = CannedReplies(case.replies, suite.runbook_id)
    settings = Settings(call_service_base_url=suite.base_url,
                        secrets_env={ENV_PREFIX + name: value for name, value in suite.secrets.items()})
    async with open_runtime("memory", settings=settings, stand_in=book, executors=executors) as rt:
        for document in suite.subs:
            await rt.register_runbook(_untriggered(document))
        runbook = await rt.register_runbook(_untriggered(suite.document))
        book.t0 = t0 = trio.current_time()
        try:
            started = await rt.start(runbook.id, case.input, {"userId": TEST_USER, **case.context}, force=True)
        except RunbookError as exc:
            return Outcome(runbook, None, refused=_refusal(exc), calls=tuple(book.calls))
        follow = Follow(rt, suite, case, started.id, plan, t0)
        final, stopped = await follow.run()
        virtual_ms = round((trio.current_time() - t0) * 1000)
        steps, scope = await _family(rt, final, suite.runbook_id)
        return Outcome(runbook, final, (), steps, scope, tuple(book.calls),
                       (*(("no canned reply", m) for m in book.missing), *follow.problems),
                       tuple(await rt.audit(final.id)), tuple(follow.timeline), virtual_ms, stopped)


def _untriggered(document: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in document.items() if key != "triggers"}


def _refusal(exc: RunbookError) -> tuple[str, ...]:
    problems = getattr(exc, "problems", None)
    if problems:
        return tuple(f"{p.path}: {p.message}" for p in problems)
    return (str(exc),)


class Follow:
    """Follows one execution to its end: records its steps' moments and hands over the
    case's events and approvals at their times."""

    def __init__(self, rt: Runtime, suite: Suite, case: Case, execution_id: str, plan: bool, t0: float) -> None:
        self.rt, self.case, self.execution_id, self.plan, self.t0 = rt, case, execution_id, plan, t0
        self.timeline: list[Moment] = []
        self.problems: list[tuple[str, str]] = []
        self._notifying = {(str(doc["id"]), str(step["id"])) for doc in (suite.document, *suite.subs)
                           for step in doc["steps"] if "notify" in (step.get("approvalConfig") or step.get("config") or {})}
        self._pending = len(case.deliveries)
        self._version = 0
        self._changed = trio.Event()
        self._seen: dict[str, str] = {}

    async def run(self) -> tuple[Execution, str]:
        """The execution's last state, and why following it stopped."""
        stopped = "until"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch)
            nursery.start_soon(self._deliver)
            with trio.move_on_at(self.t0 + self.case.until_ms / 1000):
                stopped = await self._settle()
            nursery.cancel_scope.cancel()
        final = await self.rt.get(self.execution_id)
        for item in self.case.deliveries[len(self.case.deliveries) - self._pending:]:
            self.problems.append((item.where, f"at {item.at_ms} ms: not handed over, the execution was "
                                              f"{final.status.value} by then ({self.now_ms()} ms)"))
        return final, stopped

    def now_ms(self) -> int:
        return round((trio.current_time() - self.t0) * 1000)

    async def _settle(self) -> str:
        while True:
            seen = self._version
            await wait_all_tasks_blocked()  # the engine has done all it can now (the clock waits for this)
            execution = await self.rt.get(self.execution_id)
            if execution.status.finished:
                return "finished"
            if self._pending == 0 and await self._idle(execution):
                return "waiting"
            while self._version == seen:
                await self._changed.wait()

    def _bump(self) -> None:
        self._version += 1
        self._changed.set()
        self._changed = trio.Event()

    # ------------------------------------------------------------------ what moves
    async def _idle(self, execution: Execution) -> bool:
        """Nothing in the execution will move by itself (a plan: nor by a deadline)."""
        if execution.deadline_at is not None and not self.plan:
            return False
        return all([await self._step_idle(execution, step_id, state) for step_id, state in execution.steps.items()])

    async def _step_idle(self, execution: Execution, step_id: str, state: StepState) -> bool:
        if state.status in MOVING:
            return state.child_execution_id is not None and await self._child_idle(state.child_execution_id)
        if state.status not in WAITS:
            return True
        if state.deadline_at is not None and not self.plan:
            return False
        return not (state.status is StepStatus.AWAITING_APPROVAL and state.notified is None
                    and (execution.runbook_id, step_id) in self._notifying)

    async def _child_idle(self, child_id: str) -> bool:
        try:
            child = await self.rt.get(child_id)
        except NotFound:  # not started yet
            return False
        return not child.status.finished and await self._idle(child)

    # ------------------------------------------------------------------ records
    async def _watch(self) -> None:
        async for execution in self.rt.watch(self.execution_id):
            for step_id, state in execution.steps.items():
                if self._seen.get(step_id, "pending") != state.status.value:
                    self._seen[step_id] = state.status.value
                    self.timeline.append(Moment(self.now_ms(), step_id, state.status.value))
            self._bump()

    async def _deliver(self) -> None:
        for item in self.case.deliveries:
            await trio.sleep_until(self.t0 + item.at_ms / 1000)
            await wait_all_tasks_blocked()  # the engine has done all it can at this instant
            await self._hand_over(item)
            self._pending -= 1
            self._bump()

    async def _hand_over(self, item: Delivery) -> None:
        if isinstance(item, EventAt):
            tenant = (await self.rt.get(self.execution_id)).tenant_id
            self.timeline.append(Moment(self.now_ms(), None, f"event {item.type} {item.key!r} published"))
            result = await self.rt.publish_event(item.type, item.key, item.payload, tenant_id=tenant)
            if not result.delivered:
                self.timeline.append(Moment(self.now_ms(), None, "  (no step waits for it yet: kept for one)"))
            return
        self.timeline.append(Moment(self.now_ms(), None, f"{item.approver}: {item.decision} '{item.step}'"))
        await self._decide(item)

    async def _decide(self, item: ApprovalAt) -> None:
        target = await self._execution_of(item.step)
        step_id = item.step.rsplit("/", 1)[-1]
        try:
            if target is None:
                raise NotFound(f"no execution of {item.step.split('/')[0]} has started")
            await self.rt.submit_approval(target.id, step_id, approver=item.approver, decision=item.decision,
                                          comment=item.comment, roles=item.roles)
        except RunbookError as exc:
            self.problems.append((item.where, f"at {item.at_ms} ms, {item.approver} could not {item.decision} "
                                              f"'{item.step}': {exc}"))
            self.timeline.append(Moment(self.now_ms(), None, f"  (refused: {exc})"))

    async def _execution_of(self, key: str) -> Execution | None:
        """The execution whose step ``key`` names: this one, or the latest child of that runbook."""
        root = await self.rt.get(self.execution_id)
        if "/" not in key:
            return root
        runbook_id = key.split("/")[0]
        found = [e for e in await _descendants(self.rt, root) if e.runbook_id == runbook_id]
        return found[-1] if found else None


async def _descendants(rt: Runtime, execution: Execution) -> list[Execution]:
    """The executions the execution's run-runbook steps started, and theirs."""
    found = []
    for state in execution.steps.values():
        if state.child_execution_id is not None:
            try:
                child = await rt.get(state.child_execution_id)
            except NotFound:
                continue
            found += [child, *(await _descendants(rt, child))]
    return found


async def _family(rt: Runtime, root: Execution, runbook_id: str) -> tuple[dict[str, StepState], dict[str, Any]]:
    """Every step of the execution and of its children, keyed as a test file names them, and
    the scope expected outputs resolve in."""
    steps: dict[str, StepState] = {}
    for execution in (root, *(await _descendants(rt, root))):
        prefix = "" if execution.runbook_id == runbook_id else f"{execution.runbook_id}/"
        for step_id, state in execution.steps.items():
            steps.setdefault(prefix + step_id, state)
    scope: dict[str, Any] = {key: state.output for key, state in steps.items()
                             if state.output is not None or state.status is StepStatus.SUCCEEDED}
    error = None if root.error is None else {"code": root.error.code, "message": root.error.message,
                                             "stepId": root.error.step_id}
    scope |= {"input": root.input, "context": root.context,
              "execution": {"status": root.status.value, "output": root.output, "error": error}}
    return steps, scope
