"""The PersistenceActor: the only writer. It group-commits Changes and only then answers.

It takes the Changes waiting in its mailbox (up to ``max_batch``; while several tenants
commit, at most ``fair_batch`` of any one tenant: ``runtime.shell.batches``), commits them in
ONE transaction (in a worker thread for the SQL stores, one thread lane at a time), and then
answers each sender with its ChangeResult. A failed commit is retried with backoff while
the senders keep waiting; nothing is acknowledged before it is durable and nothing is
dropped: the bounded mailbox makes executions wait when the database is slow.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable

import attrs
import trio

from actors import Mailbox, Reply
from runtime.model.errors import Fenced, StoreUnavailable
from runtime.model.records import Change, ChangeResult
from runtime.shell.batches import FAIR_BATCH, SYSTEM, Batches
from runtime.store.base import Store

logger = logging.getLogger("runbooks.persistence")

MAX_BATCH = 1024
RETRY_FIRST_S = 0.05
RETRY_MAX_S = 5.0


@attrs.frozen
class Commit:
    change: Change
    reply: Reply[ChangeResult]


@attrs.define
class PersistenceStats:
    batches: int = 0
    changes: int = 0
    failures: int = 0
    healthy: bool = True
    last_error: str | None = None


@attrs.frozen
class Flush:
    """Answered once every Change sent before it is committed (used at shutdown)."""

    reply: Reply[None]


PersistenceMessage = Commit | Flush
BatchObserver = Callable[[int, float], None]
Admitted = Callable[[list[tuple[str, str]]], None]  # (execution, step or "") a commit gave a slot: let it start


class PersistenceActor:
    def __init__(self, store: Store, *, max_batch: int = MAX_BATCH, fair_batch: int = FAIR_BATCH,
                 observer: BatchObserver | None = None, admitted: Admitted | None = None) -> None:
        self.store = store
        self.max_batch = max_batch
        self._waiting: Batches[PersistenceMessage] = Batches(_tenant_of, max_batch=max_batch, fair_batch=fair_batch)
        self.stats = PersistenceStats()
        self.observer = observer
        self.admitted = admitted  # (set by the runtime once it can reach executions)
        self.audit_written = trio.Event()  # set by a commit with audit entries (the checkpoint sweep waits for it)
        self._lane = trio.CapacityLimiter(1)
        self._mailbox: Mailbox[PersistenceMessage] | None = None
        self._batch: list[PersistenceMessage] = []  # taken, not yet all answered
        self._batch_scope: trio.CancelScope | None = None
        self._given_up: str | None = None  # why commits stopped (the runtime is closing)

    async def commit_inline(self, change: Change) -> ChangeResult:
        """Commit one change in the caller's task (a store that is not threaded: a commit is a
        function call, so there is nothing to batch), retried like a batch while unavailable."""
        delay = RETRY_FIRST_S
        while True:
            if self._given_up is not None:
                raise StoreUnavailable(self._given_up)
            started = time.perf_counter()
            try:
                [result] = self.store.commit([change])
            except StoreUnavailable as exc:
                self._failed(exc)
                logger.warning("commit failed, retrying in %.2f s: %s", delay, exc)
                await trio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            except Exception as exc:
                self._failed(exc)
                raise
            self._committed(1, time.perf_counter() - started)
            self._admit([change], [result])
            self._note_audit([change])
            return result

    @property
    def idle(self) -> bool:
        """Nothing is being committed and nothing waits to be."""
        stats = self.mailbox_statistics()
        return not self._batch and not self._waiting and (stats is None or stats.current_buffer_used == 0)

    def mailbox_statistics(self) -> trio.MemoryChannelStatistics | None:
        return self._mailbox.statistics() if self._mailbox is not None else None

    async def run(self, mailbox: Mailbox[PersistenceMessage]) -> None:
        """Commit batches until every sender has gone and the mailbox is empty (or until
        cancelled: then what is still queued is refused and the mailbox closes)."""
        self._mailbox = mailbox
        try:
            await self._serve(mailbox)
        finally:
            self.give_up(self._given_up or "the runtime is closed")
            _refuse(self._batch + self._waiting.drain(), self._given_up or "the runtime is closed")
            mailbox.close()

    async def _serve(self, mailbox: Mailbox[PersistenceMessage]) -> None:
        waiting = self._waiting
        while True:
            if waiting:  # left over from the last batch (another tenant's turn came first)
                await trio.lowlevel.checkpoint()
            else:
                try:
                    waiting.hold(await mailbox.receive())
                except trio.EndOfChannel:
                    return
            while len(waiting) < self.max_batch:  # (beyond, senders wait: the mailbox is bounded)
                try:
                    waiting.hold(mailbox.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            batch = waiting.take(trio.current_time())
            if self._given_up is not None:
                _refuse(batch, self._given_up)
                continue
            self._batch = batch
            with trio.CancelScope(shield=True) as self._batch_scope:  # a batch taken is a batch answered
                await self._commit(batch)
            self._batch, self._batch_scope = [], None
            if self._given_up is not None:  # ``give_up`` cancelled it: what is left gets an error
                _refuse(batch, self._given_up)

    def give_up(self, reason: str) -> int:
        """Stop committing: answer the batch in flight, everything queued and everything sent
        from now on with ``StoreUnavailable(reason)``. Returns how many changes were refused
        (not committed, or not known to be). Called by the runtime as it closes."""
        first = self._given_up is None
        if first:
            self._given_up = reason
        refused = _unanswered(self._batch) if first else 0  # the batch is refused once it has unwound
        if self._batch_scope is not None:
            self._batch_scope.cancel()  # the run loop refuses the batch once it has unwound
        left = self._waiting.drain()
        refused += _unanswered(left)
        _refuse(left, reason)
        while self._mailbox is not None:
            try:
                message = self._mailbox.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            refused += _unanswered([message])
            _refuse([message], reason)
        return refused

    async def _commit(self, messages: list[PersistenceMessage]) -> None:
        batch = [message for message in messages if isinstance(message, Commit)]
        if batch:
            await self._commit_changes(batch)
        for message in messages:
            if isinstance(message, Flush):
                message.reply.send(None)

    async def _commit_changes(self, batch: list[Commit]) -> None:
        changes = [message.change for message in batch]
        delay = RETRY_FIRST_S
        while True:
            started = time.perf_counter()
            try:
                results = await self._write(changes)
                break
            except StoreUnavailable as exc:  # the database is down, the disk is full...: wait, retry
                self._failed(exc)
                logger.warning("commit of %d changes failed, retrying in %.2f s: %s", len(changes), delay, exc)
                await trio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
            except Exception as exc:  # a change the store refuses: find it, fail only its sender
                if not isinstance(exc, Fenced):  # (a fenced write is no fault of the store)
                    self._failed(exc)
                await self._isolate(batch, exc)
                return
        self._committed(len(changes), time.perf_counter() - started)
        for message, result in zip(batch, results, strict=True):
            message.reply.send(result)
        self._admit(changes, results)
        self._note_audit(changes)

    def _note_audit(self, changes: list[Change]) -> None:
        if any(change.audit for change in changes):
            self.audit_written.set()

    async def audit_written_since(self) -> None:
        """Return once a commit has written audit entries since the last return."""
        await self.audit_written.wait()
        self.audit_written = trio.Event()

    def _admit(self, changes: list[Change], results: list[ChangeResult]) -> None:
        """Let the executions the commit gave a slot start, but for those it started: their
        starter lets them run itself, with their first message."""
        if self.admitted is None or not any(result.admitted for result in results):
            return
        started = {(change.new_execution.id, "") for change in changes if change.new_execution is not None}
        holders = [holder for result in results for holder in result.admitted if holder not in started]
        if holders:
            self.admitted(holders)

    def _committed(self, changes: int, seconds: float) -> None:
        if not self.stats.healthy:
            logger.warning("the store commits again (the last error was: %s)", self.stats.last_error)
        self.stats.healthy = True
        self.stats.last_error = None
        self.stats.batches += 1
        self.stats.changes += changes
        if self.observer is not None:
            self.observer(changes, seconds)

    def _failed(self, exc: Exception) -> None:
        self.stats.failures += 1
        self.stats.healthy = False
        self.stats.last_error = f"{type(exc).__name__}: {exc}"

    async def _isolate(self, batch: list[Commit], exc: Exception) -> None:
        if len(batch) == 1:
            if isinstance(exc, Fenced):  # not a fault: the execution has another owner now
                logger.warning("%s", exc)
            else:
                logger.error("the store refused a change: %s", exc, exc_info=exc)
            batch[0].reply.fail(exc)
            return
        for message in batch:  # the transaction rolled back: commit each change on its own
            await self._commit_changes([message])

    async def _write(self, changes: list[Change]) -> list[ChangeResult]:
        if not self.store.threaded:
            return self.store.commit(changes)
        # Only ``give_up`` can cancel this (the batch is shielded otherwise); then the thread
        # is abandoned rather than waited for: a commit may hang on a dead connection.
        return await trio.to_thread.run_sync(self.store.commit, changes, limiter=self._lane,
                                             abandon_on_cancel=True)


def _tenant_of(message: PersistenceMessage) -> Hashable | None:
    """The tenant whose turn in a batch a message takes (None: a flush, a barrier)."""
    if isinstance(message, Flush):
        return None
    change = message.change
    if change.tenant_id is not None:
        return change.tenant_id
    for record in (change.new_execution, change.execution, change.publish, change.receipt,
                   change.waits[0] if change.waits else None):
        if record is not None:
            return record.tenant_id
    return SYSTEM


def _unanswered(messages: list[PersistenceMessage]) -> int:
    return sum(1 for message in messages if isinstance(message, Commit) and not message.reply.done)


def _refuse(messages: list[PersistenceMessage], reason: str) -> None:
    for message in messages:
        if not message.reply.done:
            message.reply.fail(StoreUnavailable(reason))
