"""How the runtime reaches its store outside the execution actors: reads and commits.

A read (``reader``) runs in a worker thread when the store is threaded (SQLite,
PostgreSQL), in place otherwise; one nobody waits for any more (cancelled) is left to finish
in its thread, so a dead connection holds neither a cancelled request nor the shutdown. A
commit (``committer``) goes through the persistence actor, the only writer, and returns once
the change is durable; with a store that is not threaded it is a call in the caller's task.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import trio

from actors import Address, Reply
from runtime.model.records import Change, ChangeResult
from runtime.shell.persistence import Commit, PersistenceActor, PersistenceMessage
from runtime.store.base import Store

T = TypeVar("T")
CommitChange = Callable[[Change], Awaitable[ChangeResult]]


class Read(Protocol):
    """``await read(store.method, *args)``: a store read, off the event loop if it blocks."""

    async def __call__(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T: ...


def reader(store: Store) -> Read:
    async def read(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        if not store.threaded:
            return fn(*args, **kwargs)
        return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs), abandon_on_cancel=True)

    return read


def committer(store: Store, persistence: PersistenceActor, address: Address[PersistenceMessage],
              outbox: Callable[[Change], Change] | None = None) -> CommitChange:
    """``outbox``: adds a change's lifecycle events to it (sinks are configured)."""

    async def commit(change: Change) -> ChangeResult:
        if outbox is not None:
            change = outbox(change)
        if not store.threaded:  # nothing to wait for: commit in place, in order
            return await persistence.commit_inline(change)
        reply: Reply[ChangeResult] = Reply()
        await address.send(Commit(change, reply))
        return await reply.wait()

    return commit
