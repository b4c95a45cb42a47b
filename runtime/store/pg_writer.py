"""``PostgresWriter``: the writes of a batch that only a database shared by several processes needs.

On top of ``SqlWriter``: starts are inserted in one pipeline with their owner; a child's
admission holds its tenant's advisory lock and a share lock on its parent's row; the owners'
epochs are checked (``check_fences``: a stale epoch rolls the whole batch back); waits and
publishes go through the ``waits`` and ``events`` tables under one advisory lock per
(tenant, type, key), so an event published by any process reaches every waiter (and takes
its wait row: each wait takes one event, so the next publish finds the next waiter or
retains the event); an event for an execution is a command row; and the batch's
announcements go out as ``NOTIFY`` in the same transaction. Everything runs on the batch's
cursor, in its pipeline.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any, ClassVar

import psycopg

from runtime.core.messages import Command, DeliverEvent, command_row
from runtime.language.conditions import event_passes
from runtime.model import Event, Runbook
from runtime.model.errors import Fenced, retained_bytes_full, retained_events_full
from runtime.model.jsonsafe import json_size
from runtime.model.records import Change, ChangeResult, QueuedCommand
from runtime.model.wire import dumps
from runtime.store import audit_sql, slots
from runtime.store import pg_cluster as cluster
from runtime.store.audit_chain import AuditPolicy
from runtime.store.dialect import Dialect
from runtime.store.schema import Pending, Row, event_from, event_row
from runtime.store.sql_writer import (
    DELETE_EVENT,
    RUNNING,
    UPSERT_EVENT,
    SqlWriter,
    insert_execution,
)

Cursor = psycopg.Cursor[tuple[Any, ...]]


class Statements:
    """The batch's statements, in its pipeline: each ``execute`` on a cursor of its own, so the
    rows a writer reads are its statement's. psycopg gives the answers of an earlier
    ``executemany`` on a cursor, when they arrive late in a pipeline, to that cursor's next
    ``execute`` as if they were its own: a read right after could see ``INSERT 0 1`` instead of
    its rows and fail the whole batch (then each change was committed alone: a stall)."""

    def __init__(self, cursor: Cursor) -> None:
        self._cursor = cursor

    def execute(self, query: str, params: Any = None, /) -> Cursor:
        return self._cursor.connection.cursor().execute(query, params)

    def executemany(self, query: str, params: Any, /) -> object:
        self._cursor.executemany(query, params)
        return None


class PostgresWriter(SqlWriter):
    """The writes of one batch, inside its transaction, on the batch's cursor."""

    INSERT_EXECUTION: ClassVar[str] = insert_execution(("owner", "epoch")) + " RETURNING 1"  # (see _insert_all)
    RUNNING: ClassVar[str] = f"{RUNNING} FOR SHARE"  # its cancel, committed elsewhere, waits for this start
    LOCK_SLOT_KEY: ClassVar[str] = f"{slots.LOCK_KEY} FOR UPDATE"  # one process counts a key's slots at a time

    def __init__(self, cursor: Cursor, dialect: Dialect, channel: str, nonce: str,
                 audit_policy: AuditPolicy | None = None, known_heads: audit_sql.KnownHeads | None = None) -> None:
        super().__init__(Statements(cursor), dialect, audit_policy, known_heads)
        self._cursor = cursor  # (statements whose answers nobody reads)
        self._channel = channel
        self._nonce = nonce
        self._notices: list[str] = []  # NOTIFY payloads, sent as the batch commits
        self._queued: list[QueuedCommand] = []  # the commands of the current publish
        self._taken: set[tuple[str, str]] = set()  # (execution, step) whose wait a publish of this batch took
        self._fences: list[tuple[list[str], Cursor]] = []

    def _start_row(self, change: Change) -> Row:
        return (*super()._start_row(change), change.owner, 1 if change.owner else 0)

    def _insert_all(self, rows: list[Row]) -> list[int]:
        """Every insert of the run sent at once, then their answers read: one round trip for
        all (the first read flushes the batch's pipeline; a pipeline of their own would sync
        the batch once when it opens and once when it closes)."""
        conn = self._cursor.connection
        statement = self._sql(self.INSERT_EXECUTION)
        cursors = [conn.cursor().execute(statement, row) for row in rows]
        return [len(cursor.fetchall()) for cursor in cursors]

    def _lock_children(self, tenant_id: str) -> None:
        """One child start of the tenant at a time, across processes, until this transaction
        ends: the count of its unfinished children is the one every process sees."""
        self._cursor.execute(cluster.LOCK_KEY, (json.dumps(["children", tenant_id]),))

    def _lock_quota(self, tenant_id: str) -> None:
        """One start of a tenant with a quota at a time, across processes, until this
        transaction ends: every process counts the same executions and the same bucket."""
        self._cursor.execute(cluster.LOCK_KEY, (json.dumps(["quota", tenant_id]),))

    def add_runbook(self, runbook: Runbook) -> tuple[int, bool]:
        version, unchanged = super().add_runbook(runbook)
        if not unchanged:
            self._notices.append(f"runbook:{runbook.id}")  # the others drop the latest version they cached
        return version, unchanged

    # -- fencing
    def flush(self, pending: Pending) -> None:
        if pending.fences:
            self._fence(pending)
        self._announce(pending)
        super().flush(pending)  # (in the commit's pipeline: no round trip of its own)

    def _fence(self, pending: Pending) -> None:
        """The guard of the owners' writes; its answer is read by ``check_fences``, before the
        transaction commits (a stale epoch rolls the whole batch back)."""
        ids = list(pending.fences)
        columns = (ids, [pending.versions.get(i, 0) for i in ids], [pending.fences[i][0] for i in ids],
                   [pending.fences[i][1] for i in ids])
        cursor = self._cursor.connection.cursor()
        cursor.execute(cluster.FENCE, columns)
        self._fences.append((ids, cursor))

    def _erase(self, erase: Sequence[tuple[str, int]]) -> None:
        """Erase payloads past the append-only trigger, for this statement only."""
        self._cursor.execute(audit_sql.ALLOW_ERASURE)
        super()._erase(erase)
        self._cursor.execute(audit_sql.END_ERASURE)

    def check_fences(self) -> None:
        """Refuse the batch if an owner's epoch is stale (another process owns it now)."""
        for ids, cursor in self._fences:
            passed = {row[0] for row in cursor.fetchall()}
            if len(passed) != len(ids):
                raise Fenced(sorted(set(ids) - passed))
        self._fences = []

    def _announce(self, pending: Pending) -> None:
        """Record the commands' outcomes and send what the batch announces (as it commits)."""
        notices = self._notices
        if pending.outcomes:
            self._cursor.executemany(cluster.RECORD_OUTCOME, [(dumps(outcome), command_id)
                                                              for command_id, outcome in pending.outcomes])
            notices += [f"done:{command_id}" for command_id, _ in pending.outcomes]
        notices += [f"state:{eid}:{pending.versions.get(eid, 0)}" for eid in pending.fences]
        if notices:
            self._cursor.execute(cluster.NOTIFY, (self._channel, list(dict.fromkeys(notices))))
            self._notices = []

    # -- waits and publishes
    def events(self, change: Change) -> ChangeResult:
        """Waits and publishes, each under the lock of its (tenant, type, key): a publish sees
        every wait committed before it, and a wait every event retained before it."""
        cursor = self._cursor
        for execution_id, step_id in change.unwaits:
            cursor.execute(cluster.DELETE_WAIT, (execution_id, step_id))
        for wait in change.waits:
            self._lock(wait.tenant_id, wait.type, wait.key)
            retained = [event_from(row, self._dialect.time) for row in
                        self._db.execute(cluster.RETAINED_FOR, (wait.tenant_id, wait.type, wait.key)).fetchall()]
            taken = next((event for event in retained if event_passes(wait.filter, event.payload, event.type)), None)
            if taken is None:
                self._taken.discard((wait.execution_id, wait.step_id))  # waiting again: a later publish finds it
                cursor.execute(cluster.INSERT_WAIT, (wait.execution_id, wait.step_id, wait.tenant_id, wait.type,
                                                     wait.key, json.dumps(wait.filter)))
                continue
            cursor.execute(self._sql(DELETE_EVENT), (taken.id,))  # the step takes it, as a command to its execution
            self._command(wait.execution_id, DeliverEvent(wait.step_id, taken), handed=False)
        if change.publish is None:
            return ChangeResult()
        return self._deliver(change, self._waiters(change.publish, cursor.connection.cursor()).fetchall())

    def publishes(self, changes: Sequence[Change]) -> list[ChangeResult]:
        """Each publish's lock and waiter lookup are sent first, all in one round trip; then
        each is decided in order, exactly as ``events`` would one after another."""
        conn = self._cursor.connection
        lookups = []
        for change in changes:
            assert change.publish is not None
            lookups.append((change, self._waiters(change.publish, conn.cursor())))
        return [self._deliver(change, lookup.fetchall()) for change, lookup in lookups]

    def _waiters(self, event: Event, cursor: Cursor) -> Cursor:
        """Take the event key's lock and ask for its waiters (the answer is read later)."""
        self._lock(event.tenant_id, event.type, event.correlation_key)
        return cursor.execute(cluster.WAITERS, (event.tenant_id, event.type, event.correlation_key))

    def _deliver(self, change: Change, waiters: list[tuple[Any, ...]]) -> ChangeResult:
        """The commands of a publish's waiters, else the event retained within its tenant's caps."""
        event, cap = change.publish, change.retain_cap
        assert event is not None
        cursor = self._cursor
        self._queued = []
        taken = []
        refused = 0
        for execution_id, step_id, condition in waiters:
            if (execution_id, step_id) in self._taken:
                continue
            if event_passes(condition, event.payload, event.type):
                taken.append((execution_id, step_id))
            else:
                refused += 1
        if taken:  # each wait takes one event: a later publish (here or anywhere) no longer finds it
            cursor.executemany(cluster.DELETE_WAIT, taken)
            self._taken.update(taken)  # (a publish of this batch whose lookup went out with this one's)
        for execution_id, step_id in taken:
            self._command(execution_id, DeliverEvent(step_id, event), handed=True)
        if self._queued or not cap:
            return ChangeResult(delivered=len(self._queued), commands=tuple(self._queued), refused_by_filter=refused)
        held = self._db.execute(cluster.RETAINED_COUNT, (event.tenant_id,)).fetchone()
        retry = None if held is None or held[1] is None else max(held[1], 0.0)
        if held is not None and held[0] >= cap:
            raise retained_events_full(event.tenant_id, cap, retry)
        if held is not None and held[2] + json_size(event.payload) > change.retain_bytes_cap:
            raise retained_bytes_full(event.tenant_id, change.retain_bytes_cap, retry)
        cursor.execute(self._sql(UPSERT_EVENT), event_row(event, self._dialect.stamp))
        return ChangeResult(retained=True, refused_by_filter=refused)

    def _lock(self, tenant_id: str, event_type: str, key: str) -> None:
        self._cursor.execute(cluster.LOCK_KEY, (json.dumps([tenant_id, event_type, key]),))

    def _command(self, execution_id: str, command: Command, *, handed: bool) -> None:
        """A command row; ``handed``: the caller hands it to the actor here if the execution
        runs here (``Cluster.hand``), so this process's listener may skip its announcement."""
        command_id = uuid.uuid4().hex
        kind, body = command_row(command)
        self._cursor.execute(cluster.INSERT_COMMAND, (command_id, execution_id, kind, dumps(body), None))
        self._notices.append(f"cmd:{execution_id}:{command_id}:{self._nonce}" if handed
                             else f"cmd:{execution_id}:{command_id}")
        if handed:
            self._queued.append((command_id, execution_id, kind, body))
