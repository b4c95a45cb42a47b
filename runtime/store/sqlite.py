"""The SQLite store: one database file in WAL mode, one write and one read connection.

A batch is written on the write connection between ``BEGIN IMMEDIATE`` and ``COMMIT``
(``synchronous=FULL``: a batch is on disk before it is acknowledged). Reads go through a
second connection behind a lock; WAL lets them see the last committed batch while the next
one is being written. A file belongs to one process: ``open`` takes an exclusive lock on
``<file>.lock`` for as long as the store is open, and refuses (``StoreInUse``) while another
store holds it — two processes would both run the same executions.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import pathlib
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from typing import Any

from runtime.model import LOG_LEVELS, AuditEntry, Event, Evidence, Execution, LogEntry, Runbook
from runtime.model.errors import StoreInUse, StoreUnavailable
from runtime.model.records import Change, ChangeResult
from runtime.model.wire import format_time, parse_time
from runtime.store.diagnose import unwritable_because
from runtime.store.schema import (
    NOT_DEDUPED_SQL,
    Execute,
    ExecutionQueries,
    ParsedRunbooks,
    Pending,
    apply_batch,
    audit_from,
    audit_row,
    event_from,
    event_row,
    evidence_from,
    evidence_row,
    execution_from,
    header_row,
    latest_runbooks,
    log_from,
    log_row,
    migrate,
    owners,
    runbook_row,
    step_rows,
)
from runtime.store.trigger_states import TRIGGER_STATES_TABLE, TriggerQueries

_PRAGMAS = (
    "PRAGMA busy_timeout = 30000",
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = FULL",
    "PRAGMA foreign_keys = ON",
)

_SCHEMA_VERSION = """
CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER PRIMARY KEY,
    applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
)"""

#: Times are RFC 3339 UTC text (``wire.format_time``: fixed width, so they sort as text).
#: JSON columns hold ``wire.dumps`` text. ``executions.header`` is the execution without its
#: steps; ``runbooks.document`` the runbook's wire form without ``version``.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE runbooks (
            owner TEXT NOT NULL,  -- the tenant, '' for a shared runbook
            id TEXT NOT NULL,
            version INTEGER NOT NULL,
            document TEXT NOT NULL,
            created_at TEXT NOT NULL,
            PRIMARY KEY (owner, id, version)
        )""",
        """CREATE TABLE executions (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            tenant_id TEXT NOT NULL,
            runbook_id TEXT NOT NULL,
            runbook_version INTEGER NOT NULL,
            status TEXT NOT NULL,
            input_hash TEXT NOT NULL,
            deduplicated INTEGER NOT NULL,
            idempotency_key TEXT,
            created_at TEXT NOT NULL,
            header TEXT NOT NULL
        )""",
        f"""CREATE UNIQUE INDEX executions_active_hash
            ON executions (tenant_id, runbook_id, runbook_version, input_hash)
            WHERE deduplicated AND status NOT IN {NOT_DEDUPED_SQL}""",
        """CREATE UNIQUE INDEX executions_idempotency_key ON executions (tenant_id, idempotency_key)
            WHERE idempotency_key IS NOT NULL""",
        "CREATE INDEX executions_listing ON executions (tenant_id, runbook_id, status, seq DESC)",
        "CREATE INDEX executions_status ON executions (status)",
        """CREATE TABLE steps (
            execution_id TEXT NOT NULL REFERENCES executions (id) ON DELETE CASCADE,
            step_id TEXT NOT NULL,
            position INTEGER NOT NULL,
            state TEXT NOT NULL,
            PRIMARY KEY (execution_id, step_id)
        ) WITHOUT ROWID""",
        """CREATE TABLE logs (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            execution_id TEXT NOT NULL,
            step_id TEXT,
            level TEXT NOT NULL,
            at TEXT NOT NULL,
            message TEXT NOT NULL,
            data TEXT NOT NULL
        )""",
        "CREATE INDEX logs_by_step ON logs (execution_id, step_id, seq)",
        """CREATE TABLE audit (
            seq INTEGER PRIMARY KEY,
            execution_id TEXT NOT NULL,
            at TEXT NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            step_id TEXT,
            legal_basis TEXT,
            reason TEXT,
            data TEXT NOT NULL
        )""",
        "CREATE INDEX audit_by_execution ON audit (execution_id, seq)",
        """CREATE TABLE evidence (
            seq INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            execution_id TEXT NOT NULL,
            step_id TEXT,
            kind TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            data TEXT NOT NULL,
            created_at TEXT NOT NULL
        )""",
        "CREATE INDEX evidence_by_execution ON evidence (execution_id, seq)",
        """CREATE TABLE events (
            seq INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            tenant_id TEXT NOT NULL,
            type TEXT NOT NULL,
            correlation_key TEXT NOT NULL,
            payload TEXT NOT NULL,
            received_at TEXT NOT NULL,
            expires_at TEXT
        )""",
        "CREATE INDEX events_match ON events (tenant_id, type, correlation_key)",
    ),
    (  # 2: the version of each execution, bumped by every committed change
        "ALTER TABLE executions ADD COLUMN version INTEGER NOT NULL DEFAULT 0",
    ),
    (  # 3: runbook triggers: enabled, last run
        TRIGGER_STATES_TABLE.format(time="TEXT"),
    ),
)

_HEADER_COLUMNS = ("id, tenant_id, runbook_id, runbook_version, status, input_hash, idempotency_key, created_at, "
                   "header, version")

_INSERT_EXECUTION = f"""
INSERT INTO executions ({_HEADER_COLUMNS}, deduplicated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT DO NOTHING"""

# A header upsert never breaks the active-hash index: an execution that becomes active again
# (a retried failure) while another one with its input hash is active leaves the index.
_UPSERT_HEADER = f"""
INSERT INTO executions ({_HEADER_COLUMNS}, deduplicated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)
ON CONFLICT (id) DO UPDATE SET
    version = excluded.version,
    tenant_id = excluded.tenant_id,
    runbook_id = excluded.runbook_id,
    runbook_version = excluded.runbook_version,
    status = excluded.status,
    input_hash = excluded.input_hash,
    idempotency_key = excluded.idempotency_key,
    created_at = excluded.created_at,
    header = excluded.header,
    deduplicated = CASE
        WHEN NOT executions.deduplicated THEN 0
        WHEN excluded.status IN {NOT_DEDUPED_SQL} OR executions.status NOT IN {NOT_DEDUPED_SQL} THEN 1
        ELSE NOT EXISTS (
            SELECT 1 FROM executions AS other
            WHERE other.tenant_id = excluded.tenant_id AND other.runbook_id = excluded.runbook_id
              AND other.runbook_version = excluded.runbook_version
              AND other.input_hash = excluded.input_hash
              AND other.deduplicated AND other.status NOT IN {NOT_DEDUPED_SQL})
    END"""

_UPSERT_STEP = """
INSERT INTO steps (execution_id, step_id, position, state) VALUES (?, ?, ?, ?)
ON CONFLICT (execution_id, step_id) DO UPDATE SET position = excluded.position, state = excluded.state"""

_INSERT_LOG = "INSERT INTO logs (execution_id, step_id, level, at, message, data) VALUES (?, ?, ?, ?, ?, ?)"

_INSERT_AUDIT = """
INSERT INTO audit (execution_id, at, actor, action, step_id, legal_basis, reason, data)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)"""

_INSERT_EVIDENCE = """
INSERT INTO evidence (id, execution_id, step_id, kind, sha256, data, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (id) DO NOTHING"""

_UPSERT_EVENT = """
INSERT INTO events (id, tenant_id, type, correlation_key, payload, received_at, expires_at)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (id) DO UPDATE SET
    tenant_id = excluded.tenant_id, type = excluded.type, correlation_key = excluded.correlation_key,
    payload = excluded.payload, received_at = excluded.received_at, expires_at = excluded.expires_at"""

_DELETE_EVENT = "DELETE FROM events WHERE id = ?"
_DELETE_EXPIRED = "DELETE FROM events WHERE expires_at <= ?"

_SET_VERSION = "UPDATE executions SET version = ? WHERE id = ?"

_INSERT_RUNBOOK = """
INSERT INTO runbooks (owner, id, version, document, created_at)
SELECT :owner, :id, COALESCE(MAX(version), 0) + 1, :document, :created_at
FROM runbooks WHERE owner = :owner AND id = :id
RETURNING version"""

_ID_BY_KEY = "SELECT id FROM executions WHERE tenant_id = ? AND idempotency_key = ?"
_ACTIVE = f"""
WHERE tenant_id = ? AND runbook_id = ? AND runbook_version = ? AND input_hash = ?
  AND deduplicated AND status NOT IN {NOT_DEDUPED_SQL}
ORDER BY seq LIMIT 1"""

_HEADERS = "SELECT seq, id, header, version FROM executions"
_STEPS = """
SELECT execution_id, step_id, state FROM steps
WHERE execution_id IN (SELECT value FROM json_each(?))
ORDER BY execution_id, position, step_id"""

# primary result codes that mean "the database cannot serve now", not "this batch is wrong"
_UNAVAILABLE = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_NOMEM,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_CORRUPT,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_PROTOCOL,
        sqlite3.SQLITE_NOTADB,
    }
)


class SqliteStore(ExecutionQueries, TriggerQueries):
    MARK = "?"
    ALL_LATEST = "SELECT owner, MAX(version), document FROM runbooks GROUP BY owner, id"
    trigger_stamp = staticmethod(format_time)
    SELECT = _HEADERS
    STEP_STATUS = "json_extract(state, '$.status')"

    threaded = True
    name = "sqlite"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._write: sqlite3.Connection | None = None
        self._read: sqlite3.Connection | None = None
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._lock: int | None = None  # the descriptor holding <file>.lock
        self._parsed = ParsedRunbooks()

    def open(self) -> None:
        with self._write_lock, self._read_lock, _translated(self.path):
            if self._write is not None:
                return
            pathlib.Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._lock = _exclusive(self.path)
            try:
                write = _connect(self.path)
            except BaseException:
                self._unlock()
                raise
            try:
                migrate(lambda: _migration(write), MIGRATIONS)
                read = _connect(self.path)
                read.execute("PRAGMA query_only = ON")
            except BaseException:
                write.close()
                self._unlock()
                raise
            self._write, self._read = write, read

    def close(self) -> None:
        with self._write_lock, self._read_lock:
            for conn in (self._write, self._read):
                if conn is not None:
                    conn.close()
            self._write = self._read = None
            self._unlock()

    def _unlock(self) -> None:
        if self._lock is not None:
            os.close(self._lock)  # closing the descriptor releases the lock
            self._lock = None

    def ping(self) -> None:
        with self._reading() as conn:
            conn.execute("SELECT 1").fetchone()
        if self._write is None:
            raise StoreUnavailable(f"sqlite store {self.path} is not open")

    # -- writes
    def commit(self, changes: Sequence[Change]) -> list[ChangeResult]:
        if not changes:
            return []
        with self._write_lock, _translated(self.path):
            conn = _live(self._write, self.path)
            with _immediate(conn):
                return apply_batch(changes, _Writer(conn))

    # -- runbooks
    def get_runbook(self, tenant_id: str | None, runbook_id: str, version: int | None = None) -> Runbook | None:
        found = self._runbook_row(tenant_id, runbook_id, version)
        return self._parsed.get(found[0], runbook_id, found[1], found[2]) if found else None

    def _runbook_row(self, tenant_id: str | None, runbook_id: str, version: int | None) -> tuple[str, int, str] | None:
        """(owner, version, document) of the runbook ``get_runbook`` answers with (parsed
        outside the read lock)."""
        with self._reading(snapshot=True) as conn:
            for owner in owners(tenant_id):
                latest = conn.execute(
                    "SELECT version, document FROM runbooks WHERE owner = ? AND id = ? ORDER BY version DESC LIMIT 1",
                    (owner, runbook_id),
                ).fetchone()
                if latest is None:
                    continue
                if version is None or latest[0] == version:
                    return owner, latest[0], latest[1]
                row = conn.execute(
                    "SELECT version, document FROM runbooks WHERE owner = ? AND id = ? AND version = ?",
                    (owner, runbook_id, version),
                ).fetchone()
                return (owner, row[0], row[1]) if row else None
        return None

    def list_runbooks(self, tenant_id: str | None) -> list[Runbook]:
        scope = owners(tenant_id)
        marks = ", ".join("?" for _ in scope)
        with self._reading() as conn:  # SQLite: the bare column comes from the row of MAX()
            rows = conn.execute(
                f"SELECT owner, MAX(version), document FROM runbooks WHERE owner IN ({marks}) GROUP BY owner, id",
                scope,
            ).fetchall()
        return latest_runbooks(rows)

    # -- executions: ExecutionQueries
    def _executions(self, query: str, params: Sequence[Any]) -> list[tuple[int, Execution]]:
        """(seq, execution) of the headers ``query`` selects, with their steps, from one snapshot."""
        with self._reading(snapshot=True) as conn:
            headers = conn.execute(query, params).fetchall()
            if not headers:
                return []
            ids = json.dumps([execution_id for _, execution_id, _, _ in headers])
            steps: dict[str, list[tuple[str, str]]] = {}
            for execution_id, step_id, state in conn.execute(_STEPS, (ids,)):
                steps.setdefault(execution_id, []).append((step_id, state))
        return [(seq, execution_from(header, steps.get(eid, ()), version)) for seq, eid, header, version in headers]

    # -- records
    def logs(
        self,
        execution_id: str,
        *,
        step_id: str | None = None,
        level: str | None = None,
        after: int | None = None,
        limit: int = 1000,
    ) -> list[LogEntry]:
        where = ["execution_id = ?"]
        params: list[Any] = [execution_id]
        if step_id is not None:
            where.append("step_id = ?")
            params.append(step_id)
        if level is not None:
            levels = LOG_LEVELS[LOG_LEVELS.index(level) :]
            where.append(f"level IN ({', '.join('?' for _ in levels)})")
            params.extend(levels)
        if after is not None:
            where.append("seq > ?")
            params.append(after)
        sql = f"SELECT seq, execution_id, step_id, level, at, message, data FROM logs {_where(where)} ORDER BY seq LIMIT ?"
        with self._reading() as conn:
            rows = conn.execute(sql, (*params, max(limit, 0))).fetchall()
        return [log_from(row, parse_time) for row in rows]

    def evidence(self, execution_id: str) -> list[Evidence]:
        sql = """SELECT id, execution_id, step_id, kind, sha256, data, created_at
                 FROM evidence WHERE execution_id = ? ORDER BY seq"""
        with self._reading() as conn:
            rows = conn.execute(sql, (execution_id,)).fetchall()
        return [evidence_from(row, parse_time) for row in rows]

    def audit(self, execution_id: str) -> list[AuditEntry]:
        sql = """SELECT execution_id, at, actor, action, step_id, legal_basis, reason, data
                 FROM audit WHERE execution_id = ? ORDER BY seq"""
        with self._reading() as conn:
            rows = conn.execute(sql, (execution_id,)).fetchall()
        return [audit_from(row, parse_time) for row in rows]

    def retained_events(self, now: datetime) -> list[Event]:
        sql = """SELECT id, tenant_id, type, correlation_key, payload, received_at, expires_at
                 FROM events WHERE expires_at IS NULL OR expires_at > ? ORDER BY seq"""
        with self._reading() as conn:
            rows = conn.execute(sql, (format_time(now),)).fetchall()
        return [event_from(row, parse_time) for row in rows]

    # -- triggers: TriggerQueries
    def _trigger_rows(self, query: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        with self._reading() as conn:
            return conn.execute(query, params).fetchall()

    def _trigger_write(self, query: str, params: Sequence[Any]) -> None:
        with self._write_lock, _translated(self.path):
            conn = _live(self._write, self.path)
            with _immediate(conn):
                conn.execute(query, params)

    @contextmanager
    def _reading(self, *, snapshot: bool = False) -> Iterator[sqlite3.Connection]:
        """The read connection; ``snapshot``: several statements see one committed state."""
        with self._read_lock, _translated(self.path):
            conn = _live(self._read, self.path)
            if not snapshot:
                yield conn
                return
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")


class _Writer:
    """The writes of one batch, inside its ``BEGIN IMMEDIATE`` transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def insert_executions(self, starts: Sequence[Change]) -> list[str | None]:
        return [self._insert(change.new_execution, change.dedup) for change in starts if change.new_execution]

    def _insert(self, execution: Execution, dedup: bool) -> str | None:
        row = (*header_row(execution, format_time), dedup)
        if self._conn.execute(_INSERT_EXECUTION, row).rowcount == 1:
            return None
        return self._existing(execution, dedup)

    def _existing(self, execution: Execution, dedup: bool) -> str | None:
        """The execution that holds the unique index; None if it is this one (a replayed batch)."""
        lookups: list[tuple[str, tuple[Any, ...]]] = []
        if execution.idempotency_key is not None:
            lookups.append((_ID_BY_KEY, (execution.tenant_id, execution.idempotency_key)))
        if dedup:
            hash_key = (execution.tenant_id, execution.runbook_id, execution.runbook_version, execution.input_hash)
            lookups.append((f"SELECT id FROM executions {_ACTIVE}", hash_key))
        lookups.append(("SELECT id FROM executions WHERE id = ?", (execution.id,)))
        for sql, params in lookups:
            row = self._conn.execute(sql, params).fetchone()
            if row is not None:
                return None if row[0] == execution.id else str(row[0])
        raise RuntimeError(f"execution {execution.id} was neither inserted nor found")  # pragma: no cover

    def events(self, change: Change) -> ChangeResult:
        raise NotImplementedError("a SQLite store is one process's: its events go through the runtime's router")

    def publishes(self, changes: Sequence[Change]) -> list[ChangeResult]:
        return [self.events(change) for change in changes]

    def add_runbook(self, runbook: Runbook) -> int:
        owner, id_, document, created_at = runbook_row(runbook, datetime.now(UTC), format_time)
        params = {"owner": owner, "id": id_, "document": document, "created_at": created_at}
        return int(self._conn.execute(_INSERT_RUNBOOK, params).fetchone()[0])

    def flush(self, pending: Pending) -> None:
        conn = self._conn
        if pending.headers:
            conn.executemany(_UPSERT_HEADER, pending.header_rows(format_time))
        versions = pending.version_rows()
        if versions:
            conn.executemany(_SET_VERSION, versions)
        if pending.steps:
            conn.executemany(_UPSERT_STEP, step_rows(pending))
        if pending.logs:
            conn.executemany(_INSERT_LOG, [log_row(entry, format_time) for entry in pending.logs])
        if pending.audit:
            conn.executemany(_INSERT_AUDIT, [audit_row(entry, format_time) for entry in pending.audit])
        if pending.evidence:
            conn.executemany(_INSERT_EVIDENCE, [evidence_row(item, format_time) for item in pending.evidence])
        if pending.consumed:
            conn.executemany(_DELETE_EVENT, [(event_id,) for event_id in pending.consumed])
        if pending.expired_at is not None:
            conn.execute(_DELETE_EXPIRED, (format_time(pending.expired_at),))
        if pending.events:
            conn.executemany(_UPSERT_EVENT, [event_row(event, format_time) for event in pending.events.values()])


def _exclusive(path: str) -> int:
    """Lock ``<path>.lock`` for this store, or raise ``StoreInUse`` naming the file. Where the
    lock file cannot be written (a read-only directory), the database file itself is locked."""
    lock_path = os.path.realpath(path) + ".lock"
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM) or not os.path.exists(path):
            raise
        fd = os.open(path, os.O_RDONLY)
        lock_path = path
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = (os.pread(fd, 32, 0).decode(errors="replace").strip() if lock_path != path else "") or "unknown"
        os.close(fd)
        raise StoreInUse(f"sqlite store {path} is in use by another process (pid {holder}); "
                         "one process per SQLite file") from None
    if lock_path != path:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30, check_same_thread=False, isolation_level=None)
    try:
        for pragma in _PRAGMAS:
            conn.execute(pragma)
    except BaseException:
        conn.close()
        raise
    return conn


def _live(conn: sqlite3.Connection | None, path: str) -> sqlite3.Connection:
    if conn is None:
        raise StoreUnavailable(f"sqlite store {path} is not open")
    return conn


@contextmanager
def _immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction: committed at the end of the block, rolled back if it raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


@contextmanager
def _migration(conn: sqlite3.Connection) -> Iterator[Execute]:
    with _immediate(conn):
        conn.execute(_SCHEMA_VERSION)
        yield lambda sql: conn.execute(sql).fetchall()


# of those, the codes where the file system is the likely cause: worth a look at it
_DISK = frozenset({sqlite3.SQLITE_READONLY, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_FULL, sqlite3.SQLITE_CANTOPEN})


@contextmanager
def _translated(path: str) -> Iterator[None]:
    """Driver errors that mean "cannot reach the database" become StoreUnavailable, named
    (``SQLITE_FULL``...) and, for the disk's codes, with what is seen to stand in the way."""
    try:
        yield
    except sqlite3.Error as exc:
        code = getattr(exc, "sqlite_errorcode", 0)
        if code & 0xFF in _UNAVAILABLE:
            name = getattr(exc, "sqlite_errorname", "")
            why = unwritable_because(path) if code & 0xFF in _DISK else None
            raise StoreUnavailable(f"sqlite store {path}: {exc}" + (f" ({name})" if name else "")
                                   + (f"; {why}" if why else "")) from exc
        raise
    except OSError as exc:
        raise StoreUnavailable(f"sqlite store {path}: {exc}") from exc


def _where(conditions: list[str]) -> str:
    return f"WHERE {' AND '.join(conditions)}" if conditions else ""
