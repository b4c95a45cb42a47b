"""The queues of concurrency keys, kept by the store.

A runbook with ``concurrency: {key, limit}`` starts its executions ``queued`` (``SlotClaim``);
a step with one waits ``pending`` with its place in its ``StepState.slot``. Each one has a row
in ``concurrency_slots`` (tenant, key, its place ``seq``, whether it is ``holding`` a slot;
``step_id`` is '' for a whole execution), written in the transaction that commits the claim.
In the same transaction, and in the one that commits the end (of the step, or of the
execution: every row of the execution is deleted; the slot is given back whatever the end,
completed, failed, cancelled or timed out), the heads of the key's queue are given the slots
that are free (``holding``), in arrival order; they come back in ``ChangeResult.admitted``
and the runtime lets each one start (``Admit``). The runtime also looks for rows that hold
a slot whose execution is still ``queued`` or whose step is still ``pending``
(``ADMITTED``): a restart, or a process that died before it told them, loses nothing.

Every process sharing a PostgreSQL database sees the same queue: the key's row in
``concurrency_keys`` is locked (``FOR UPDATE``) while a transaction counts and gives slots, so
two processes never give the same last slot. SQLite's write transaction holds the whole file;
the memory store (``MemorySlots``) is one process's.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from runtime.model import StepStatus
from runtime.model.records import Change, ChangeResult

#: the tables (the last migrations of each dialect; both can be run again)
TABLES = (
    """CREATE TABLE IF NOT EXISTS concurrency_keys (
        tenant_id TEXT NOT NULL,
        slot_key TEXT NOT NULL,
        PRIMARY KEY (tenant_id, slot_key))""",
    """CREATE TABLE IF NOT EXISTS concurrency_slots (
        execution_id TEXT NOT NULL,
        step_id TEXT NOT NULL DEFAULT '',
        tenant_id TEXT NOT NULL,
        slot_key TEXT NOT NULL,
        slot_limit INTEGER NOT NULL,
        seq BIGINT NOT NULL,
        holding INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (execution_id, step_id))""",
    "CREATE INDEX IF NOT EXISTS concurrency_slots_queue ON concurrency_slots (tenant_id, slot_key, holding, seq)",
)

ADD_KEY = "INSERT INTO concurrency_keys (tenant_id, slot_key) VALUES (?, ?) ON CONFLICT DO NOTHING"
LOCK_KEY = "SELECT 1 FROM concurrency_keys WHERE tenant_id = ? AND slot_key = ?"
ENQUEUE = """
INSERT INTO concurrency_slots (execution_id, step_id, tenant_id, slot_key, slot_limit, seq, holding)
SELECT ?, ?, ?, ?, ?, COALESCE(MAX(seq), 0) + 1, 0 FROM concurrency_slots WHERE tenant_id = ? AND slot_key = ?
ON CONFLICT (execution_id, step_id) DO NOTHING"""
RELEASE_EXECUTION = "DELETE FROM concurrency_slots WHERE execution_id = ? RETURNING tenant_id, slot_key, slot_limit"
RELEASE_STEP = """
DELETE FROM concurrency_slots WHERE execution_id = ? AND step_id = ? RETURNING tenant_id, slot_key, slot_limit"""
HOLDERS = "SELECT COUNT(*) FROM concurrency_slots WHERE tenant_id = ? AND slot_key = ? AND holding = 1"
HEADS = """
SELECT execution_id, step_id FROM concurrency_slots WHERE tenant_id = ? AND slot_key = ? AND holding = 0
ORDER BY seq LIMIT ?"""
HOLD = "UPDATE concurrency_slots SET holding = 1 WHERE execution_id = ? AND step_id = ?"
#: holders not started yet (``{step_status}``: the dialect's expression of a step row's status)
ADMITTED = """
SELECT s.execution_id, s.step_id FROM concurrency_slots AS s JOIN executions AS e ON e.id = s.execution_id
WHERE s.holding = 1 AND s.step_id = '' AND e.status = 'queued'
UNION ALL
SELECT s.execution_id, s.step_id FROM concurrency_slots AS s
JOIN steps ON steps.execution_id = s.execution_id AND steps.step_id = s.step_id
WHERE s.holding = 1 AND s.step_id <> '' AND {step_status} = 'pending'"""

Key = tuple[str, str]  # (tenant, key)
Holder = tuple[str, str]  # (execution id, step id or "")


@attrs.frozen
class Claim:
    index: int  # of the change that claims
    tenant_id: str
    key: str
    limit: int
    holder: Holder


def claims(changes: Sequence[Change], results: Sequence[ChangeResult]) -> list[Claim]:
    """Each place in a queue the batch asks for: a start that was written and queues, a step
    that waits for a slot (again: a place it has already is kept)."""
    found = []
    for index, (change, result) in enumerate(zip(changes, results, strict=True)):
        new = change.new_execution
        if change.slot is not None and new is not None and result.existing_id is None and result.refused is None:
            found.append(Claim(index, change.slot.tenant_id, change.slot.key, change.slot.limit, (new.id, "")))
        if change.execution is None:
            continue
        if change.slot is not None and new is None:  # queued again (a step retry of a failed execution)
            found.append(Claim(index, change.slot.tenant_id, change.slot.key, change.slot.limit,
                               (change.execution.id, "")))
        for execution_id, step_id, _, state in change.steps:
            if state.slot is not None and state.status is StepStatus.PENDING and not state.slot.held:
                found.append(Claim(index, change.execution.tenant_id, state.slot.key, state.slot.limit,
                                   (execution_id, step_id)))
    return found


def releases(changes: Sequence[Change]) -> list[tuple[int, str, Holder]]:
    """(index, tenant, holder) of each end the batch commits that gives back a slot: a whole
    execution's (``step id`` "": every row of it), a step's."""
    found: list[tuple[int, str, Holder]] = []
    for index, change in enumerate(changes):
        execution = change.execution
        if execution is None:
            continue
        if execution.status.finished:
            if execution.concurrency_key is not None or any(state.slot for state in execution.steps.values()):
                found.append((index, execution.tenant_id, (execution.id, "")))
            continue
        found += [(index, execution.tenant_id, (execution_id, step_id))
                  for execution_id, step_id, _, state in change.steps
                  if state.slot is not None and state.status.finished]
    return found


def with_admitted(changes: Sequence[Change], results: list[ChangeResult],
                  admitted: dict[Holder, int]) -> list[ChangeResult]:
    """The results with each holder given a slot named in one of them: a start admitted at
    once in its own (its starter lets it run), the others in the change that freed or
    claimed their key (``admitted``: holder -> index of that change)."""
    starts = {(change.new_execution.id, ""): index for index, change in enumerate(changes)
              if change.new_execution is not None}
    named: dict[int, list[Holder]] = {}
    for holder, index in admitted.items():
        named.setdefault(starts.get(holder, index), []).append(holder)
    return [attrs.evolve(result, admitted=result.admitted + tuple(named[index])) if index in named else result
            for index, result in enumerate(results)]


@attrs.define
class _Queue:
    limit: int
    holding: list[Holder] = attrs.Factory(list)
    waiting: list[Holder] = attrs.Factory(list)


class MemorySlots:
    """The queues of the memory store, applied change by change."""

    def __init__(self) -> None:
        self._queues: dict[Key, _Queue] = {}
        self._key_of: dict[Holder, Key] = {}
        self._of_execution: dict[str, set[Holder]] = {}

    def apply(self, change: Change, result: ChangeResult) -> ChangeResult:
        touched: dict[Key, int] = {}
        for claim in claims([change], [result]):
            key = (claim.tenant_id, claim.key)
            if claim.holder not in self._key_of:
                self._queues.setdefault(key, _Queue(claim.limit)).waiting.append(claim.holder)
                self._key_of[claim.holder] = key
                self._of_execution.setdefault(claim.holder[0], set()).add(claim.holder)
            touched.setdefault(key, claim.limit)
        for _, _, (execution_id, step_id) in releases([change]):
            mine = self._of_execution.get(execution_id, set())
            holders = sorted(mine) if not step_id else [(execution_id, step_id)]
            for holder in holders:
                mine.discard(holder)
                held_key = self._key_of.pop(holder, None)
                if held_key is not None:
                    queue = self._queues[held_key]
                    for held in (queue.holding, queue.waiting):
                        if holder in held:
                            held.remove(holder)
                    touched.setdefault(held_key, queue.limit)
            if not mine:
                self._of_execution.pop(execution_id, None)
        admitted: list[Holder] = []
        for key, limit in touched.items():
            queue = self._queues[key]
            while queue.waiting and len(queue.holding) < limit:
                queue.holding.append(queue.waiting.pop(0))
                admitted.append(queue.holding[-1])
            if not queue.holding and not queue.waiting:
                del self._queues[key]
        return attrs.evolve(result, admitted=result.admitted + tuple(admitted)) if admitted else result

    def holding(self) -> list[Holder]:
        return [holder for queue in self._queues.values() for holder in queue.holding]
