"""The SQLite store: a ``SqlStore`` in SQLite's dialect, on one database file in WAL mode.

What is its own: the connections (one for writes, one for reads), the pragmas, its
migrations, the lock file and the error codes. A batch is written on the write connection
between ``BEGIN IMMEDIATE`` and ``COMMIT`` (``synchronous=FULL``: a batch is on disk
before it is acknowledged). Reads go through a second connection behind a lock; WAL lets
them see the last committed batch while the next one is being written. A file belongs to
one process: ``open`` takes an exclusive lock on ``<file>.lock`` for as long as the store is
open, and refuses (``StoreInUse``) while another store holds it — two processes would both
run the same executions. So it has no ``ledger``, and events go through the runtime's router.
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
from typing import Any

from runtime.model import Execution
from runtime.model.errors import StoreInUse, StoreUnavailable
from runtime.model.records import Change, ChangeResult
from runtime.model.wire import format_time, parse_time
from runtime.store import audit_sql, quotas, slots
from runtime.store.audit_sql import SQLITE_APPEND_ONLY, ledger_migration
from runtime.store.decision_links import DECISION_LINKS_TABLE
from runtime.store.diagnose import unwritable_because
from runtime.store.dialect import Dialect
from runtime.store.receipts import OUTBOX_INDEX, OUTBOX_TABLE, RECEIPTS_INDEX, RECEIPTS_TABLE
from runtime.store.schema import (
    INDEXES,
    Execute,
    Row,
    apply_batch,
    execution_from,
    fanout_migration,
    migrate,
)
from runtime.store.sql import SqlStore
from runtime.store.sql_writer import SqlWriter
from runtime.store.trigger_states import TRIGGER_STATES_TABLE, per_tenant_migration

SQLITE = Dialect("sqlite", mark="?", json_mark="?", stamp=format_time, time=parse_time,
                 step_status="json_extract(state, '$.status')")

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
        *INDEXES,
    ),
    (  # 2: the version of each execution, bumped by every committed change
        "ALTER TABLE executions ADD COLUMN version INTEGER NOT NULL DEFAULT 0",
    ),
    (  # 3: runbook triggers: enabled, last run
        TRIGGER_STATES_TABLE.format(time="TEXT"),
    ),
    (  # 4: receipts of event sources: which messages were taken
        RECEIPTS_TABLE.format(time="TEXT", json="TEXT"),
        RECEIPTS_INDEX,
        OUTBOX_TABLE.format(serial="INTEGER PRIMARY KEY", json="TEXT"),
        OUTBOX_INDEX,
    ),
    (  # 5: decision links used
        DECISION_LINKS_TABLE.format(time="TEXT"),
    ),
    # 6: trigger state per tenant: each tenant switches (and runs) a shared runbook's triggers for itself
    per_tenant_migration("TEXT", "json_extract(a.data, '$.tenantId')"),
    fanout_migration("ADD COLUMN"),  # 7: executions under each root, and each tenant's unfinished children
    ledger_migration("TEXT", add_column_if_not_exists=False),  # 8: the audit ledger (chain, heads, checkpoints)
    slots.TABLES,  # 9: the queues of concurrency keys (``concurrency: {key, limit}``)
    (quotas.TABLE,),  # 10: the start-rate buckets of tenant quotas
    SQLITE_APPEND_ONLY,  # 11: the audit table refuses UPDATE and DELETE, but for the engine's erasures
)

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



class SqliteWriter(SqlWriter):
    """``SqlWriter`` on SQLite: an erasure passes the audit table's append-only triggers."""

    def _erase(self, erase: Sequence[tuple[str, int]]) -> None:
        """Erase payloads past the append-only trigger: the entries are named in
        ``audit_erasing`` for this statement only."""
        self._db.executemany(audit_sql.SQLITE_ALLOW_ERASURE, list(erase))
        super()._erase(erase)
        self._db.execute(audit_sql.SQLITE_END_ERASURE)


class SqliteStore(SqlStore):
    EXECUTIONS = _HEADERS
    name = "sqlite"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(SQLITE)
        self.path = os.fspath(path)
        self._write: sqlite3.Connection | None = None
        self._read: sqlite3.Connection | None = None
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._lock: int | None = None  # the descriptor holding <file>.lock

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
        self._rows("SELECT 1")
        if self._write is None:
            raise StoreUnavailable(f"sqlite store {self.path} is not open")

    # -- writes
    def commit(self, changes: Sequence[Change]) -> list[ChangeResult]:
        if not changes:
            return []
        with self._writing() as conn:
            return apply_batch(changes, SqliteWriter(conn, self.dialect, self.audit_policy))

    def _write_one(self, query: str, params: Sequence[Any]) -> None:
        with self._writing() as conn:
            conn.execute(query, params)

    @contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """The write connection in a ``BEGIN IMMEDIATE`` transaction, committed at the end."""
        with self._write_lock, _translated(self.path):
            with _immediate(_live(self._write, self.path)) as conn:
                yield conn

    # -- reads
    def _rows(self, query: str, params: Sequence[Any] = ()) -> list[Row]:
        with self._reading() as conn:
            return conn.execute(query, params).fetchall()

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
