"""``SqlWriter``: the writes of one batch in either SQL dialect, inside the batch's transaction.

``schema.apply_batch`` drives it: starts are inserted at once (their unique indexes decide
whether each is new; a child is then admitted by ``admit`` or taken out again), a runbook
registration takes the next version, and everything else of the batch is written by
``flush`` with one ``executemany`` per table. The statements are
written once, with ``?`` and ``?json`` for ``Dialect.sql``; the writer runs them on the
backend's connection or cursor (``Database``), so SQLite's ``BEGIN IMMEDIATE`` transaction
and PostgreSQL's pipeline stay each backend's own. The PostgreSQL writer
(``pg_writer.py``) adds what only a database shared by several processes needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar, Protocol

from runtime.model import AuditEntry, Execution, Runbook
from runtime.model.errors import Conflict, StoreUnavailable, erased_already
from runtime.model.records import (
    ENDED,
    QUOTA_ACTIVE,
    QUOTA_RATE,
    ROOT_FULL,
    TENANT_FULL,
    Change,
    ChangeResult,
    FanoutCaps,
    Receipt,
)
from runtime.store import audit_sql, quotas, receipts, slots
from runtime.store.audit_chain import AuditPolicy
from runtime.store.dialect import Dialect, marks
from runtime.store.schema import (
    FINISHED_SQL,
    NOT_DEDUPED_SQL,
    Pending,
    Row,
    event_row,
    evidence_row,
    header_row,
    log_row,
    runbook_row,
    same_document,
    step_rows,
)

HEADER_COLUMNS = ("id, tenant_id, runbook_id, runbook_version, status, input_hash, idempotency_key, created_at, "
                  "header, version")
HEADER_MARKS = f"{marks(8)}, ?json, ?"  # (``header_row``)

# A header upsert never breaks the active-hash index: an execution that becomes active again
# (a retried failure) while another one with its input hash is active leaves the index.
UPSERT_HEADER = f"""
INSERT INTO executions ({HEADER_COLUMNS}, deduplicated) VALUES ({HEADER_MARKS}, FALSE)
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
        WHEN NOT executions.deduplicated THEN FALSE
        WHEN excluded.status IN {NOT_DEDUPED_SQL} OR executions.status NOT IN {NOT_DEDUPED_SQL} THEN TRUE
        ELSE NOT EXISTS (
            SELECT 1 FROM executions AS other
            WHERE other.tenant_id = excluded.tenant_id AND other.runbook_id = excluded.runbook_id
              AND other.runbook_version = excluded.runbook_version
              AND other.input_hash = excluded.input_hash
              AND other.deduplicated AND other.status NOT IN {NOT_DEDUPED_SQL})
    END"""

SET_VERSION = "UPDATE executions SET version = ? WHERE id = ?"

UPSERT_STEP = """
INSERT INTO steps (execution_id, step_id, position, state) VALUES (?, ?, ?, ?json)
ON CONFLICT (execution_id, step_id) DO UPDATE SET position = excluded.position, state = excluded.state"""

INSERT_LOG = "INSERT INTO logs (execution_id, step_id, level, at, message, data) VALUES (?, ?, ?, ?, ?, ?json)"

INSERT_EVIDENCE = """
INSERT INTO evidence (id, execution_id, step_id, kind, sha256, data, created_at) VALUES (?, ?, ?, ?, ?, ?json, ?)
ON CONFLICT (id) DO NOTHING"""

UPSERT_EVENT = """
INSERT INTO events (id, tenant_id, type, correlation_key, payload, received_at, expires_at)
VALUES (?, ?, ?, ?, ?json, ?, ?)
ON CONFLICT (id) DO UPDATE SET
    tenant_id = excluded.tenant_id, type = excluded.type, correlation_key = excluded.correlation_key,
    payload = excluded.payload, received_at = excluded.received_at, expires_at = excluded.expires_at"""

DELETE_EVENT = "DELETE FROM events WHERE id = ?"
DELETE_EXPIRED = "DELETE FROM events WHERE expires_at <= ?"

# Two stores registering the same runbook at once: the second insert conflicts and is retried
# (and then finds the first's version, when it holds the same document).
LATEST_RUNBOOK = "SELECT version, CAST(document AS TEXT) FROM runbooks WHERE owner = ? AND id = ? " \
                 "ORDER BY version DESC LIMIT 1"
INSERT_RUNBOOK = """
INSERT INTO runbooks (owner, id, version, document, created_at)
SELECT ?, ?, COALESCE(MAX(version), 0) + 1, ?json, ?
FROM runbooks WHERE owner = ? AND id = ?
ON CONFLICT DO NOTHING
RETURNING version"""

ID_BY_KEY = "SELECT id FROM executions WHERE tenant_id = ? AND idempotency_key = ?"
#: the execution that holds the active-hash index of (tenant, runbook, version, input hash)
ACTIVE = f"""
WHERE tenant_id = ? AND runbook_id = ? AND runbook_version = ? AND input_hash = ?
  AND deduplicated AND status NOT IN {NOT_DEDUPED_SQL}
ORDER BY seq LIMIT 1"""
ID_BY_HASH = f"SELECT id FROM executions {ACTIVE}"
ID = "SELECT id FROM executions WHERE id = ?"

ATTEMPTS = 10  # inserts that lost a race with another store's transaction

# The admission of a child (``FanoutCaps``). The root's row holds the count of executions
# started under it: the UPDATE that raises it checks the cap and that the root still runs, and
# its row lock makes two transactions that want the last place take turns (the second then
# sees the count, or the root's cancel, the first one committed).
ADMIT_UNDER_ROOT = f"""
UPDATE executions SET descendants = descendants + 1
WHERE id = ? AND descendants < ? AND status NOT IN {FINISHED_SQL}
RETURNING descendants"""
RUNNING = f"SELECT id FROM executions WHERE id = ? AND status NOT IN {FINISHED_SQL}"
ACTIVE_CHILDREN = f"""
SELECT COUNT(*) FROM executions WHERE tenant_id = ? AND root_id IS NOT NULL AND status NOT IN {FINISHED_SQL}"""
DELETE_START = "DELETE FROM executions WHERE id = ?"


def _keys_of(change: Change, holder: slots.Holder) -> set[str]:
    """The keys whose slots an end gives back: a step's, or every one a whole execution holds."""
    execution = change.execution
    assert execution is not None
    step_id = holder[1]
    states = [execution.steps[step_id]] if step_id else list(execution.steps.values())
    keys = {state.slot.key for state in states if state.slot is not None}
    if not step_id and execution.concurrency_key is not None:
        keys.add(execution.concurrency_key)
    return keys


def insert_execution(extra: Sequence[str] = ()) -> str:
    """A start's insert: its header, ``deduplicated``, ``root_id`` and the ``extra`` columns;
    nothing is inserted while a unique index holds another execution."""
    columns = ", ".join((HEADER_COLUMNS, "deduplicated", "root_id", *extra))
    return f"""
INSERT INTO executions ({columns}) VALUES ({HEADER_MARKS}, {marks(2 + len(extra))})
ON CONFLICT DO NOTHING"""


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Database(Protocol):
    """What a writer runs statements on: a ``sqlite3.Connection`` or a psycopg cursor."""

    def execute(self, query: str, params: Any = ..., /) -> Cursor: ...

    def executemany(self, query: str, params: Any, /) -> object: ...


class SqlWriter:
    """The writes of one batch, inside its transaction."""

    INSERT_EXECUTION: ClassVar[str] = insert_execution()
    RUNNING: ClassVar[str] = RUNNING  # (PostgreSQL's holds a share lock on the row it finds)
    LOCK_SLOT_KEY: ClassVar[str] = slots.LOCK_KEY  # (PostgreSQL's locks the key's row until the commit)

    def __init__(self, db: Database, dialect: Dialect, audit_policy: AuditPolicy | None = None,
                 known_heads: audit_sql.KnownHeads | None = None) -> None:
        self._db = db
        self._dialect = dialect
        self._sql = dialect.sql
        self._audit_policy = audit_policy or AuditPolicy()
        self._audit: list[AuditEntry] = []  # chained and written by ``seal``, at the batch's end
        self._checkpoint_idle: datetime | None = None  # and then the idle chains' checkpoints
        self._known_heads = known_heads  # chain heads used without reading them (None: read each)
        self.moved: audit_sql.Moved = {}  # what ``seal`` did to each tenant's chain
        self.checkpointed_idle = False  # whether ``seal`` also checkpointed idle chains

    # -- starts
    def insert_executions(self, starts: Sequence[Change]) -> list[str | None]:
        counts = self._insert_all([self._start_row(change) for change in starts])
        return [None if count == 1 else self._resolve(change) for change, count in zip(starts, counts, strict=True)]

    def _start_row(self, change: Change) -> Row:
        execution = change.new_execution
        assert execution is not None
        return (*header_row(execution, self._dialect.stamp), change.dedup, execution.root_execution_id)

    def admit(self, change: Change) -> str | None:
        child, caps = change.new_execution, change.fanout
        assert child is not None and caps is not None
        refused = self._refusal(child, caps)
        if refused is not None:
            self._db.execute(self._sql(DELETE_START), (child.id,))
        return refused

    def _refusal(self, child: Execution, caps: FanoutCaps) -> str | None:
        """Why the child (inserted already, so counted among its tenant's) cannot stay."""
        self._lock_children(child.tenant_id)
        [(active,)] = self._db.execute(self._sql(ACTIVE_CHILDREN), (child.tenant_id,)).fetchall()
        if active > caps.per_tenant:
            return TENANT_FULL
        root, parent = child.root_execution_id, child.parent_execution_id
        if parent != root and not self._db.execute(self._sql(self.RUNNING), (parent,)).fetchall():
            return ENDED
        if self._db.execute(self._sql(ADMIT_UNDER_ROOT), (root, caps.per_root)).fetchall():
            return None
        return ROOT_FULL if self._db.execute(self._sql(self.RUNNING), (root,)).fetchall() else ENDED

    def quota(self, change: Change, later: Sequence[str]) -> tuple[str | None, float | None]:
        """Keep the start just inserted if its tenant's quota allows it, else take it out again:
        (why not, when to try again). ``later``: the starts inserted with it that come after it
        (they are counted when their turn comes)."""
        new, caps = change.new_execution, change.quota
        assert new is not None and caps is not None
        self._lock_quota(new.tenant_id)
        refused: tuple[str | None, float | None] = (None, None)
        if caps.max_active is not None:
            query = quotas.ACTIVE + (f" AND id NOT IN ({marks(len(later))})" if later else "")
            [(active,)] = self._db.execute(self._sql(query), (new.tenant_id, *later)).fetchall()
            if active > caps.max_active:
                refused = (QUOTA_ACTIVE, None)
        if refused[0] is None and caps.rate is not None:
            row = self._db.execute(self._sql(quotas.BUCKET), (new.tenant_id,)).fetchone()
            held, at = (float(row[0]), float(row[1])) if row is not None else (caps.burst, caps.now_s)
            tokens, wait = quotas.take_token(held, at, caps.now_s, caps.rate, caps.burst)
            if wait is None:
                self._db.execute(self._sql(quotas.SET_BUCKET), (new.tenant_id, tokens, caps.now_s))
            else:
                refused = (QUOTA_RATE, wait)
        if refused[0] is not None:
            self._db.execute(self._sql(DELETE_START), (new.id,))
        return refused

    def _lock_quota(self, tenant_id: str) -> None:
        """Hold the tenant's quota until the transaction ends (one process's store: its write
        transaction holds the whole database already)."""

    def _lock_children(self, tenant_id: str) -> None:
        """Hold the tenant's children count until the transaction ends (one process's store:
        its write transaction holds the whole database already)."""

    def _insert_all(self, rows: list[Row]) -> list[int]:
        """Insert each start; how many rows each insert wrote (0: a unique index holds another)."""
        statement = self._sql(self.INSERT_EXECUTION)
        return [self._db.execute(statement, row).rowcount for row in rows]

    def _resolve(self, change: Change) -> str | None:
        """A start whose insert found its unique key taken: the execution that holds it."""
        execution = change.new_execution
        assert execution is not None
        for _ in range(ATTEMPTS):
            found, existing = self._existing(execution, change.dedup)
            if found:
                return existing
            # it left the index meanwhile (another store's commit): again
            if self._db.execute(self._sql(self.INSERT_EXECUTION), self._start_row(change)).rowcount == 1:
                return None
        # the execution holding the index kept changing under us: let the batch be retried
        raise StoreUnavailable(f"execution {execution.id} was neither inserted nor found; retry")

    def _existing(self, execution: Execution, dedup: bool) -> tuple[bool, str | None]:
        """The execution that holds a unique index (None: this very one, a replayed batch).
        Not found: it left the index after our insert had seen it (another store's commit)."""
        lookups: list[tuple[str, tuple[Any, ...]]] = []
        if execution.idempotency_key is not None:
            lookups.append((ID_BY_KEY, (execution.tenant_id, execution.idempotency_key)))
        if dedup:
            lookups.append((ID_BY_HASH, (execution.tenant_id, execution.runbook_id, execution.runbook_version,
                                         execution.input_hash)))
        lookups.append((ID, (execution.id,)))
        for query, params in lookups:
            row = self._db.execute(self._sql(query), params).fetchone()
            if row is not None:
                return True, (None if row[0] == execution.id else str(row[0]))
        return False, None

    # -- runbooks, events
    def add_runbook(self, runbook: Runbook) -> tuple[int, bool]:
        owner, id_, document, created_at = runbook_row(runbook, datetime.now(UTC), self._dialect.stamp)
        if self._dialect.lock_key is not None:  # another process registering this runbook waits for this one:
            # else it could read no identical latest version, then see this one's as the MAX it adds 1 to
            self._db.execute(self._sql(self._dialect.lock_key), (f"runbook {owner!r} {id_!r}",))
        for _ in range(ATTEMPTS):
            latest = self._db.execute(self._sql(LATEST_RUNBOOK), (owner, id_)).fetchone()
            if latest is not None and same_document(runbook, latest[1]):
                return int(latest[0]), True  # the same document again: its version, nothing written
            row = self._db.execute(self._sql(INSERT_RUNBOOK), (owner, id_, document, created_at, owner, id_)).fetchone()
            if row is not None:
                return int(row[0]), False
        raise StoreUnavailable(f"runbook {runbook.id}: no version could be assigned; retry")

    def add_receipt(self, receipt: Receipt) -> bool:
        row = receipts.receipt_row(receipt, self._dialect)
        return self._db.execute(self._sql(receipts.INSERT), row).fetchone() is not None

    def events(self, change: Change) -> ChangeResult:
        raise NotImplementedError(f"a {self._dialect.name} store is one process's: its events go through the "
                                  "runtime's router")

    def publishes(self, changes: Sequence[Change]) -> list[ChangeResult]:
        return [self.events(change) for change in changes]

    # -- concurrency keys
    def slots(self, changes: Sequence[Change], results: list[ChangeResult]) -> list[ChangeResult]:
        """Queue the batch's claims of a slot, give back the slots of what it ends, and give the
        free slots of each key touched to the heads of its queue (under the key's lock, keys in
        one order: two batches never wait on each other in a circle)."""
        queued, ended = slots.claims(changes, results), slots.releases(changes)
        if not queued and not ended:
            return results
        db, sql = self._db, self._sql
        keys = {(claim.tenant_id, claim.key) for claim in queued}
        keys |= {(tenant, key) for index, tenant, holder in ended for key in _keys_of(changes[index], holder)}
        for key in sorted(keys):
            db.execute(sql(slots.ADD_KEY), key)
            db.execute(sql(self.LOCK_SLOT_KEY), key).fetchall()
        limits: dict[slots.Key, tuple[int, int]] = {}  # key -> (its limit, the change that touched it)
        for claim in queued:
            db.execute(sql(slots.ENQUEUE), (*claim.holder, claim.tenant_id, claim.key, claim.limit,
                                            claim.tenant_id, claim.key))
            limits.setdefault((claim.tenant_id, claim.key), (claim.limit, claim.index))
        for index, _, (execution_id, step_id) in ended:
            if step_id:
                rows = db.execute(sql(slots.RELEASE_STEP), (execution_id, step_id)).fetchall()
            else:
                rows = db.execute(sql(slots.RELEASE_EXECUTION), (execution_id,)).fetchall()
            for tenant, key, limit in rows:
                limits.setdefault((str(tenant), str(key)), (int(limit), index))
        admitted: dict[slots.Holder, int] = {}
        for key in sorted(limits):
            limit, index = limits[key]
            [(holders,)] = db.execute(sql(slots.HOLDERS), key).fetchall()
            if holders >= limit:
                continue
            heads = [(str(row[0]), str(row[1])) for row in
                     db.execute(sql(slots.HEADS), (*key, limit - holders)).fetchall()]
            if heads:
                db.executemany(sql(slots.HOLD), heads)
            admitted.update(dict.fromkeys(heads, index))
        return slots.with_admitted(changes, results, admitted)

    # -- the audit ledger
    def seal(self) -> None:
        """Chain the batch's audit entries and write them: the last writes of the transaction,
        so each tenant's head is locked for as short a time as can be."""
        if self._audit:
            known = self._known_heads.trusted() if self._known_heads is not None else None
            self.moved.update(audit_sql.write_chained(self._db, self._dialect, self._audit, self._audit_policy, known))
            self._audit = []
        if self._checkpoint_idle is not None:
            audit_sql.checkpoint_idle(self._db, self._dialect, self._checkpoint_idle, self._audit_policy)
            self._checkpoint_idle = None
            self.checkpointed_idle = True

    def _erase(self, erase: Sequence[tuple[str, int]]) -> None:
        """Erase payloads, each once: a payload erased already refuses the whole change."""
        for row in audit_sql.erase_rows(erase):
            if not self._db.execute(self._sql(audit_sql.ERASE), row).fetchall():
                raise erased_already(row[2])

    # -- the rest, one executemany per table
    def flush(self, pending: Pending) -> None:
        db, sql, stamp = self._db, self._sql, self._dialect.stamp
        if pending.headers:
            db.executemany(sql(UPSERT_HEADER), pending.header_rows(stamp))
        versions = pending.version_rows()
        if versions:
            db.executemany(sql(SET_VERSION), versions)
        if pending.steps:
            db.executemany(sql(UPSERT_STEP), step_rows(pending))
        if pending.logs:
            db.executemany(sql(INSERT_LOG), [log_row(entry, stamp) for entry in pending.logs])
        self._audit += pending.audit
        if pending.checkpoint_idle is not None:
            self._checkpoint_idle = pending.checkpoint_idle
        if pending.erase:
            self._erase(pending.erase)
        if pending.evidence:
            db.executemany(sql(INSERT_EVIDENCE), [evidence_row(item, stamp) for item in pending.evidence])
        if pending.consumed:
            db.executemany(sql(DELETE_EVENT), [(event_id,) for event_id in pending.consumed])
        if pending.expired_at is not None:
            db.execute(sql(DELETE_EXPIRED), (stamp(pending.expired_at),))
        if pending.events:
            db.executemany(sql(UPSERT_EVENT), [event_row(event, stamp) for event in pending.events.values()])
        if pending.taken:
            held = [r.delivery_id for r in pending.taken if not self.add_receipt(r)]
            if held:  # (the whole transaction rolls back)
                raise Conflict(f"messages {', '.join(held)} were taken before: nothing of this change is written")
        if pending.settled:
            db.executemany(sql(receipts.SETTLE), list(pending.settled))
        if pending.receipts_expired_at is not None:
            db.execute(sql(receipts.EXPIRE), (stamp(pending.receipts_expired_at),))
        if pending.lifecycle:
            db.executemany(sql(receipts.INSERT_LIFECYCLE), receipts.lifecycle_rows(pending.lifecycle))
        if pending.lifecycle_done:
            db.executemany(sql(receipts.LIFECYCLE_DONE), list(pending.lifecycle_done.items()))
