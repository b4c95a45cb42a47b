"""The ExecutionActor: the thin shell that drives one execution's core (``runtime.core``).

It starts from the committed state of its execution (new, recovered after a restart,
reactivated after it was parked, or restarted by its supervisor after a crash: one path),
then takes the messages waiting in its mailbox, applies them to the core in one
transition, and performs the effects: subscriptions, timers and cancellations at once,
then the commit through the persistence actor, and only once that is durable the answers
to callers and the tasks of steps that start. Task steps run in the actor's ``steps``
nursery, each in its own cancel scope, and report back to its mailbox.

An execution with nothing running (only parked waits, or paused, or finished) leaves: the
actor closes its mailbox and ends, holding nothing; its deadline stays armed in the
runtime's timers and its subscriptions in the event router, and the next message or
deadline starts a new actor from committed state.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import attrs
import trio

from actors import Address, Mailbox, tell
from runtime.core import apply, apply_all
from runtime.core import effects as fx
from runtime.core.messages import Begin, Continue, DeliverEvent, Message
from runtime.core.state import ExecutionState
from runtime.io.task_run import Runner, TaskRun
from runtime.model import Event, Execution, StepStatus
from runtime.model.errors import Fenced
from runtime.model.records import Change, QueuedCommand, Wait, merged
from runtime.shell import commands
from runtime.shell.commands import CommandReply, Queued
from runtime.shell.host import ExecutionHost

logger = logging.getLogger("runbooks.execution")
MAX_BATCH = 256
REOFFER_CAP = 2**31  # an event handed back is kept whatever the tenant's cap: it was accepted already


@attrs.frozen
class Stop:
    """Stop running here without changing the state (another process owns it now)."""


ActorMessage = Message | Queued | Stop


class ExecutionActor:
    def __init__(self, host: ExecutionHost, execution_id: str, initial: Execution | None = None, *,
                 taken_over: bool = False) -> None:
        self.host = host
        self.id = execution_id
        self.address: Address[ActorMessage] | None = None  # set by whoever spawns the actor
        self.committed: Execution | None = initial  # the state last committed (or loaded)
        self._initial = initial
        self._state: ExecutionState | None = None
        self._scopes: dict[str, trio.CancelScope] = {}
        self._steps: trio.Nursery | None = None
        self._applied: set[str] = set()  # command ids applied by this actor
        self._silent: list[str] = []  # commands of this turn that nothing answers (a child's end)
        self._offered: dict[str, Event] = {}  # command id -> the event a command of this turn hands over
        self._taken_over = taken_over  # from another process: apply what was queued for it first

    async def run(self, mailbox: Mailbox[ActorMessage]) -> None:
        """One incarnation: until the execution leaves (parks, ends, or is stopped)."""
        execution, self._initial = self._initial or await self.host.load(self.id), None  # a restart reloads
        if execution is None:
            self._leave(mailbox, None)
            return
        self.committed = execution
        self._state = ExecutionState.of(await self.host.plan_for(execution), execution)
        queued: list[Queued] = []
        if self._taken_over and self.host.pending_commands is not None:
            queued = await self.host.pending_commands(self.id)
        async with trio.open_nursery() as steps:
            self._steps = steps
            try:
                async with self.host.gate.turn(execution.tenant_id):
                    await self._turn([Begin(self.host.incarnation()), *queued])  # queued commands first of all
                await self._loop(mailbox)
            except Fenced:
                logger.warning("execution %s: another process owns it now; stopped here", self.id)
                self._leave(mailbox, None)
            steps.cancel_scope.cancel()

    async def _loop(self, mailbox: Mailbox[ActorMessage]) -> None:
        assert self._state is not None
        while True:
            if self._state.idle:  # nothing runs: leave unless a message waits
                messages = _drain(mailbox, [])
                if not messages:
                    self._leave(mailbox, self.committed)
                    return
            else:
                messages = _drain(mailbox, [await mailbox.receive()])
            if any(isinstance(message, Stop) for message in messages):
                self._leave(mailbox, None)  # nothing of this batch is applied: the new owner redoes it
                return
            async with self.host.gate.turn(self._state.execution.tenant_id):  # round-robin across tenants
                await self._turn(_drain(mailbox, messages))  # type: ignore[arg-type]

    def _leave(self, mailbox: Mailbox[ActorMessage], final: Execution | None) -> None:
        # Parking, the mailbox was seen empty with no checkpoint since: nothing is lost. Stopped
        # (``final`` None), the replies of what waits fail and their senders go elsewhere.
        mailbox.close()
        self.host.left(self.id, self.address, final)

    # ------------------------------------------------------------------ one transition
    async def _turn(self, messages: Iterable[Message | Queued]) -> None:
        assert self._state is not None
        now = self.host.clock.now()
        self._state, effects = apply_all(self._state, self._fresh(messages), now)
        change, after = self._perform(effects, now)
        change, refused = self._with_outcomes(change, after)
        if change is not None:
            if self.host.owner is not None:
                change = attrs.evolve(change, fence=(self.id, self._state.execution.epoch, self.host.owner))
            if refused:  # handed back in the commit that refuses it: to another waiter, or retained
                change = attrs.evolve(change, publish=refused.pop(0), retain_cap=REOFFER_CAP)
            result = await self.host.commit(change)
            self.host.applied.add(command_id for command_id, _ in change.outcomes)
            self.committed = self._state.execution
            self.host.published(self.committed, change)
            self._hand(result.commands)
            for event in refused:  # (more than one in a turn: each in a commit of its own)
                self._hand((await self.host.commit(Change(publish=event, retain_cap=REOFFER_CAP))).commands)
        for effect in after:
            self._acknowledge(effect)
        if any(isinstance(effect, fx.Continue) for effect in after):
            await self._turn([Continue()])

    def _perform(self, effects: list[fx.Effect], now: object) -> tuple[Change | None, list[fx.Effect]]:
        """The effects that need no commit, at once; the change to commit and what waits for it."""
        assert self._state is not None
        change: Change | None = None
        after: list[fx.Effect] = []
        queue = list(effects)
        while queue:
            effect = queue.pop(0)
            if effect.after_commit:
                after.append(effect)
            elif isinstance(effect, fx.Commit):
                change = effect.change if change is None else merged(change, effect.change)
            elif isinstance(effect, fx.Subscribe) and self.host.owner is not None:  # waits in the database
                if self._stored_wait(effect.step_id):
                    continue
                wait = Wait(self.id, effect.step_id, effect.tenant_id, effect.event_type, effect.key, effect.filter)
                shared = Change(waits=(wait,))
                change = shared if change is None else merged(change, shared)
            elif isinstance(effect, fx.Unsubscribe) and self.host.owner is not None:
                shared = Change(unwaits=((self.id, effect.step_id),))
                if change is not None and change.waits:  # subscribed in this same turn: no row at all
                    change = attrs.evolve(change, waits=tuple(w for w in change.waits if w.step_id != effect.step_id))
                change = shared if change is None else merged(change, shared)
            elif isinstance(effect, fx.Subscribe):
                event = self.host.router.subscribe(effect.tenant_id, effect.event_type, effect.key, self.id,
                                                   effect.step_id, effect.filter)
                if event is not None:  # a retained event: the step takes it in this same turn
                    self._state, more = apply(self._state, DeliverEvent(effect.step_id, event), now)  # type: ignore[arg-type]
                    queue.extend(more)  # applied after this transition: its effects (commits, timers) come after
            elif isinstance(effect, fx.Unsubscribe):
                self.host.router.unsubscribe(effect.tenant_id, effect.event_type, effect.key, self.id, effect.step_id)
            elif isinstance(effect, fx.CancelAttempt):
                scope = self._scopes.pop(effect.attempt_id, None)
                if scope is not None:
                    scope.cancel()
            elif isinstance(effect, fx.ArmTimer):
                self.host.timers.arm(self.id, effect.at)
            elif isinstance(effect, fx.Note):
                logger.info("%s", effect.text)
        return change, after

    def _stored_wait(self, step_id: str) -> bool:
        """Whether the step's wait row is in the database already: it was waiting when last
        committed here, and so its row was committed with that state (an actor woken from
        parked subscribes again; one taken over from another process writes its rows again)."""
        committed = self.committed.steps.get(step_id) if self.committed is not None else None
        return not self._taken_over and committed is not None and committed.status is StepStatus.WAITING

    def _fresh(self, messages: Iterable[Message | Queued]) -> list[Message]:
        """The messages to apply; a command of the table only if this process has not applied
        it yet (read twice: announced twice, or by deliveries that overlapped)."""
        fresh = []
        for message in messages:
            if isinstance(message, Queued):
                if message.command_id in self._applied or message.command_id in self.host.applied:
                    continue
                self._applied.add(message.command_id)
                if not isinstance(getattr(message.message, "reply", None), CommandReply):
                    self._silent.append(message.command_id)  # nothing answers it: applied is its outcome
                if isinstance(message.message, DeliverEvent):
                    self._offered[message.command_id] = message.message.event
                message = message.message
            fresh.append(message)
        return fresh

    def _with_outcomes(self, change: Change | None, after: list[fx.Effect]) -> tuple[Change | None, list[Event]]:
        """The outcomes of commands from the database commit with the state they produced; and
        the events this turn's steps refused (no longer waiting), to be handed on or retained."""
        assert self._state is not None
        outcomes = [(command_id, commands.outcome_of_value(None)) for command_id in self._silent]
        refused: list[Event] = []
        for effect in after:
            reply = getattr(effect, "reply", None)
            if not isinstance(reply, CommandReply):
                continue
            if isinstance(effect, fx.AnswerState):
                outcomes.append((reply.command_id, commands.outcome_of_state(self._state.execution)))
            elif isinstance(effect, fx.Answer):
                outcomes.append((reply.command_id, commands.outcome_of_value(effect.value)))
            elif isinstance(effect, fx.Refuse):
                outcomes.append((reply.command_id, commands.outcome_of_error(effect.error)))
            event = self._offered.get(reply.command_id)
            if event is not None and not (isinstance(effect, fx.Answer) and effect.value is True):
                refused.append(event)
        self._silent, self._offered = [], {}
        if not outcomes:
            return change, refused
        if change is None:
            return Change(outcomes=tuple(outcomes)), refused
        return attrs.evolve(change, outcomes=change.outcomes + tuple(outcomes)), refused

    def _hand(self, queued: tuple[QueuedCommand, ...]) -> None:
        if queued and self.host.hand is not None:
            self.host.hand(queued)

    def _acknowledge(self, effect: fx.Effect) -> None:
        if isinstance(getattr(effect, "reply", None), CommandReply):
            return  # answered by its recorded outcome
        if isinstance(effect, fx.SpawnAttempt):
            self._spawn(effect)
        elif isinstance(effect, fx.AnswerState):
            effect.reply.send(self.committed)
        elif isinstance(effect, fx.Answer):
            effect.reply.send(effect.value)
        elif isinstance(effect, fx.Refuse):
            effect.reply.fail(effect.error)
        elif isinstance(effect, fx.StartChild):
            self.host.start_child(self.id, effect)
        elif isinstance(effect, fx.CancelChild):
            self.host.cancel_child(self.id, effect)
        elif isinstance(effect, fx.Notify):
            self.host.notify(self.id, effect)

    # ------------------------------------------------------------------ task steps
    def _spawn(self, effect: fx.SpawnAttempt) -> None:
        assert self._state is not None and self._steps is not None and self.address is not None
        step = self._state.plan.by_id[effect.step_id]
        step_type = self.host.types.get(step.type)
        assert step_type is not None and step_type.runner is not None
        host = self.host
        run = TaskRun(step, effect.attempt_id, effect.attempt, effect.scope, self.id,
                      self._state.execution.tenant_id, host.services, step.retry_policy or host.default_policy,
                      host.default_policy, host.types, self._report)
        scope = trio.CancelScope()
        self._scopes[effect.attempt_id] = scope
        self._steps.start_soon(self._run_task, step_type.runner, run, scope, name=f"step {self.id}/{step.id}")

    async def _report(self, message: Message) -> None:
        """Every report of a task reaches the core through here: redacted (no secret value in
        what the core records, answers or streams)."""
        assert self.address is not None
        await tell(self.address, self.host.services.secrets.redact_report(message))

    async def _run_task(self, runner: Runner, run: TaskRun, scope: trio.CancelScope) -> None:
        try:
            with scope:
                await runner(run)
        finally:
            self._scopes.pop(run.attempt_id, None)


def _drain(mailbox: Mailbox[ActorMessage], messages: list[ActorMessage]) -> list[ActorMessage]:
    while len(messages) < MAX_BATCH:
        try:
            messages.append(mailbox.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            break
    return messages
