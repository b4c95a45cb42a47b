"""The PostgreSQL store: a ``SqlStore`` in PostgreSQL's dialect, on psycopg's sync API.

What is its own: the connections (one write connection, a ``psycopg_pool.ConnectionPool``
for reads and short transactions, one LISTEN connection per process), its migrations, and
how a batch is committed. A batch is written on the write connection inside one
transaction in pipeline mode: BEGIN, the epoch check, every write, ``NOTIFY`` and the
``COMMIT`` go out together, one round trip (a read that needs an answer, such as a start's
insert, syncs early). A connection lost during a commit raises StoreUnavailable and is
replaced on the next commit (the persistence actor retries the batch). Reads take a pooled
connection and read in one statement, hence from one snapshot. ``schema``: the tables live
in that schema (created if missing), set as the ``search_path`` of every connection.
Several processes may share the database: ``ledger`` (``pg_ledger.py``) is their
``ClusterLedger``, and ``pg_writer.py`` writes what a batch owes them.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

import attrs
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool

from runtime.model import Execution
from runtime.model.errors import StoreUnavailable
from runtime.model.records import Change, ChangeResult
from runtime.store import audit_sql, quotas, slots
from runtime.store import pg_cluster as cluster
from runtime.store.audit_sql import PG_APPEND_ONLY, ledger_migration
from runtime.store.decision_links import DECISION_LINKS_TABLE
from runtime.store.dialect import Dialect
from runtime.store.pg_ledger import PostgresLedger
from runtime.store.pg_writer import PostgresWriter
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
from runtime.store.trigger_states import TRIGGER_STATES_TABLE, per_tenant_migration

Connection = psycopg.Connection[tuple[Any, ...]]

POSTGRES = Dialect("postgres", mark="%s", json_mark="%s::json", stamp=lambda value: value,
                   time=lambda value: value, step_status="state->>'status'",
                   lock_key="SELECT pg_advisory_xact_lock(hashtext(?))")

_SCHEMA_VERSION = """
CREATE TABLE IF NOT EXISTS schema_version (
    version integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""

#: JSON columns are ``json`` (kept as written, unlike jsonb, which rejects ``\\u0000``) and
#: hold ``wire.dumps`` text. ``executions.header`` is the execution without its steps;
#: ``runbooks.document`` the runbook's wire form without ``version``.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE runbooks (
            owner text NOT NULL,  -- the tenant, '' for a shared runbook
            id text NOT NULL,
            version integer NOT NULL,
            document json NOT NULL,
            created_at timestamptz NOT NULL,
            PRIMARY KEY (owner, id, version)
        )""",
        """CREATE TABLE executions (
            id text PRIMARY KEY,
            seq bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
            tenant_id text NOT NULL,
            runbook_id text NOT NULL,
            runbook_version integer NOT NULL,
            status text NOT NULL,
            input_hash text NOT NULL,
            deduplicated boolean NOT NULL,
            idempotency_key text,
            created_at timestamptz NOT NULL,
            header json NOT NULL
        )""",
        """CREATE TABLE steps (
            execution_id text NOT NULL REFERENCES executions (id) ON DELETE CASCADE,
            step_id text NOT NULL,
            position integer NOT NULL,
            state json NOT NULL,
            PRIMARY KEY (execution_id, step_id)
        )""",
        """CREATE TABLE logs (
            seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            execution_id text NOT NULL,
            step_id text,
            level text NOT NULL,
            at timestamptz NOT NULL,
            message text NOT NULL,
            data json NOT NULL
        )""",
        """CREATE TABLE audit (
            seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            execution_id text NOT NULL,
            at timestamptz NOT NULL,
            actor text NOT NULL,
            action text NOT NULL,
            step_id text,
            legal_basis text,
            reason text,
            data json NOT NULL
        )""",
        """CREATE TABLE evidence (
            seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            id text NOT NULL UNIQUE,
            execution_id text NOT NULL,
            step_id text,
            kind text NOT NULL,
            sha256 text NOT NULL,
            data json NOT NULL,
            created_at timestamptz NOT NULL
        )""",
        """CREATE TABLE events (
            seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            id text NOT NULL UNIQUE,
            tenant_id text NOT NULL,
            type text NOT NULL,
            correlation_key text NOT NULL,
            payload json NOT NULL,
            received_at timestamptz NOT NULL,
            expires_at timestamptz
        )""",
        *INDEXES,
    ),
    (  # 2: leases, so several processes can share one database
        """CREATE TABLE leases (
            execution_id text PRIMARY KEY,
            owner text NOT NULL,
            expires_at timestamptz NOT NULL
        )""",
        "CREATE INDEX leases_by_owner ON leases (owner)",
    ),
    (  # 3: the version of each execution, bumped by every committed change
        "ALTER TABLE executions ADD COLUMN version bigint NOT NULL DEFAULT 0",
    ),
    cluster.MIGRATION,  # 4: instances, owners with fencing epochs, commands, waits
    (  # 5: runbook triggers: enabled, last run
        TRIGGER_STATES_TABLE.format(time="timestamptz"),
    ),
    (  # 6: a row per committed batch, so a batch whose COMMIT reply was lost is not written twice
        """CREATE TABLE batches (
            id text PRIMARY KEY,
            committed_at timestamptz NOT NULL DEFAULT now()
        )""",
        "CREATE INDEX batches_by_time ON batches (committed_at)",
    ),
    cluster.COMMAND_TAGS,  # 7: a command's kind is its message's class name
    (  # 8: receipts of event sources: which messages were taken, by any process
        RECEIPTS_TABLE.format(time="timestamptz", json="json"),
        RECEIPTS_INDEX,
        OUTBOX_TABLE.format(serial="bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY", json="json"),
        OUTBOX_INDEX,
    ),
    (  # 9: decision links used
        DECISION_LINKS_TABLE.format(time="timestamptz"),
    ),
    # 10: trigger state per tenant: each tenant switches (and runs) a shared runbook's triggers for itself
    per_tenant_migration("timestamptz", "a.data->>'tenantId'"),
    fanout_migration("ADD COLUMN IF NOT EXISTS"),  # 11: executions under each root, each tenant's children
    cluster.INCARNATIONS,  # 12: an owner is one start of a process; released executions indexed
    # 13: the audit ledger (chain, heads, checkpoints), append-only
    (*ledger_migration("timestamptz"), *PG_APPEND_ONLY),
    slots.TABLES,  # 14: the queues of concurrency keys (``concurrency: {key, limit}``)
    (quotas.TABLE,),  # 15: the start-rate buckets of tenant quotas
)

logger = logging.getLogger("runbooks.audit")

_MARK_BATCH = "INSERT INTO batches (id) VALUES (%s)"
_BATCH_COMMITTED = "SELECT 1 FROM batches WHERE id = %s"
_SWEEP_BATCHES = "DELETE FROM batches WHERE committed_at < now() - interval '1 day'"
SWEEP_EVERY = 1000  # batches

# the header and its steps in one statement: one snapshot
_EXECUTIONS = """
SELECT e.seq, e.header, e.version, e.epoch,
       (SELECT json_agg(json_build_array(s.step_id, s.state) ORDER BY s.position, s.step_id)
        FROM steps AS s WHERE s.execution_id = e.id)
FROM executions AS e"""


class PostgresStore(SqlStore):
    EXECUTIONS = _EXECUTIONS
    name = "postgres"
    ledger: PostgresLedger

    def __init__(
        self,
        dsn: str,
        pool_max: int = 20,
        schema: str | None = None,
        *,
        pool_min: int = 1,
        timeout: float = 10.0,
    ) -> None:
        super().__init__(POSTGRES)
        self.dsn = dsn
        self.pool_max = pool_max
        self.schema = schema
        self._pool_min = min(pool_min, pool_max)
        self._timeout = timeout
        self._conn: Connection | None = None
        self._pool: ConnectionPool[Connection] | None = None
        self._write_lock = threading.Lock()
        self._in_doubt: _Attempt | None = None  # a batch whose COMMIT may or may not have landed
        self._batches = 0
        self._known_heads = audit_sql.KnownHeads()  # the chain heads this process's batches left
        # (the nonce tags the announcements of commands this process hands over itself)
        self.ledger = PostgresLedger(self._rows, self._transaction, self._listener_connection, self._connect,
                                     self.get_execution,
                                     channel=f"runbooks_{schema}" if schema else "runbooks", nonce=uuid.uuid4().hex[:12])

    def open(self) -> None:
        with self._write_lock, _translated("open"):
            if self._pool is not None:
                return
            conn = self._connect()
            try:
                migrate(lambda: self._migration(conn), MIGRATIONS)
                self._pool = self._open_pool()
            except BaseException:
                conn.close()
                raise
            self._conn = conn

    def _open_pool(self) -> ConnectionPool[Connection]:
        pool: ConnectionPool[Connection] = ConnectionPool(
            self.dsn,
            min_size=self._pool_min,
            max_size=self.pool_max,
            kwargs={"autocommit": True, **self._connect_options()},
            configure=self._configure,
            timeout=self._timeout,
            name="runbooks-store-reads",
            open=False,
        )
        pool.open()
        return pool

    def close(self) -> None:
        with self._write_lock:
            pool, conn = self._pool, self._conn
            self._pool = self._conn = None
            if pool is not None:
                pool.close()
            if conn is not None:
                conn.close()

    def ping(self) -> None:
        self._rows("SELECT 1")

    # -- writes
    def commit(self, changes: Sequence[Change]) -> list[ChangeResult]:
        """Write the batch in one transaction. Each batch writes a row of ``batches`` with it,
        first, under one id decided before its first attempt: when the connection breaks during
        ``COMMIT`` the outcome is unknown, and the retry of the same batch (the persistence
        actor sends the same list again) first looks for that row; found, the batch is
        committed and its results are answered without writing it again (its log, audit and
        evidence entries and its commands are not doubled). Not found, the retry writes the
        batch again under the same id: if the first COMMIT was still in progress on the server,
        the retry's insert waits for it and fails on the key, and the batch counts as committed."""
        if not changes:
            return []
        with self._write_lock, _translated("commit"):
            doubt = self._in_doubt
            self._in_doubt = None
            retry = doubt is not None and doubt.changes is changes
            if retry:
                assert doubt is not None and doubt.results is not None
                if self._batch_committed(doubt.marker):
                    return doubt.results
            attempt = _Attempt(changes, doubt.marker if retry and doubt is not None else uuid.uuid4().hex)
            try:
                self._write_batch(attempt)
            except psycopg.errors.UniqueViolation as exc:
                if retry and doubt is not None and exc.diag.table_name == "batches":
                    return doubt.results or []  # the first attempt's COMMIT landed after all
                raise
            except psycopg.OperationalError:
                if attempt.results is not None:  # every write was made: the COMMIT may have landed
                    self._in_doubt = attempt
                elif retry:  # still unknown whether the first attempt landed
                    self._in_doubt = doubt
                raise
            assert attempt.results is not None
            return attempt.results

    def _write_batch(self, attempt: _Attempt) -> None:
        """Write the batch; once more, reading every chain head, if it chained after a head
        this process trusted and another process had moved meanwhile (``KnownHeads``)."""
        try:
            self._write_batch_once(attempt)
        except psycopg.errors.UniqueViolation as exc:
            if exc.diag.constraint_name != audit_sql.CHAIN_INDEX or not attempt.trusted_heads:
                raise
            logger.info("batch %s chained after an audit head another process had moved: written again, "
                        "reading the heads", attempt.marker)
            attempt.results = None
            self._write_batch_once(attempt)

    def _write_batch_once(self, attempt: _Attempt) -> None:
        conn = self._writer()
        known = self._known_heads
        attempt.trusted_heads = bool(known.trusted())
        # One pipeline: BEGIN, every write and the COMMIT go out together and are answered
        # together, when the pipeline ends: one round trip (a read that needs its answer
        # earlier, such as a start's insert or an owner's fence, syncs early). BEGIN and COMMIT
        # are sent as statements: psycopg's transaction block would sync after BEGIN, before
        # COMMIT and once more after it, three round trips of nothing but waiting.
        try:
            with conn.pipeline(), conn.cursor() as cursor:
                cursor.execute("BEGIN")
                cursor.execute(_MARK_BATCH, (attempt.marker,))  # first: a retry waits here for a COMMIT in progress
                writer = PostgresWriter(cursor, self.dialect, self.ledger.channel, self.ledger.nonce,
                                        self.audit_policy, known)
                results = apply_batch(attempt.changes, writer)
                writer.check_fences()
                self._batches += 1
                if self._batches % SWEEP_EVERY == 0:
                    cursor.execute(_SWEEP_BATCHES)
                attempt.results = results
                cursor.execute("COMMIT")
        except BaseException:
            known.forget()  # (refused, or unknown whether it landed: the heads are read again)
            _roll_back(conn)
            raise
        if writer.checkpointed_idle:
            known.forget()  # (the idle chains' heads moved too)
        else:
            known.committed(writer.moved)

    def _batch_committed(self, marker: str) -> bool:
        with self._writer().cursor() as cursor:
            return cursor.execute(_BATCH_COMMITTED, (marker,)).fetchone() is not None

    def _writer(self) -> Connection:
        """The write connection; a broken one (lost during an earlier commit) is replaced."""
        if self._pool is None:
            raise StoreUnavailable("postgres store is not open")
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                with suppress(psycopg.Error):
                    conn.close()
            self._conn = None
            self._conn = conn = self._connect()
        return conn

    def _write_one(self, query: str, params: Sequence[Any]) -> None:
        self._rows(query, params)  # (autocommit: a statement is its own transaction)

    @contextmanager
    def _transaction(self) -> Iterator[psycopg.Cursor[tuple[Any, ...]]]:
        """A short transaction of its own on a pooled connection (not the batch writer)."""
        pool = self._pool
        if pool is None:
            raise StoreUnavailable("postgres store is not open")
        with _translated("write"), pool.connection() as conn, conn.transaction(), conn.cursor() as cursor:
            yield cursor

    # -- reads
    def _executions(self, query: str, params: Sequence[Any]) -> list[tuple[int, Execution]]:
        return [(seq, execution_from(header, steps or (), version, epoch))
                for seq, header, version, epoch, steps in self._rows(query, params)]

    def _rows(self, query: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[Row]:
        """One statement on a pooled connection. Connections are not checked before use (a
        round trip per read); one found broken (the server restarted) is dropped by the pool,
        and the read is tried once more on another."""
        pool = self._pool
        if pool is None:
            raise StoreUnavailable("postgres store is not open")
        with _translated("read"):
            try:
                with pool.connection() as conn:
                    return _fetched(conn.execute(query, params))
            except psycopg.OperationalError:
                with pool.connection() as conn:
                    return _fetched(conn.execute(query, params))

    # -- connections
    def _connect_options(self) -> dict[str, Any]:
        given = conninfo_to_dict(self.dsn)
        defaults = {"connect_timeout": max(1, round(self._timeout)), "application_name": "runbooks"}
        return {key: value for key, value in defaults.items() if key not in given}

    def _listener_connection(self) -> Connection:
        """A connection of its own for LISTEN (kept out of the pool)."""
        return psycopg.Connection.connect(self.dsn, autocommit=True, **self._connect_options())

    def _connect(self) -> Connection:
        conn = psycopg.Connection.connect(self.dsn, autocommit=True, **self._connect_options())
        try:
            self._configure(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _configure(self, conn: Connection) -> None:
        if self.schema is not None:
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
        conn.execute("SET TIME ZONE 'UTC'")

    @contextmanager
    def _migration(self, conn: Connection) -> Iterator[Execute]:
        """A migration transaction: holds this schema's migration lock, creates the schema."""
        with conn.transaction():
            lock = f"runbooks.migrate:{self.schema or ''}"
            conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (lock,))
            if self.schema is not None:
                if conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.schema,)).fetchone() is None:
                    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(self.schema)))
            conn.execute(_SCHEMA_VERSION)
            yield lambda statement: _fetched(conn.execute(statement))


@attrs.define
class _Attempt:
    """One try at committing a batch: its marker row, and its results once every write is made."""

    changes: Sequence[Change]
    marker: str
    results: list[ChangeResult] | None = None
    trusted_heads: bool = False  # whether it chained after heads it did not read (``KnownHeads``)


def _roll_back(conn: Connection) -> None:
    """End a batch's transaction that did not commit (a connection that broke needs nothing:
    the server rolled it back, and the next commit replaces the connection)."""
    if not conn.broken and not conn.closed and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        with suppress(psycopg.Error):
            conn.rollback()


def _fetched(cursor: psycopg.Cursor[tuple[Any, ...]]) -> list[Row]:
    """The rows of a statement, none if it returns none."""
    return cursor.fetchall() if cursor.description else []


@contextmanager
def _translated(what: str) -> Iterator[None]:
    """Connection failures (and the pool's timeouts) become StoreUnavailable."""
    try:
        yield
    except psycopg.OperationalError as exc:
        raise StoreUnavailable(f"postgres store: {what} failed: {exc}") from exc
