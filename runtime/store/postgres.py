"""The PostgreSQL store: psycopg's sync API, one write connection and a pool for reads.

A batch is written on one ``autocommit`` connection inside ``with conn.transaction():``;
the bulk parts go through ``executemany`` in one pipeline (one round trip for all tables,
not one per row). A connection lost during a commit raises StoreUnavailable and
is replaced on the next commit (the persistence actor retries the batch). Reads take a
connection from a ``psycopg_pool.ConnectionPool`` and read in one statement, hence from one
snapshot. ``schema``: the tables live in that schema (created if missing), set as the
``search_path`` of every connection.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from typing import Any

import attrs
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool

from runtime.language.conditions import event_passes
from runtime.model import LOG_LEVELS, AuditEntry, Event, Evidence, Execution, LogEntry, Runbook
from runtime.model.errors import Fenced, StoreUnavailable, retained_bytes_full, retained_events_full
from runtime.model.jsonsafe import json_size
from runtime.model.records import Change, ChangeResult, QueuedCommand
from runtime.model.wire import dumps, to_json
from runtime.store import pg_cluster as cluster
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

Connection = psycopg.Connection[tuple[Any, ...]]

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
        f"""CREATE UNIQUE INDEX executions_active_hash
            ON executions (tenant_id, runbook_id, runbook_version, input_hash)
            WHERE deduplicated AND status NOT IN {NOT_DEDUPED_SQL}""",
        """CREATE UNIQUE INDEX executions_idempotency_key ON executions (tenant_id, idempotency_key)
            WHERE idempotency_key IS NOT NULL""",
        "CREATE INDEX executions_listing ON executions (tenant_id, runbook_id, status, seq DESC)",
        "CREATE INDEX executions_status ON executions (status)",
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
        "CREATE INDEX logs_by_step ON logs (execution_id, step_id, seq)",
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
        "CREATE INDEX audit_by_execution ON audit (execution_id, seq)",
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
        "CREATE INDEX evidence_by_execution ON evidence (execution_id, seq)",
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
        "CREATE INDEX events_match ON events (tenant_id, type, correlation_key)",
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
)

_MARK_BATCH = "INSERT INTO batches (id) VALUES (%s)"
_BATCH_COMMITTED = "SELECT 1 FROM batches WHERE id = %s"
_SWEEP_BATCHES = "DELETE FROM batches WHERE committed_at < now() - interval '1 day'"
SWEEP_EVERY = 1000  # batches

_HEADER_COLUMNS = ("id, tenant_id, runbook_id, runbook_version, status, input_hash, idempotency_key, created_at, "
                   "header, version")

_INSERT_EXECUTION = f"""
INSERT INTO executions ({_HEADER_COLUMNS}, deduplicated, owner, epoch)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s::json, %s, %s, %s, %s)
ON CONFLICT DO NOTHING"""

# A header upsert never breaks the active-hash index: an execution that becomes active again
# (a retried failure) while another one with its input hash is active leaves the index.
_UPSERT_HEADER = f"""
INSERT INTO executions AS e ({_HEADER_COLUMNS}, deduplicated)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s::json, %s, false)
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
        WHEN NOT e.deduplicated THEN false
        WHEN excluded.status IN {NOT_DEDUPED_SQL} OR e.status NOT IN {NOT_DEDUPED_SQL} THEN true
        ELSE NOT EXISTS (
            SELECT 1 FROM executions AS other
            WHERE other.tenant_id = excluded.tenant_id AND other.runbook_id = excluded.runbook_id
              AND other.runbook_version = excluded.runbook_version
              AND other.input_hash = excluded.input_hash
              AND other.deduplicated AND other.status NOT IN {NOT_DEDUPED_SQL})
    END"""

_UPSERT_STEP = """
INSERT INTO steps (execution_id, step_id, position, state) VALUES (%s, %s, %s, %s::json)
ON CONFLICT (execution_id, step_id) DO UPDATE SET position = excluded.position, state = excluded.state"""

_INSERT_LOG = """
INSERT INTO logs (execution_id, step_id, level, at, message, data) VALUES (%s, %s, %s, %s, %s, %s::json)"""

_INSERT_AUDIT = """
INSERT INTO audit (execution_id, at, actor, action, step_id, legal_basis, reason, data)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s::json)"""

_INSERT_EVIDENCE = """
INSERT INTO evidence (id, execution_id, step_id, kind, sha256, data, created_at)
VALUES (%s, %s, %s, %s, %s, %s::json, %s)
ON CONFLICT (id) DO NOTHING"""

_UPSERT_EVENT = """
INSERT INTO events (id, tenant_id, type, correlation_key, payload, received_at, expires_at)
VALUES (%s, %s, %s, %s, %s::json, %s, %s)
ON CONFLICT (id) DO UPDATE SET
    tenant_id = excluded.tenant_id, type = excluded.type, correlation_key = excluded.correlation_key,
    payload = excluded.payload, received_at = excluded.received_at, expires_at = excluded.expires_at"""

_DELETE_EVENT = "DELETE FROM events WHERE id = %s"
_DELETE_EXPIRED = "DELETE FROM events WHERE expires_at <= %s"

_SET_VERSION = "UPDATE executions SET version = %s WHERE id = %s"

# Two stores registering the same runbook at once: the second insert conflicts and is retried.
_INSERT_RUNBOOK = """
INSERT INTO runbooks (owner, id, version, document, created_at)
SELECT %(owner)s, %(id)s, COALESCE(MAX(version), 0) + 1, %(document)s::json, %(created_at)s
FROM runbooks WHERE owner = %(owner)s AND id = %(id)s
ON CONFLICT DO NOTHING
RETURNING version"""

_ID_BY_KEY = "SELECT id FROM executions WHERE tenant_id = %s AND idempotency_key = %s"
_ACTIVE = f"""
WHERE tenant_id = %s AND runbook_id = %s AND runbook_version = %s AND input_hash = %s
  AND deduplicated AND status NOT IN {NOT_DEDUPED_SQL}
ORDER BY seq LIMIT 1"""

# the header and its steps in one statement: one snapshot
_EXECUTIONS = """
SELECT e.seq, e.header, e.version, e.epoch,
       (SELECT json_agg(json_build_array(s.step_id, s.state) ORDER BY s.position, s.step_id)
        FROM steps AS s WHERE s.execution_id = e.id)
FROM executions AS e"""

_ATTEMPTS = 10  # inserts that lost a race with another store's transaction


class PostgresStore(ExecutionQueries, TriggerQueries):
    MARK = "%s"
    ALL_LATEST = ("SELECT DISTINCT ON (owner, id) owner, version, document::text FROM runbooks "
                  "ORDER BY owner, id, version DESC")
    trigger_stamp = staticmethod(lambda value: value)
    SELECT = _EXECUTIONS
    STEP_STATUS = "state->>'status'"

    threaded = True
    name = "postgres"

    def __init__(
        self,
        dsn: str,
        pool_max: int = 20,
        schema: str | None = None,
        *,
        pool_min: int = 1,
        timeout: float = 10.0,
    ) -> None:
        self.dsn = dsn
        self.pool_max = pool_max
        self.schema = schema
        self._pool_min = min(pool_min, pool_max)
        self._timeout = timeout
        self._conn: Connection | None = None
        self._pool: ConnectionPool[Connection] | None = None
        self._write_lock = threading.Lock()
        self._parsed = ParsedRunbooks()  # (its document is read as text: parsed only once)
        # tags the announcements of commands this process hands over itself (a publish's):
        # its own listener need not read them back
        self.nonce = uuid.uuid4().hex[:12]
        self._in_doubt: _Attempt | None = None  # a batch whose COMMIT may or may not have landed
        self._batches = 0

    def open(self) -> None:
        with self._write_lock, _translated("open"):
            if self._pool is not None:
                return
            conn = self._connect()
            try:
                migrate(lambda: self._migration(conn), MIGRATIONS)
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
            except BaseException:
                conn.close()
                raise
            self._conn, self._pool = conn, pool

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

    # -- several processes on one database: instances, owners, commands
    shared = True  # other processes may write this store too

    @property
    def channel(self) -> str:
        """The notification channel of this store's schema."""
        return f"runbooks_{self.schema}" if self.schema else "runbooks"

    def register_instance(self, instance_id: str, incarnation: str, ttl_s: float) -> bool:
        """Take the instance id for this process; whether a process using it was still alive."""
        rows = self._rows(cluster.REGISTER, {"id": instance_id, "me": incarnation, "ttl": ttl_s})
        return bool(rows and rows[0][0])

    def renew_instance(self, instance_id: str, incarnation: str, ttl_s: float) -> bool:
        """Extend this process's heartbeat; False: another process took the instance id."""
        return bool(self._rows(cluster.RENEW, {"id": instance_id, "me": incarnation, "ttl": ttl_s}))

    def stop_instance(self, instance_id: str, incarnation: str) -> list[str]:
        """Graceful shutdown: give every unfinished execution up and let the others know."""
        with self._transaction() as cursor:
            released = [row[0] for row in cursor.execute(cluster.RELEASE, {"id": instance_id}).fetchall()]
            cursor.execute(cluster.STOP, {"id": instance_id, "me": incarnation})
            cursor.execute(cluster.NOTIFY, (self.channel, ["released"]))
        return released

    def claim_own(self, instance_id: str) -> list[str]:
        """Every unfinished execution this instance id owns, each under a new epoch."""
        return [row[0] for row in self._rows(cluster.CLAIM_OWN, {"id": instance_id})]

    def orphans(self, instance_id: str, limit: int = 1000) -> list[tuple[str, int, str, str, int]]:
        """(id, epoch, tenant, runbook id, version) of unfinished executions nobody alive owns."""
        return [tuple(row) for row in self._rows(cluster.ORPHANS, {"id": instance_id, "limit": limit})]  # type: ignore[misc]

    def claim(self, execution_id: str, instance_id: str, epoch: int) -> int | None:
        """Own the execution if its epoch is still ``epoch``; the new epoch, or None."""
        rows = self._rows(cluster.CLAIM, {"id": instance_id, "execution": execution_id, "epoch": epoch})
        return int(rows[0][0]) if rows else None

    def claim_finished(self, execution_id: str, instance_id: str) -> int | None:
        rows = self._rows(cluster.CLAIM_FINISHED, {"id": instance_id, "execution": execution_id})
        return int(rows[0][0]) if rows else None

    def owner_of(self, execution_id: str) -> tuple[str | None, int] | None:
        rows = self._rows(cluster.OWNER, (execution_id,))
        return (rows[0][0], int(rows[0][1])) if rows else None

    def insert_command(self, command_id: str, execution_id: str, kind: str, body: Any, origin: str) -> None:
        """Queue a command for the execution's owner and announce it (one transaction)."""
        with self._transaction() as cursor:
            cursor.execute(cluster.INSERT_COMMAND, (command_id, execution_id, kind, json.dumps(body), origin))
            cursor.execute(cluster.NOTIFY, (self.channel, [f"cmd:{execution_id}:{command_id}"]))

    def pending_commands(self, execution_id: str) -> list[tuple[str, str, Any]]:
        """(id, kind, body) of the execution's commands not applied yet, in order."""
        return [(row[0], row[1], row[2]) for row in self._rows(cluster.PENDING_COMMANDS, (execution_id,))]

    def command_outcome(self, command_id: str) -> tuple[bool, Any] | None:
        """(applied, outcome) of a command, None if there is no such command."""
        rows = self._rows(cluster.OUTCOME, (command_id,))
        return (bool(rows[0][0]), rows[0][1]) if rows else None

    def sweep_commands(self, older_than_s: float) -> None:
        self._rows(cluster.SWEEP_COMMANDS + " RETURNING 1", (older_than_s,))

    @contextmanager
    def _transaction(self) -> Iterator[psycopg.Cursor[tuple[Any, ...]]]:
        """A short transaction of its own on a pooled connection (not the batch writer)."""
        pool = self._pool
        if pool is None:
            raise StoreUnavailable("postgres store is not open")
        with _translated("write"), pool.connection() as conn, conn.transaction(), conn.cursor() as cursor:
            yield cursor

    # -- writes
    def commit(self, changes: Sequence[Change]) -> list[ChangeResult]:
        """Write the batch in one transaction. Each batch writes a row of ``batches`` with it:
        when the connection breaks during ``COMMIT`` the outcome is unknown, and the retry of
        the same batch (the persistence actor sends the same list again) first looks for that
        row; found, the batch is committed and its results are answered without writing it
        again (its log, audit and evidence entries and its commands are not doubled)."""
        if not changes:
            return []
        with self._write_lock, _translated("commit"):
            doubt = self._in_doubt
            if doubt is not None and doubt.changes is changes:
                if self._batch_committed(doubt.marker):
                    self._in_doubt = None
                    assert doubt.results is not None
                    return doubt.results
            self._in_doubt = None
            attempt = _Attempt(changes, uuid.uuid4().hex)
            try:
                self._write_batch(attempt)
            except psycopg.OperationalError:
                if attempt.results is not None:  # every write was made: the COMMIT may have landed
                    self._in_doubt = attempt
                raise
            assert attempt.results is not None
            return attempt.results

    def _write_batch(self, attempt: _Attempt) -> None:
        conn = self._writer()
        # in pipeline mode BEGIN, the fence and every write go out together: one round trip
        # and the COMMIT (a read that needs an answer, such as a start's insert, syncs early)
        with conn.pipeline(), conn.transaction(), conn.cursor() as cursor:
            writer = _Writer(cursor, self.channel, self.nonce)
            results = apply_batch(attempt.changes, writer)
            writer.check_fences()
            cursor.execute(_MARK_BATCH, (attempt.marker,))
            self._batches += 1
            if self._batches % SWEEP_EVERY == 0:
                cursor.execute(_SWEEP_BATCHES)
            attempt.results = results

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

    # -- runbooks
    def get_runbook(self, tenant_id: str | None, runbook_id: str, version: int | None = None) -> Runbook | None:
        # per owner: its latest version and the one asked for; the first owner that has any wins
        rows = self._rows(
            """SELECT owner, version, document::text FROM runbooks AS r
               WHERE owner = ANY(%(owners)s) AND id = %(id)s AND (version = %(version)s OR version =
                   (SELECT MAX(version) FROM runbooks AS m WHERE m.owner = r.owner AND m.id = r.id))""",
            {"owners": owners(tenant_id), "id": runbook_id, "version": version},
        )
        for owner in owners(tenant_id):
            found = {row[1]: row for row in rows if row[0] == owner}
            if found:
                row = found.get(max(found) if version is None else version)
                return self._parsed.get(owner, runbook_id, row[1], row[2]) if row else None
        return None

    def list_runbooks(self, tenant_id: str | None) -> list[Runbook]:
        rows = self._rows(
            """SELECT DISTINCT ON (owner, id) owner, version, document FROM runbooks
               WHERE owner = ANY(%s) ORDER BY owner, id, version DESC""",
            (owners(tenant_id),),
        )
        return latest_runbooks(rows)

    # -- executions: ExecutionQueries
    def _executions(self, query: str, params: Sequence[Any]) -> list[tuple[int, Execution]]:
        return [(seq, execution_from(header, steps or (), version, epoch))
                for seq, header, version, epoch, steps in self._rows(query, params)]

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
        where = ["execution_id = %s"]
        params: list[Any] = [execution_id]
        if step_id is not None:
            where.append("step_id = %s")
            params.append(step_id)
        if level is not None:
            where.append("level = ANY(%s)")
            params.append(list(LOG_LEVELS[LOG_LEVELS.index(level) :]))
        if after is not None:
            where.append("seq > %s")
            params.append(after)
        query = f"""SELECT seq, execution_id, step_id, level, at, message, data FROM logs
                    {_where(where)} ORDER BY seq LIMIT %s"""
        return [log_from(row, _as_is) for row in self._rows(query, (*params, max(limit, 0)))]

    def evidence(self, execution_id: str) -> list[Evidence]:
        query = """SELECT id, execution_id, step_id, kind, sha256, data, created_at
                   FROM evidence WHERE execution_id = %s ORDER BY seq"""
        return [evidence_from(row, _as_is) for row in self._rows(query, (execution_id,))]

    def audit(self, execution_id: str) -> list[AuditEntry]:
        query = """SELECT execution_id, at, actor, action, step_id, legal_basis, reason, data
                   FROM audit WHERE execution_id = %s ORDER BY seq"""
        return [audit_from(row, _as_is) for row in self._rows(query, (execution_id,))]

    def retained_events(self, now: datetime) -> list[Event]:
        query = """SELECT id, tenant_id, type, correlation_key, payload, received_at, expires_at
                   FROM events WHERE expires_at IS NULL OR expires_at > %s ORDER BY seq"""
        return [event_from(row, _as_is) for row in self._rows(query, (now,))]

    # -- triggers: TriggerQueries (autocommit connections of the pool: one statement each)
    def _trigger_rows(self, query: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        return self._rows(query, params)

    def _trigger_write(self, query: str, params: Sequence[Any]) -> None:
        self._rows(query + " RETURNING 1", params)

    def _rows(self, query: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[tuple[Any, ...]]:
        """One statement on a pooled connection. Connections are not checked before use (a
        round trip per read); one found broken (the server restarted) is dropped by the pool,
        and the read is tried once more on another."""
        pool = self._pool
        if pool is None:
            raise StoreUnavailable("postgres store is not open")
        with _translated("read"):
            try:
                with pool.connection() as conn:
                    return conn.execute(query, params).fetchall()
            except psycopg.OperationalError:
                with pool.connection() as conn:
                    return conn.execute(query, params).fetchall()

    # -- connections
    def _connect_options(self) -> dict[str, Any]:
        given = conninfo_to_dict(self.dsn)
        defaults = {"connect_timeout": max(1, round(self._timeout)), "application_name": "runbooks"}
        return {key: value for key, value in defaults.items() if key not in given}

    def connect_listener(self) -> Connection:
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

            def execute(statement: str) -> list[tuple[Any, ...]]:
                cursor = conn.execute(statement)
                return cursor.fetchall() if cursor.description else []

            yield execute


@attrs.define
class _Attempt:
    """One try at committing a batch: its marker row, and its results once every write is made."""

    changes: Sequence[Change]
    marker: str
    results: list[ChangeResult] | None = None


class _Writer:
    """The writes of one batch, inside its transaction."""

    def __init__(self, cursor: psycopg.Cursor[tuple[Any, ...]], channel: str, nonce: str) -> None:
        self._cursor = cursor
        self._channel = channel
        self._nonce = nonce
        self._notices: list[str] = []  # NOTIFY payloads, sent as the batch commits
        self._queued: list[QueuedCommand] = []  # the commands of the current publish
        self._fences: list[tuple[list[str], psycopg.Cursor[tuple[Any, ...]]]] = []

    def insert_executions(self, starts: Sequence[Change]) -> list[str | None]:
        """Every insert of the run in one pipeline: one round trip for all."""
        conn = self._cursor.connection
        cursors = []
        with conn.pipeline():
            for change in starts:
                cursor = conn.cursor()
                cursor.execute(_INSERT_EXECUTION, _insert_row(change))
                cursors.append(cursor)
        results: list[str | None] = []
        for change, cursor in zip(starts, cursors, strict=True):
            assert change.new_execution is not None
            results.append(None if cursor.rowcount == 1 else self._resolve(change))
        return results

    def _resolve(self, change: Change) -> str | None:
        """A start whose insert found its unique key taken: the execution that holds it."""
        execution = change.new_execution
        assert execution is not None
        for _ in range(_ATTEMPTS):
            found, existing = self._existing(execution, change.dedup)
            if found:
                return existing
            self._cursor.execute(_INSERT_EXECUTION, _insert_row(change))  # it left the index meanwhile: again
            if self._cursor.rowcount == 1:
                return None
        # the execution holding the index kept changing under us: let the batch be retried
        raise StoreUnavailable(f"execution {execution.id} was neither inserted nor found; retry")

    def _existing(self, execution: Execution, dedup: bool) -> tuple[bool, str | None]:
        """The execution that holds a unique index (None: this very one, a replayed batch).
        Not found: it left the index after our insert had seen it (another store's commit)."""
        lookups: list[tuple[str, tuple[Any, ...]]] = []
        if execution.idempotency_key is not None:
            lookups.append((_ID_BY_KEY, (execution.tenant_id, execution.idempotency_key)))
        if dedup:
            hash_key = (execution.tenant_id, execution.runbook_id, execution.runbook_version, execution.input_hash)
            lookups.append((f"SELECT id FROM executions {_ACTIVE}", hash_key))
        lookups.append(("SELECT id FROM executions WHERE id = %s", (execution.id,)))
        for query, params in lookups:
            row = self._cursor.execute(query, params).fetchone()
            if row is not None:
                return True, (None if row[0] == execution.id else str(row[0]))
        return False, None

    def add_runbook(self, runbook: Runbook) -> int:
        owner, id_, document, created_at = runbook_row(runbook, datetime.now(UTC), _as_is)
        params = {"owner": owner, "id": id_, "document": document, "created_at": created_at}
        self._notices.append(f"runbook:{runbook.id}")  # the others drop the latest version they cached
        for _ in range(_ATTEMPTS):
            row = self._cursor.execute(_INSERT_RUNBOOK, params).fetchone()
            if row is not None:
                return int(row[0])
        raise StoreUnavailable(f"runbook {runbook.id}: no version could be assigned; retry")

    def flush(self, pending: Pending) -> None:
        if pending.fences:
            self._fence(pending)
        self._flush(pending)  # (in the commit's pipeline: no round trip of its own)

    def _fence(self, pending: Pending) -> None:
        """The guard of the owners' writes; its answer is read by ``check_fences``, before the
        transaction commits (a stale epoch rolls the whole batch back)."""
        ids = list(pending.fences)
        columns = (ids, [pending.versions.get(i, 0) for i in ids], [pending.fences[i][0] for i in ids],
                   [pending.fences[i][1] for i in ids])
        cursor = self._cursor.connection.cursor()
        cursor.execute(cluster.FENCE, columns)
        self._fences.append((ids, cursor))

    def check_fences(self) -> None:
        """Refuse the batch if an owner's epoch is stale (another process owns it now)."""
        for ids, cursor in self._fences:
            passed = {row[0] for row in cursor.fetchall()}
            if len(passed) != len(ids):
                raise Fenced(sorted(set(ids) - passed))
        self._fences = []

    def events(self, change: Change) -> ChangeResult:
        """Waits and publishes, each under the lock of its (tenant, type, key): a publish sees
        every wait committed before it, and a wait every event retained before it."""
        cursor = self._cursor
        for execution_id, step_id in change.unwaits:
            cursor.execute(cluster.DELETE_WAIT, (execution_id, step_id))
        for wait in change.waits:
            self._lock(wait.tenant_id, wait.type, wait.key)
            retained = [event_from(row, _as_is) for row in
                        cursor.execute(cluster.RETAINED_FOR, (wait.tenant_id, wait.type, wait.key)).fetchall()]
            taken = next((event for event in retained if event_passes(wait.filter, event.payload, event.type)), None)
            if taken is None:
                cursor.execute(cluster.INSERT_WAIT, (wait.execution_id, wait.step_id, wait.tenant_id, wait.type,
                                                     wait.key, json.dumps(wait.filter)))
                continue
            cursor.execute(_DELETE_EVENT, (taken.id,))  # the step takes it, as a command to its execution
            self._command(wait.execution_id, "event", {"stepId": wait.step_id, "event": to_json(taken)}, handed=False)
        if change.publish is None:
            return ChangeResult()
        return self._publish(change.publish, change.retain_cap, change.retain_bytes_cap)

    def publishes(self, changes: Sequence[Change]) -> list[ChangeResult]:
        """Each publish's lock and waiter lookup are sent first, all in one round trip; then
        each is decided in order, exactly as ``events`` would one after another."""
        conn = self._cursor.connection
        lookups = []
        for change in changes:
            assert change.publish is not None
            lookups.append((change.publish, change.retain_cap, change.retain_bytes_cap,
                            self._waiters(change.publish, conn.cursor())))
        return [self._deliver(event, cap, lookup.fetchall(), size_cap) for event, cap, size_cap, lookup in lookups]

    def _waiters(self, event: Event, cursor: psycopg.Cursor[tuple[Any, ...]]) -> psycopg.Cursor[tuple[Any, ...]]:
        """Take the event key's lock and ask for its waiters (the answer is read later)."""
        self._lock(event.tenant_id, event.type, event.correlation_key)
        return cursor.execute(cluster.WAITERS, (event.tenant_id, event.type, event.correlation_key))

    def _publish(self, event: Event, cap: int, size_cap: int) -> ChangeResult:
        return self._deliver(event, cap, self._waiters(event, self._cursor).fetchall(), size_cap)

    def _deliver(self, event: Event, cap: int, waiters: list[tuple[Any, ...]], size_cap: int) -> ChangeResult:
        cursor = self._cursor
        self._queued = []
        for execution_id, step_id, condition in waiters:
            if event_passes(condition, event.payload, event.type):
                self._command(execution_id, "event", {"stepId": step_id, "event": to_json(event)}, handed=True)
        if self._queued or not cap:
            return ChangeResult(delivered=len(self._queued), commands=tuple(self._queued))
        held = cursor.execute(cluster.RETAINED_COUNT, (event.tenant_id,)).fetchone()
        retry = None if held is None or held[1] is None else max(held[1], 0.0)
        if held is not None and held[0] >= cap:
            raise retained_events_full(event.tenant_id, cap, retry)
        if held is not None and held[2] + json_size(event.payload) > size_cap:
            raise retained_bytes_full(event.tenant_id, size_cap, retry)
        cursor.execute(_UPSERT_EVENT, event_row(event, _as_is))
        return ChangeResult(retained=True)

    def _lock(self, tenant_id: str, event_type: str, key: str) -> None:
        self._cursor.execute(cluster.LOCK_KEY, (json.dumps([tenant_id, event_type, key]),))

    def _command(self, execution_id: str, kind: str, body: Any, *, handed: bool) -> None:
        """A command row; ``handed``: the caller hands it to the actor here if the execution
        runs here (``Cluster.hand``), so this process's listener may skip its announcement."""
        command_id = uuid.uuid4().hex
        self._cursor.execute(cluster.INSERT_COMMAND, (command_id, execution_id, kind, dumps(body), None))
        self._notices.append(f"cmd:{execution_id}:{command_id}:{self._nonce}" if handed
                             else f"cmd:{execution_id}:{command_id}")
        if handed:
            self._queued.append((command_id, execution_id, kind, body))

    def _flush(self, pending: Pending) -> None:
        cursor = self._cursor
        notices = self._notices
        if pending.outcomes:
            cursor.executemany(cluster.RECORD_OUTCOME, [(dumps(outcome), command_id)
                                                        for command_id, outcome in pending.outcomes])
            notices += [f"done:{command_id}" for command_id, _ in pending.outcomes]
        notices += [f"state:{eid}:{pending.versions.get(eid, 0)}" for eid in pending.fences]
        if notices:
            cursor.execute(cluster.NOTIFY, (self._channel, list(dict.fromkeys(notices))))
            self._notices = []
        if pending.headers:
            cursor.executemany(_UPSERT_HEADER, pending.header_rows(_as_is))
        versions = pending.version_rows()
        if versions:
            cursor.executemany(_SET_VERSION, versions)
        if pending.steps:
            cursor.executemany(_UPSERT_STEP, step_rows(pending))
        if pending.logs:
            cursor.executemany(_INSERT_LOG, [log_row(entry, _as_is) for entry in pending.logs])
        if pending.audit:
            cursor.executemany(_INSERT_AUDIT, [audit_row(entry, _as_is) for entry in pending.audit])
        if pending.evidence:
            cursor.executemany(_INSERT_EVIDENCE, [evidence_row(item, _as_is) for item in pending.evidence])
        if pending.consumed:
            cursor.executemany(_DELETE_EVENT, [(event_id,) for event_id in pending.consumed])
        if pending.expired_at is not None:
            cursor.execute(_DELETE_EXPIRED, (_as_is(pending.expired_at),))
        if pending.events:
            cursor.executemany(_UPSERT_EVENT, [event_row(event, _as_is) for event in pending.events.values()])


def _as_is(value: Any) -> Any:
    return value




def _insert_row(change: Change) -> tuple[Any, ...]:
    execution = change.new_execution
    assert execution is not None
    return (*header_row(execution, _as_is), change.dedup, change.owner, 1 if change.owner else 0)


@contextmanager
def _translated(what: str) -> Iterator[None]:
    """Connection failures (and the pool's timeouts) become StoreUnavailable."""
    try:
        yield
    except psycopg.OperationalError as exc:
        raise StoreUnavailable(f"postgres store: {what} failed: {exc}") from exc


def _where(conditions: list[str]) -> str:
    return f"WHERE {' AND '.join(conditions)}" if conditions else ""
