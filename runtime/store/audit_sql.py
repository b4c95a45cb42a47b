"""The audit ledger in SQL, for both dialects: its tables and append-only triggers, the
chained insert of a batch's entries, erasure of a payload, and the reads of an export.

Entries stay in ``audit`` (``seq`` there is the table's own order); the ledger adds the
tenant, its ``chain_seq`` and the hashes. Entries written before the ledger existed keep
``chain_seq`` NULL: the chain of each tenant starts (``prevHash`` 64 zeros) with its first
entry written after the upgrade, and an export holds chained entries only.

``write_chained`` runs at the end of a batch's transaction: per tenant (in sorted order, so
two transactions lock heads in the same order) it takes the head under its row lock (or,
on PostgreSQL, the head this process left, when no other process wrote the tenant since:
``KnownHeads``), chains the entries, inserts them, moves the head and writes a checkpoint
when one is due.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from runtime.model import AuditEntry
from runtime.model.records import AuditCheckpoint, AuditSlice
from runtime.model.wire import dumps_data, format_time
from runtime.security.audit_verify import GENESIS
from runtime.store.audit_chain import (
    AuditPolicy,
    Head,
    Prepared,
    link,
    make_checkpoint,
    prepare,
    tenant_of,
)
from runtime.store.dialect import Dialect
from runtime.store.schema import Row, loads

#: the migration that adds the ledger (``{time}``: the dialect's time type)
LEDGER_MIGRATION = (
    "ALTER TABLE audit ADD COLUMN IF NOT EXISTS tenant TEXT",
    "ALTER TABLE audit ADD COLUMN IF NOT EXISTS chain_seq BIGINT",
    "ALTER TABLE audit ADD COLUMN IF NOT EXISTS prev_hash TEXT",
    "ALTER TABLE audit ADD COLUMN IF NOT EXISTS hash TEXT",
    "ALTER TABLE audit ADD COLUMN IF NOT EXISTS data_sha256 TEXT",
    "ALTER TABLE audit ADD COLUMN IF NOT EXISTS erased BOOLEAN NOT NULL DEFAULT FALSE",
    "CREATE UNIQUE INDEX IF NOT EXISTS audit_chain ON audit (tenant, chain_seq)",
    """CREATE TABLE IF NOT EXISTS audit_heads (
        tenant TEXT PRIMARY KEY,
        seq BIGINT NOT NULL,
        hash TEXT NOT NULL,
        checkpoint_seq BIGINT NOT NULL,
        checkpoint_at {time}
    )""",
    """CREATE TABLE IF NOT EXISTS audit_checkpoints (
        tenant TEXT NOT NULL,
        seq BIGINT NOT NULL,
        hash TEXT NOT NULL,
        at {time} NOT NULL,
        key_id TEXT,
        signature TEXT,
        PRIMARY KEY (tenant, seq)
    )""",
)


def ledger_migration(time: str, *, add_column_if_not_exists: bool = True) -> tuple[str, ...]:
    """The statements in a dialect (SQLite has no ``ADD COLUMN IF NOT EXISTS``: the runner
    applies a migration once, and only PostgreSQL's upgrade test replays them)."""
    statements = tuple(statement.format(time=time) for statement in LEDGER_MIGRATION)
    if add_column_if_not_exists:
        return statements
    return tuple(statement.replace(" IF NOT EXISTS", "", 1) if statement.startswith("ALTER") else statement
                 for statement in statements)


#: PostgreSQL: the audit table is append-only. UPDATE, DELETE and TRUNCATE are refused, but
#: for one update: a payload's erasure (``ERASE`` after ``ALLOW_ERASURE``, in the transaction
#: that also audits it), which sets ``data`` to null and ``erased`` and changes nothing else.
PG_APPEND_ONLY = (
    """CREATE OR REPLACE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'UPDATE' AND current_setting('runbooks.audit_erasure', true) = 'on'
           AND NEW.erased AND NEW.data::text = 'null'
           AND (NEW.seq, NEW.execution_id, NEW.at, NEW.actor, NEW.action, NEW.step_id, NEW.legal_basis, NEW.reason,
                NEW.tenant, NEW.chain_seq, NEW.prev_hash, NEW.hash, NEW.data_sha256)
               IS NOT DISTINCT FROM
               (OLD.seq, OLD.execution_id, OLD.at, OLD.actor, OLD.action, OLD.step_id, OLD.legal_basis, OLD.reason,
                OLD.tenant, OLD.chain_seq, OLD.prev_hash, OLD.hash, OLD.data_sha256) THEN
            RETURN NEW;
        END IF;
        RAISE EXCEPTION 'the audit table is append-only: % refused (erase a payload with the store''s erasure)',
            TG_OP USING ERRCODE = 'insufficient_privilege';
    END $$""",
    "DROP TRIGGER IF EXISTS audit_append_only ON audit",
    """CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit
       FOR EACH ROW EXECUTE FUNCTION audit_append_only()""",
    "DROP TRIGGER IF EXISTS audit_no_truncate ON audit",
    """CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
       FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only()""",
)
#: SQLite: the audit table is append-only. UPDATE and DELETE are refused, but for the one
#: update an erasure makes (``ERASE``, in the transaction that also audits it): ``data`` set
#: to JSON null and ``erased`` set, every other column as it was, of an entry the transaction
#: named in ``audit_erasing`` (``SQLITE_ALLOW_ERASURE`` before, ``SQLITE_END_ERASURE`` after:
#: SQLite has no session setting, so a table empty outside that statement stands in for it).
_COLUMNS = ("seq", "execution_id", "at", "actor", "action", "step_id", "legal_basis", "reason",
            "tenant", "chain_seq", "prev_hash", "hash", "data_sha256")
SQLITE_TRIGGERS = (
    f"""CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
    WHEN NOT (NEW.erased AND NEW.data = 'null' AND {" AND ".join(f"NEW.{c} IS OLD.{c}" for c in _COLUMNS)}
              AND EXISTS (SELECT 1 FROM audit_erasing AS e WHERE e.tenant = OLD.tenant AND e.seq = OLD.chain_seq))
    BEGIN
        SELECT RAISE(ABORT, 'the audit table is append-only: UPDATE refused (erase a payload with the store''s erasure)');
    END""",
    """CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
    BEGIN
        SELECT RAISE(ABORT, 'the audit table is append-only: DELETE refused');
    END""",
)
SQLITE_APPEND_ONLY = (
    "CREATE TABLE audit_erasing (tenant TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (tenant, seq))",
    *SQLITE_TRIGGERS,
)
SQLITE_ALLOW_ERASURE = "INSERT OR IGNORE INTO audit_erasing (tenant, seq) VALUES (?, ?)"
SQLITE_END_ERASURE = "DELETE FROM audit_erasing"
ALLOW_ERASURE = "SELECT set_config('runbooks.audit_erasure', 'on', true)"
END_ERASURE = "SELECT set_config('runbooks.audit_erasure', 'off', true)"

CHAIN_INDEX = "audit_chain"  # (the unique index on (tenant, chain_seq) the ledger's migration makes)
LOCK_HEAD = f"""
INSERT INTO audit_heads (tenant, seq, hash, checkpoint_seq, checkpoint_at) VALUES (?, 0, '{GENESIS}', 0, NULL)
ON CONFLICT (tenant) DO UPDATE SET tenant = excluded.tenant
RETURNING seq, hash, checkpoint_seq, checkpoint_at"""
MOVE_HEAD = "UPDATE audit_heads SET seq = ?, hash = ?, checkpoint_seq = ?, checkpoint_at = ? WHERE tenant = ?"
INSERT_CHAINED = """
INSERT INTO audit (execution_id, at, actor, action, step_id, legal_basis, reason, data,
                   tenant, chain_seq, prev_hash, hash, data_sha256)
VALUES (?, ?, ?, ?, ?, ?, ?, ?json, ?, ?, ?, ?, ?)"""
INSERT_CHECKPOINT = """
INSERT INTO audit_checkpoints (tenant, seq, hash, at, key_id, signature) VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (tenant, seq) DO NOTHING"""
#: (an entry erased already is not matched: the erasure is refused, even when another process
#: erased it a moment after this one's check)
ERASE = "UPDATE audit SET data = ?json, erased = TRUE WHERE tenant = ? AND chain_seq = ? AND NOT erased RETURNING 1"

ENTRY_COLUMNS = ("execution_id, at, actor, action, step_id, legal_basis, reason, data, "
                 "tenant, chain_seq, prev_hash, hash, data_sha256, erased")
RANGE = f"""
SELECT {ENTRY_COLUMNS} FROM audit WHERE tenant = ? AND chain_seq >= ? AND chain_seq <= ? ORDER BY chain_seq"""
HASH_AT = "SELECT hash FROM audit WHERE tenant = ? AND chain_seq = ?"
CHECKPOINTS = """
SELECT tenant, seq, hash, at, key_id, signature FROM audit_checkpoints
WHERE tenant = ? AND seq >= ? AND seq <= ? ORDER BY seq"""
IDLE = "SELECT tenant FROM audit_heads WHERE seq > checkpoint_seq AND checkpoint_at <= ? ORDER BY tenant"
SEQ_SINCE = "SELECT MIN(chain_seq) FROM audit WHERE tenant = ? AND at >= ?"
SEQ_UNTIL = "SELECT MAX(chain_seq) FROM audit WHERE tenant = ? AND at <= ?"
LAST = 2**62  # "no upper bound" as a seq


#: what a batch did to each tenant's chain: the head it read under the head's lock (None:
#: it used a head it knew, see ``KnownHeads``) and the head it left
Moved = dict[str, tuple[Head | None, Head]]


def write_chained(db: Any, dialect: Dialect, entries: Sequence[AuditEntry], policy: AuditPolicy,
                  known: Mapping[str, Head] | None = None) -> Moved:
    """Chain and insert a batch's entries (``db``: the batch's connection or cursor). A tenant
    whose head is in ``known`` is chained after it without reading it first; if another
    process moved that head meanwhile, the insert of its next ``seq`` breaks the unique index
    ``audit_chain`` and the whole batch is refused (the caller writes it again, reading)."""
    sql, stamp = dialect.sql, dialect.stamp
    text_times = stamp is format_time  # (SQLite: a time is stored as the text the chain hashes)
    known = known or {}
    by_tenant: dict[str, list[AuditEntry]] = {}
    for entry in entries:
        by_tenant.setdefault(tenant_of(entry), []).append(entry)

    def base(entry: AuditEntry, at_text: str) -> Row:
        return (entry.execution_id, at_text if text_times else stamp(entry.at), entry.actor, entry.action,
                entry.step_id, entry.legal_basis, entry.reason, dumps_data(entry.data))

    def row(p: Prepared, tenant: str, seq: int, prev: str, hash_: str) -> Row:
        return (*p.extra, tenant, seq, prev, hash_, p.data_sha)

    # every entry made ready before the first head is read (and, on PostgreSQL, locked)
    ready = {tenant: prepare(tenant, by_tenant[tenant], base) for tenant in sorted(by_tenant)}
    moved: Moved = {}
    for tenant, prepared in ready.items():
        read = None
        head = known.get(tenant)
        if head is None:
            seq, hash_, checkpoint_seq, checkpoint_at = db.execute(sql(LOCK_HEAD), (tenant,)).fetchone()
            head = read = Head(int(seq), str(hash_), int(checkpoint_seq),
                               dialect.time(checkpoint_at) if checkpoint_at is not None else None)
        rows, new_head, checkpoints = link(tenant, head, prepared, policy, row)
        checkpoint_at = stamp(new_head.checkpoint_at) if new_head.checkpoint_at is not None else None
        # (the head first: a known head is locked here, before the rows that follow it)
        db.execute(sql(MOVE_HEAD), (new_head.seq, new_head.hash, new_head.checkpoint_seq, checkpoint_at, tenant))
        db.executemany(sql(INSERT_CHAINED), rows)
        if checkpoints:
            db.executemany(sql(INSERT_CHECKPOINT), [(tenant, c.seq, c.hash, stamp(c.at), c.key_id, c.signature)
                                                    for c in checkpoints])
        moved[tenant] = (read, new_head)
    return moved


class KnownHeads:
    """The chain heads this process's batches left, per tenant, and which of them are still
    the database's as far as it can tell: a head is trusted once a batch, reading it under its
    lock, found it where this process had left it (nobody else wrote the tenant in between).

    A trusted head is chained after without being read: on PostgreSQL that read is a round
    trip in the middle of the batch, made while holding the head's lock. If another process
    wrote the tenant meanwhile, the unique index ``audit_chain`` refuses the batch: every head
    is forgotten (``forget``) and the batch is written again, reading them. A batch that fails
    for any reason, or checkpoints idle chains (which moves their heads too), forgets them."""

    LIMIT = 10_000  # tenants remembered (past it, they are forgotten and read again)

    def __init__(self) -> None:
        self._heads: dict[str, Head] = {}
        self._trusted: set[str] = set()

    def trusted(self) -> dict[str, Head]:
        return {tenant: self._heads[tenant] for tenant in self._trusted}

    def committed(self, moved: Moved) -> None:
        """A batch that moved these heads committed."""
        if len(self._heads) > self.LIMIT:
            self.forget()
        for tenant, (read, new) in moved.items():
            if read is not None:
                if self._heads.get(tenant) == read:
                    self._trusted.add(tenant)
                else:
                    self._trusted.discard(tenant)
            self._heads[tenant] = new

    def forget(self) -> None:
        """Read every head again (a batch was refused, or its outcome is unknown)."""
        self._heads.clear()
        self._trusted.clear()


def checkpoint_idle(db: Any, dialect: Dialect, at: datetime, policy: AuditPolicy) -> None:
    """A checkpoint at the head of every chain with entries after its last checkpoint, when
    ``checkpoint_ms`` passed since then without a new entry (so the tail of a quiet tenant is
    covered too)."""
    sql, stamp = dialect.sql, dialect.stamp
    due = stamp(at - timedelta(milliseconds=policy.checkpoint_ms))
    for (tenant,) in db.execute(sql(IDLE), (due,)).fetchall():
        seq, hash_, checkpoint_seq, _ = db.execute(sql(LOCK_HEAD), (tenant,)).fetchone()
        if int(seq) <= int(checkpoint_seq):
            continue  # (another process took it meanwhile)
        c = make_checkpoint(tenant, int(seq), str(hash_), at, policy.signer)
        db.execute(sql(INSERT_CHECKPOINT), (tenant, c.seq, c.hash, stamp(c.at), c.key_id, c.signature))
        db.execute(sql(MOVE_HEAD), (c.seq, c.hash, c.seq, stamp(at), tenant))


def erase_rows(erase: Sequence[tuple[str, int]]) -> list[Row]:
    return [("null", tenant, seq) for tenant, seq in erase]


def entry_from(row: Row, dialect: Dialect) -> AuditEntry:
    (execution_id, at, actor, action, step_id, legal_basis, reason, data,
     tenant, chain_seq, prev_hash, hash_, data_sha256, erased) = row
    return AuditEntry(execution_id, dialect.time(at), actor, action, step_id, legal_basis, reason, loads(data),
                      tenant_id=tenant, seq=chain_seq, prev_hash=prev_hash, hash=hash_, data_sha256=data_sha256,
                      erased=bool(erased))


def checkpoint_from(row: Row, dialect: Dialect) -> AuditCheckpoint:
    tenant, seq, hash_, at, key_id, signature = row
    return AuditCheckpoint(tenant, int(seq), hash_, dialect.time(at), key_id, signature)


Query = Callable[[str, Sequence[Any]], list[Row]]


def read_slice(query: Query, dialect: Dialect, tenant: str, from_seq: int, to_seq: int | None) -> AuditSlice:
    """The chained entries of ``tenant`` from ``from_seq`` to ``to_seq`` (None: the end), the
    hash before them and the checkpoints from ``from_seq`` on (to ``to_seq``). ``query`` runs
    a statement (``?`` marks). The checkpoints are read first: entries only grow, so none of
    them names a seq beyond the entries read."""
    upper = LAST if to_seq is None else to_seq
    checkpoints = tuple(checkpoint_from(row, dialect) for row in query(CHECKPOINTS, (tenant, from_seq, upper)))
    entries = tuple(entry_from(row, dialect) for row in query(RANGE, (tenant, from_seq, upper)))
    prev = GENESIS
    if from_seq > 1:
        found = query(HASH_AT, (tenant, from_seq - 1))
        prev = str(found[0][0]) if found else GENESIS
    return AuditSlice(tenant, entries, prev, checkpoints)


def seq_bounds(query: Query, tenant: str, since: Any, until: Any) -> tuple[int | None, int | None]:
    """The first seq at or after ``since`` and the last at or before ``until`` (stamped times;
    None: no bound)."""
    first = query(SEQ_SINCE, (tenant, since))[0][0] if since is not None else None
    last = query(SEQ_UNTIL, (tenant, until))[0][0] if until is not None else None
    return first, last
