"""The queues of concurrency keys, kept by the store (``SlotClaim``).

A runbook with ``concurrency: {key, limit}`` starts its executions ``queued``; each one has a
row in ``concurrency_slots`` (tenant, key, its place ``seq``, whether it ``holding`` a slot),
written in the transaction of its start. In the same transaction, and in the one that commits
an execution's end (its row is deleted: the slot is given back whatever the end, completed,
failed, cancelled or timed out), the heads of the key's queue are given the slots that are
free (``holding``), in arrival order; their ids come back in ``ChangeResult.admitted`` and the
runtime lets each one start (``Admit``). The runtime also looks for executions that hold a slot
and are still ``queued`` (``ADMITTED_QUEUED``): a restart, or a process that died before it
told them, loses nothing.

Every process sharing a PostgreSQL database sees the same queue: the key's row in
``concurrency_keys`` is locked (``FOR UPDATE``) while a transaction counts and gives slots, so
two processes never give the same last slot. SQLite's write transaction holds the whole file;
the memory store (``MemorySlots``) is one process's.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from runtime.model import Execution
from runtime.model.records import Change, ChangeResult, SlotClaim

#: the tables (the last migration of each dialect; both can be run again)
TABLES = (
    """CREATE TABLE IF NOT EXISTS concurrency_keys (
        tenant_id TEXT NOT NULL,
        slot_key TEXT NOT NULL,
        PRIMARY KEY (tenant_id, slot_key))""",
    """CREATE TABLE IF NOT EXISTS concurrency_slots (
        execution_id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL,
        slot_key TEXT NOT NULL,
        slot_limit INTEGER NOT NULL,
        seq BIGINT NOT NULL,
        holding INTEGER NOT NULL DEFAULT 0)""",
    "CREATE INDEX IF NOT EXISTS concurrency_slots_queue ON concurrency_slots (tenant_id, slot_key, holding, seq)",
)

ADD_KEY = "INSERT INTO concurrency_keys (tenant_id, slot_key) VALUES (?, ?) ON CONFLICT DO NOTHING"
LOCK_KEY = "SELECT 1 FROM concurrency_keys WHERE tenant_id = ? AND slot_key = ?"
ENQUEUE = """
INSERT INTO concurrency_slots (execution_id, tenant_id, slot_key, slot_limit, seq, holding)
SELECT ?, ?, ?, ?, COALESCE(MAX(seq), 0) + 1, 0 FROM concurrency_slots WHERE tenant_id = ? AND slot_key = ?
ON CONFLICT (execution_id) DO NOTHING"""
RELEASE = "DELETE FROM concurrency_slots WHERE execution_id = ? RETURNING tenant_id, slot_key, slot_limit"
HOLDERS = "SELECT COUNT(*) FROM concurrency_slots WHERE tenant_id = ? AND slot_key = ? AND holding = 1"
HEADS = """
SELECT execution_id FROM concurrency_slots WHERE tenant_id = ? AND slot_key = ? AND holding = 0
ORDER BY seq LIMIT ?"""
HOLD = "UPDATE concurrency_slots SET holding = 1 WHERE execution_id = ?"
ADMITTED_QUEUED = """
SELECT s.execution_id FROM concurrency_slots AS s JOIN executions AS e ON e.id = s.execution_id
WHERE s.holding = 1 AND e.status = 'queued' ORDER BY s.seq"""

Key = tuple[str, str]  # (tenant, key)


def claims(changes: Sequence[Change], results: Sequence[ChangeResult]) -> list[tuple[int, SlotClaim, str]]:
    """(index, claim, execution id) of each start of the batch that was written and queues."""
    found = []
    for index, (change, result) in enumerate(zip(changes, results, strict=True)):
        new = change.new_execution
        if change.slot is not None and new is not None and result.existing_id is None and result.refused is None:
            found.append((index, change.slot, new.id))
    return found


def releases(changes: Sequence[Change]) -> list[tuple[int, Execution]]:
    """(index, execution) of each end committed by the batch of an execution with a key."""
    return [(index, change.execution) for index, change in enumerate(changes)
            if change.execution is not None and change.execution.concurrency_key is not None
            and change.execution.status.finished]


def with_admitted(changes: Sequence[Change], results: list[ChangeResult],
                  admitted: dict[str, int]) -> list[ChangeResult]:
    """The results with each admitted execution named in one of them: a start admitted at
    once in its own (its starter lets it run), the others in the change that freed or
    claimed their key (``admitted``: execution id -> index of that change)."""
    starts = {change.new_execution.id: index for index, change in enumerate(changes)
              if change.new_execution is not None}
    named: dict[int, list[str]] = {}
    for execution_id, index in admitted.items():
        named.setdefault(starts.get(execution_id, index), []).append(execution_id)
    return [attrs.evolve(result, admitted=result.admitted + tuple(named[index])) if index in named else result
            for index, result in enumerate(results)]


def new_executions(changes: Sequence[Change]) -> set[str]:
    return {change.new_execution.id for change in changes if change.new_execution is not None}


@attrs.define
class _Queue:
    limit: int
    holding: list[str] = attrs.Factory(list)
    waiting: list[str] = attrs.Factory(list)


class MemorySlots:
    """The queues of the memory store, applied change by change."""

    def __init__(self) -> None:
        self._queues: dict[Key, _Queue] = {}
        self._key_of: dict[str, Key] = {}

    def apply(self, change: Change, result: ChangeResult) -> ChangeResult:
        touched: list[tuple[Key, int]] = []
        new = change.new_execution
        if change.slot is not None and new is not None and result.existing_id is None and result.refused is None:
            key = (change.slot.tenant_id, change.slot.key)
            queue = self._queues.setdefault(key, _Queue(change.slot.limit))
            queue.waiting.append(new.id)
            self._key_of[new.id] = key
            touched.append((key, change.slot.limit))
        ended = change.execution
        if ended is not None and ended.status.finished and ended.id in self._key_of:
            key = self._key_of.pop(ended.id)
            queue = self._queues[key]
            for ids in (queue.holding, queue.waiting):
                if ended.id in ids:
                    ids.remove(ended.id)
            touched.append((key, queue.limit))
        admitted: list[str] = []
        for key, limit in touched:
            queue = self._queues[key]
            while queue.waiting and len(queue.holding) < limit:
                queue.holding.append(queue.waiting.pop(0))
                admitted.append(queue.holding[-1])
            if not queue.holding and not queue.waiting:
                del self._queues[key]
        return attrs.evolve(result, admitted=tuple(admitted)) if admitted else result

    def holding(self) -> list[str]:
        return [execution_id for queue in self._queues.values() for execution_id in queue.holding]
