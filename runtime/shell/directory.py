"""``Directory``: which executions this process runs, and the way to reach each of them.

An execution is *live* (an ExecutionActor runs it: steps in flight, or a message being
applied) or *parked* (nothing runs: it only waits, for a decision, an event, a deadline or
a resume; it costs an id here, its deadline in the timers and its subscriptions in the
event router). A message to a parked execution (``ask``, ``post``) starts a new actor from
committed state first (the state it last committed here while the runtime's cache of recent
states still holds it, else read back): reactivation is the recovery path. Actors leave by themselves when
they have nothing to run; the directory only keeps the books (``left``). An execution whose
actor keeps crashing is failed, with the same guard as every write of its owner (a process
that is no longer its owner changes nothing) and without its waits for events.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import attrs
import trio

from actors import ActorGone, Address, Reply, RestartPolicy, Supervisor, tell
from runtime.core import crashed
from runtime.model import Execution, StepStatus
from runtime.model.errors import Fenced
from runtime.shell.commands import Applied
from runtime.shell.execution import ActorMessage, ExecutionActor, Stop
from runtime.shell.host import ExecutionHost

T = TypeVar("T")
logger = logging.getLogger("runbooks.runtime")
EXECUTION_RESTARTS = RestartPolicy(max_restarts=3, within_s=10.0)
MAILBOX_SIZE = 64


class Directory:
    def __init__(self, supervisor: Supervisor, nursery: trio.Nursery) -> None:
        self._supervisor = supervisor
        self._nursery = nursery  # for sends that must wait for room in a full mailbox
        self._live: dict[str, tuple[Address[ActorMessage], ExecutionActor]] = {}
        self._parked: set[str] = set()
        self._incarnations = itertools.count(1)
        self.host: ExecutionHost | None = None
        self.applied = Applied()  # commands of the commands table applied here (each once)
        self.on_finished: Callable[[str], None] | None = None  # the lease keeper's, when there is one

    def next_incarnation(self) -> int:
        return next(self._incarnations)

    # ------------------------------------------------------------------ what runs here
    @property
    def count(self) -> int:
        """Executions this process runs: live and parked."""
        return len(self._live) + len(self._parked)

    @property
    def live(self) -> int:
        return len(self._live)

    def knows(self, execution_id: str) -> bool:
        return execution_id in self._live or execution_id in self._parked

    def ids(self) -> set[str]:
        return set(self._live) | self._parked

    def address(self, execution_id: str) -> Address[ActorMessage] | None:
        found = self._live.get(execution_id)
        return found[0] if found is not None else None

    def snapshot(self, execution_id: str) -> Execution | None:
        """The last committed state of a live execution."""
        found = self._live.get(execution_id)
        return found[1].committed if found is not None else None

    # ------------------------------------------------------------------ starting actors
    def start(self, execution_id: str, initial: Execution | None = None, *,
              taken_over: bool = False) -> Address[ActorMessage]:
        """Run the execution here (``initial``: its committed state, else read from the store).
        ``taken_over``: it comes from another process (or a dead one): its queued commands first."""
        assert self.host is not None
        found = self._live.get(execution_id)
        if found is not None:
            return found[0]
        if execution_id in self._parked:
            self._parked.discard(execution_id)
            if initial is None and not taken_over:  # it parked here: its last commit, if still in memory
                initial = self.host.recent(execution_id)
        actor = ExecutionActor(self.host, execution_id, initial, taken_over=taken_over)

        async def give_up(exc: BaseException) -> None:
            await self._crashed(actor, exc)

        address: Address[ActorMessage] = self._supervisor.spawn(
            actor.run, name=f"execution {execution_id}", mailbox_size=MAILBOX_SIZE,
            policy=EXECUTION_RESTARTS, on_give_up=give_up)
        actor.address = address
        self._live[execution_id] = (address, actor)
        return address

    def left(self, execution_id: str, address: Any, final: Execution | None) -> None:
        """An actor has ended: parked (``final`` unfinished), finished, or stopped (None)."""
        found = self._live.get(execution_id)
        if found is not None and found[0] is address:
            del self._live[execution_id]
        elif found is not None:
            return  # stopped before, and started again since: the new actor keeps the books
        if final is None:
            self.forget(execution_id)
        elif final.status.finished:
            self._parked.discard(execution_id)
            if self.on_finished is not None:
                self.on_finished(execution_id)
        elif execution_id not in self._live:
            self._parked.add(execution_id)

    def stop(self, execution_id: str) -> None:
        """Stop running the execution here at once, changing nothing (another process owns it,
        or may soon): it is not known here from now on, even while its actor is still leaving."""
        address = self.address(execution_id)
        self._live.pop(execution_id, None)
        self.forget(execution_id)
        if address is None:
            return
        try:
            address.send_nowait(Stop())
        except trio.WouldBlock:
            self._nursery.start_soon(_send_quietly, address, Stop())
        except ActorGone:
            pass  # it has ended already

    def forget(self, execution_id: str) -> None:
        """This process no longer runs the execution (another one owns it now)."""
        self._parked.discard(execution_id)
        if self.host is not None:
            self.host.timers.arm(execution_id, None)

    async def _crashed(self, actor: ExecutionActor, exc: BaseException) -> None:
        assert self.host is not None
        execution = actor.committed
        found = self._live.get(actor.id)
        if found is not None and found[1] is actor:
            del self._live[actor.id]
        if execution is None or execution.status.finished:
            return
        change = crashed(execution, _describe(exc), self.host.clock.now())
        if self.host.owner is not None:  # guarded as every write of an owner; its waits end with it
            waiting = tuple((actor.id, step_id) for step_id, step in execution.steps.items()
                            if step.status is StepStatus.WAITING)
            change = attrs.evolve(change, fence=(actor.id, execution.epoch, self.host.owner), unwaits=waiting)
        try:
            await self.host.commit(change)
        except Fenced:
            logger.warning("execution %s: its actor crashed here, but another process owns it now; "
                           "left to that one", actor.id)
            self.forget(actor.id)
            return
        assert change.execution is not None
        self.host.timers.arm(actor.id, None)
        self.host.published(change.execution, change)
        if self.on_finished is not None:
            self.on_finished(actor.id)

    # ------------------------------------------------------------------ reaching an execution
    async def ask(self, execution_id: str, make: Callable[[Reply[T]], ActorMessage]) -> T:
        """Send ``make(reply)`` to the execution (starting an actor for it if none runs) and
        wait for the answer. Raises ``ActorGone`` if its actor ends without answering."""
        while True:
            address = self.start(execution_id)
            reply: Reply[T] = Reply()
            try:
                await tell(address, make(reply))
            except ActorGone:
                continue  # it left as we looked it up: the next lookup starts a new actor
            return await reply.wait()

    def post(self, execution_id: str, message: ActorMessage) -> None:
        """Send ``message`` without waiting (a deadline's tick). An actor found gone twice is
        one the runtime is closing (or one given up after crashes, whose execution is failed
        meanwhile): the message is dropped, as the runtime would drop it a moment later."""
        address = self.start(execution_id)
        try:
            address.send_nowait(message)
        except trio.WouldBlock:
            self._nursery.start_soon(self._send_later, execution_id, message)
        except ActorGone:
            try:
                self.start(execution_id).send_nowait(message)
            except trio.WouldBlock:
                self._nursery.start_soon(self._send_later, execution_id, message)
            except ActorGone:
                logger.info("execution %s: its actor is closing; %s dropped", execution_id, type(message).__name__)

    async def _send_later(self, execution_id: str, message: ActorMessage) -> None:
        while True:
            try:
                await self.start(execution_id).send(message)
                return
            except ActorGone:
                continue


async def _send_quietly(address: Address[ActorMessage], message: ActorMessage) -> None:
    try:
        await address.send(message)
    except ActorGone:
        pass  # it has ended meanwhile


def _describe(exc: BaseException) -> str:
    """``Type: message`` of each leaf of an exception (group), for error messages."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(inner) for inner in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"
