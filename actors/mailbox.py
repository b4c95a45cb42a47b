"""Mailboxes, addresses and ask/reply: how actors talk to each other.

This module owns the bounded channel between senders (``Address``, cheap to
share) and one actor (``Mailbox``), the one-shot ``Reply`` slot, and ``ask``.

The never-hang rule for ``ask``: a message that expects an answer carries its
``Reply`` in an attribute named ``reply``. The mailbox remembers the reply of
every message it hands out until that reply is done. Whoever runs the actor
(normally ``actors.supervisor``) fails those held replies when the actor
crashes (``ActorCrashed``) or ends for good (``ActorGone``), and ``close()``
fails the replies of messages still queued. So an asker always gets an answer,
an error, or a cancellation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, Self, TypeVar

import trio

M = TypeVar("M")
T = TypeVar("T")

_PRUNE_MIN = 16  # held replies are pruned when their list reaches this size (then doubles)


class ActorGone(Exception):
    """The actor has ended (or its mailbox was closed); it will not answer."""

    def __init__(self, name: str) -> None:
        super().__init__(f"actor {name!r} is gone")
        self.name = name


class ActorCrashed(ActorGone):
    """The actor crashed while holding the message; it will not answer it."""

    def __init__(self, name: str) -> None:
        Exception.__init__(self, f"actor {name!r} crashed while holding the message")
        self.name = name


class Reply(Generic[T]):
    """One-shot reply slot carried inside a message. Replying never blocks."""

    __slots__ = ("_error", "_event", "_value")

    def __init__(self) -> None:
        self._event = trio.Event()
        self._value: T | None = None
        self._error: BaseException | None = None

    def send(self, value: T) -> None:
        """Answer with ``value``; a second answer raises ``RuntimeError``."""
        self._settle()
        self._value = value
        self._event.set()

    def fail(self, exc: BaseException) -> None:
        """Answer with an error: ``ask`` re-raises ``exc`` in the asker."""
        self._settle()
        self._error = exc
        self._event.set()

    @property
    def done(self) -> bool:
        return self._event.is_set()

    def _settle(self) -> None:
        if self._event.is_set():
            raise RuntimeError("this reply has already been answered")

    async def wait(self) -> T:
        """The answer: the value sent, or the error passed to ``fail`` raised here."""
        await self._event.wait()
        if self._error is not None:
            error, self._error = self._error, None  # drop our reference: no cycle via traceback
            raise error
        return self._value  # type: ignore[return-value]  # set by send() before the event


class Address(Generic[M]):
    """The send side of an actor's bounded mailbox; cheap to copy and share."""

    __slots__ = ("_channel", "_mailbox", "name")

    def __init__(self, name: str, channel: trio.MemorySendChannel[M], mailbox: Mailbox[M]) -> None:
        self.name = name
        self._channel = channel
        self._mailbox = mailbox

    async def send(self, message: M) -> None:
        """Enqueue ``message``, waiting while the mailbox is full (never drops).

        Raises ``ActorGone`` if the mailbox is closed, also while waiting.
        """
        try:
            await self._channel.send(message)
        except trio.BrokenResourceError:
            raise ActorGone(self.name) from None

    def send_nowait(self, message: M) -> None:
        """Enqueue ``message`` or raise ``trio.WouldBlock`` (full) / ``ActorGone``."""
        try:
            self._channel.send_nowait(message)
        except trio.BrokenResourceError:
            raise ActorGone(self.name) from None

    @property
    def closed(self) -> bool:
        return self._mailbox.closed

    def __repr__(self) -> str:
        return f"<Address {self.name!r}>"


class Mailbox(Generic[M]):
    """The receive side, owned by the actor."""

    def __init__(self, name: str, channel: trio.MemoryReceiveChannel[M]) -> None:
        self.name = name
        self._channel = channel
        self._closed = False
        self._held: list[Reply[object]] = []  # replies of handed-out messages, maybe answered
        self._prune_at = _PRUNE_MIN

    async def receive(self) -> M:
        """The next message; ``trio.EndOfChannel`` once the mailbox is closed."""
        try:
            message = await self._channel.receive()
        except trio.ClosedResourceError:
            raise trio.EndOfChannel from None
        self._hold(message)
        return message

    def receive_nowait(self) -> M:
        """The next message, or ``trio.WouldBlock`` / ``trio.EndOfChannel``."""
        try:
            message = self._channel.receive_nowait()
        except trio.ClosedResourceError:
            raise trio.EndOfChannel from None
        self._hold(message)
        return message

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> M:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    def close(self) -> None:
        """Stop accepting messages and fail the replies of those still queued.

        Afterwards senders (also those waiting on a full mailbox) get
        ``ActorGone``. Replies already handed out are left to ``fail_held``.
        """
        if self._closed:
            return
        self._closed = True
        while True:  # drain synchronously: no sender can slip in between
            try:
                message = self._channel.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            _fail(message, ActorGone(self.name))
        self._channel.close()

    def fail_held(self, error: Callable[[str], ActorGone]) -> None:
        """Fail every handed-out, unanswered reply with ``error(self.name)``."""
        held, self._held = self._held, []
        for reply in held:
            if not reply.done:
                reply.fail(error(self.name))

    @property
    def closed(self) -> bool:
        return self._closed

    def statistics(self) -> trio.MemoryChannelStatistics:
        """The underlying trio channel statistics."""
        return self._channel.statistics()

    def _hold(self, message: M) -> None:
        reply = getattr(message, "reply", None)
        if not isinstance(reply, Reply) or reply.done:
            return
        if len(self._held) >= self._prune_at:  # amortised O(1): the threshold doubles
            self._held = [held for held in self._held if not held.done]
            self._prune_at = max(_PRUNE_MIN, 2 * len(self._held))
        self._held.append(reply)

    def __repr__(self) -> str:
        return f"<Mailbox {self.name!r}>"


def _fail(message: object, error: ActorGone) -> None:
    reply = getattr(message, "reply", None)
    if isinstance(reply, Reply) and not reply.done:
        reply.fail(error)


def _check_carries(message: object, reply: Reply[T]) -> None:
    if getattr(message, "reply", None) is not reply:
        raise TypeError(f"{type(message).__name__} must carry the reply as its 'reply' attribute")


def open_mailbox(name: str, size: int = 64) -> tuple[Address[M], Mailbox[M]]:
    """A bounded mailbox of ``size`` messages for the actor called ``name``."""
    pair: tuple[trio.MemorySendChannel[M], trio.MemoryReceiveChannel[M]] = trio.open_memory_channel(size)
    send, receive = pair  # (not open_memory_channel[M](...): a generic alias costs microseconds per call)
    mailbox = Mailbox(name, receive)
    return Address(name, send, mailbox), mailbox


async def ask(address: Address[M], make_message: Callable[[Reply[T]], M]) -> T:
    """Send ``make_message(reply)`` and wait for the answer.

    Re-raises what the actor passes to ``reply.fail``. Raises ``ActorGone``
    if the actor is gone or ends without answering, ``ActorCrashed`` if it
    crashes holding the message. The message must carry the reply as
    ``message.reply`` (else ``TypeError``): that is what makes this never hang.
    """
    reply: Reply[T] = Reply()
    message = make_message(reply)
    _check_carries(message, reply)
    await tell(address, message)  # no yield here: waiting for the reply yields anyway
    return await reply.wait()


async def tell(address: Address[M], message: M) -> None:
    """Send ``message``: at once if the mailbox has room, else wait for room as ``send`` does.

    Unlike ``Address.send`` it does not yield when there is room (a full trip through the
    scheduler per message); it still raises ``Cancelled`` first if the caller is cancelled.
    For senders that wait right after anyway (``ask``) or whose task ends (a step's outcome).
    """
    await trio.lowlevel.checkpoint_if_cancelled()
    try:
        address.send_nowait(message)
    except trio.WouldBlock:
        await address.send(message)
