"""Leaving ``open_runtime`` within a bound, even while the store is down.

Once the execution actors have stopped, what they sent must reach the store: ``hand_over``
waits for the persistence actor to commit everything pending (a flush), then gives the
leases of this process up so another one takes its executions over at once. A healthy
store does both in milliseconds. A store that is down (the database unreachable, the disk
full) would hold the exit forever, because a batch is retried until it commits; so both
steps share one bound, ``Settings.shutdown_timeout_ms``. Past it, or as soon as the exit is
cancelled from outside, ``stop_persistence`` makes the persistence actor give up: every
change still pending is answered with ``StoreUnavailable`` (never with a success) and one
log line says how many were not committed. Nothing acknowledged is lost by this: a change
is acknowledged only once it is committed, and recovery starts from what was.

``close_store`` closes the store in a worker thread that is abandoned if it does not finish
within a second (a connection to a dead server may hang); it runs even when the exit is
cancelled. So leaving takes at most ``shutdown_timeout_ms`` plus a second.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from actors import ActorGone, Address, Reply
from runtime.model.errors import StoreUnavailable
from runtime.shell.persistence import Flush, PersistenceActor, PersistenceMessage
from runtime.store.base import Store

logger = logging.getLogger("runbooks.runtime")

Release = Callable[[], Awaitable[None]]  # gives up what this process owns (leases), for a quick take-over
CLOSE_TIMEOUT_S = 1.0  # then the store gets this long to close
GIVEN_UP = "the runtime closed before the store committed this change (it may or may not have been written)"


async def hand_over(address: Address[PersistenceMessage], persistence: PersistenceActor,
                    release: Release | None, timeout_s: float) -> bool:
    """Flush, then ``release`` what this process owns (its leases), both within ``timeout_s``;
    whether the flush completed (if not, the persistence actor has given up and said so, and
    nothing is released: the store is not answering)."""
    deadline = trio.current_time() + timeout_s
    flushed = await _flush(address, deadline)
    if not flushed:
        stop_persistence(persistence, f"the store did not take them within {timeout_s:g} s")
        if release is not None:
            logger.warning("shutdown: leases not released (the store is unavailable); other processes "
                           "take these executions over when the leases expire")
        return False
    if release is not None:
        await _release(release, deadline)
    return True


def stop_persistence(persistence: PersistenceActor, why: str = "the runtime closed before the store took them") -> int:
    """Refuse every change still pending; log how many there were. A no-op after a flush."""
    refused = persistence.give_up(GIVEN_UP)
    if refused:
        cause = persistence.stats.last_error or "the store did not answer"
        logger.error("shutdown: %s not committed (%s; last store error: %s); their senders got "
                     "StoreUnavailable, none was acknowledged", _changes(refused), why, cause)
    return refused


def _changes(count: int) -> str:
    return "1 change was" if count == 1 else f"{count} changes were"


async def close_store(store: Store) -> None:
    """Close the store; a close that takes longer than ``CLOSE_TIMEOUT_S`` is left to finish
    in its thread (a healthy store closes in milliseconds)."""
    if not store.threaded:
        store.close()
        return
    with trio.move_on_after(CLOSE_TIMEOUT_S, shield=True) as scope:  # also when the exit is cancelled
        await trio.to_thread.run_sync(store.close, abandon_on_cancel=True)
    if scope.cancelled_caught:
        logger.warning("shutdown: the %s store did not close within %g s; left to close in the background",
                       store.name, CLOSE_TIMEOUT_S)


async def _flush(address: Address[PersistenceMessage], deadline: float) -> bool:
    reply: Reply[None] = Reply()
    with trio.move_on_at(deadline):
        try:
            await address.send(Flush(reply))
            await reply.wait()  # answered once everything sent before it is committed
        except (ActorGone, StoreUnavailable):
            return False
        return True
    return False


async def _release(release: Release, deadline: float) -> None:
    with trio.move_on_at(deadline) as scope:
        try:
            await release()
        except Exception as exc:  # the database went away meanwhile: the leases expire instead
            logger.warning("shutdown: leases not released (%s); other processes take these executions over "
                           "when the leases expire", exc)
    if scope.cancelled_caught:
        logger.warning("shutdown: releasing the leases took longer than the bound; other processes take "
                       "these executions over when the leases expire")
