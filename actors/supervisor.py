"""Supervision: running actors in a nursery, restarting them, escalating.

This module owns the lifecycle of a child actor: which task runs it, what a
crash does to its mailbox (held replies fail with ``ActorCrashed``, queued
messages survive for the next incarnation), the restart policy (at most N
restarts within T seconds of ``trio.current_time()``), and what happens past
it (``on_give_up``, or ``RestartLimitExceeded`` escalating out of
``open_supervisor``). When a child ends for good its mailbox is closed and
every unanswered reply fails with ``ActorGone``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import attrs
import trio

from actors.mailbox import ActorCrashed, ActorGone, Address, Mailbox, open_mailbox

M = TypeVar("M")

Actor = Callable[[Mailbox[M]], Awaitable[None]]
GiveUp = Callable[[BaseException], Awaitable[None]]

logger = logging.getLogger("actors")


@attrs.frozen
class RestartPolicy:
    """Restart a crashed child at most ``max_restarts`` times within ``within_s`` seconds."""

    max_restarts: int = 3
    within_s: float = 5.0


_DEFAULT_POLICY = RestartPolicy()


class RestartLimitExceeded(Exception):
    """A child crashed more often than its policy allows; raised from the last crash."""

    def __init__(self, name: str) -> None:
        super().__init__(f"actor {name!r} crashed too often; giving up")
        self.name = name


@attrs.define
class _Restarts:
    """The restart times of one child that still count against its policy."""

    policy: RestartPolicy | None
    # a list, not a deque: it holds a few times, and an empty deque costs ~600 bytes per child
    times: list[float] = attrs.field(factory=list)

    def allow(self, now: float) -> bool:
        """Record and allow a restart at ``now`` if the policy permits one."""
        if self.policy is None:
            return False
        while self.times and now - self.times[0] >= self.policy.within_s:
            del self.times[0]
        if len(self.times) >= self.policy.max_restarts:
            return False
        self.times.append(now)
        return True


class Supervisor:
    """Owns a nursery; starts children, restarts crashed ones by policy, escalates past it."""

    def __init__(self, nursery: trio.Nursery, name: str) -> None:
        self.name = name
        self._nursery = nursery
        self._children = 0

    def spawn(
        self,
        actor: Actor[M],
        *,
        name: str,
        mailbox_size: int = 64,
        policy: RestartPolicy | None = _DEFAULT_POLICY,
        on_give_up: GiveUp | None = None,
    ) -> Address[M]:
        """Run ``actor(mailbox)`` as a task named ``name``; return its address at once.

        A normal return ends the child. An ``Exception`` is a crash: the child
        restarts with the same mailbox if ``policy`` allows (``None``: never),
        else its mailbox closes and ``on_give_up(exc)`` is awaited, or without
        it ``RestartLimitExceeded`` cancels this supervisor and propagates.
        """
        address: Address[M]
        mailbox: Mailbox[M]
        address, mailbox = open_mailbox(name, mailbox_size)
        self._nursery.start_soon(self._run_child, actor, mailbox, policy, on_give_up, name=name)
        self._children += 1
        return address

    def cancel(self) -> None:
        """Cancel the supervisor's scope: every child at once, and the ``async with`` body."""
        self._nursery.cancel_scope.cancel()

    @property
    def children(self) -> int:
        """How many children are running (restarting ones included)."""
        return self._children

    async def _run_child(
        self,
        actor: Actor[M],
        mailbox: Mailbox[M],
        policy: RestartPolicy | None,
        on_give_up: GiveUp | None,
    ) -> None:
        try:
            exc = await _run_until_limit(actor, mailbox, _Restarts(policy))
            if exc is None:
                return
            mailbox.close()  # before on_give_up: senders fail fast from now on
            if on_give_up is None:
                raise RestartLimitExceeded(mailbox.name) from exc
            await on_give_up(exc)
        finally:
            mailbox.close()
            mailbox.fail_held(ActorGone)
            self._children -= 1

    def __repr__(self) -> str:
        return f"<Supervisor {self.name!r} children={self._children}>"


async def _run_until_limit(
    actor: Actor[M], mailbox: Mailbox[M], restarts: _Restarts
) -> Exception | None:
    """Run incarnations of ``actor``; ``None`` if one returned, else the crash past the limit."""
    while True:
        try:
            await actor(mailbox)
            return None
        except Exception as exc:  # Cancelled, KeyboardInterrupt and their groups pass through
            mailbox.fail_held(ActorCrashed)
            if not restarts.allow(trio.current_time()):
                logger.warning("actor %r crashed; giving up", mailbox.name, exc_info=exc)
                return exc
            logger.warning("actor %r crashed; restarting", mailbox.name, exc_info=exc)


@asynccontextmanager
async def open_supervisor(name: str = "supervisor") -> AsyncIterator[Supervisor]:
    """A supervisor whose children live in a nursery; leaving the block waits for them."""
    async with trio.open_nursery() as children:
        yield Supervisor(children, name)
