"""The upgrade to the audit ledger, on SQLite and PostgreSQL: entries written before it stay
as they were, outside the chain, and each tenant's chain starts with its first entry after
it (``prevHash`` 64 zeros). On PostgreSQL the migration can run again harmlessly."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from runtime.api.audit_export import AuditRange, export_from_store
from runtime.model import AuditEntry
from runtime.model.records import Change
from runtime.security.audit_verify import verify_bundle
from runtime.store import PostgresStore, SqliteStore, postgres, sqlite
from runtime.store.base import Store

T0 = datetime(2025, 6, 1, tzinfo=UTC)
OLD = ("INSERT INTO audit (execution_id, at, actor, action, data) "
       "VALUES ('ex-old', ?, 'olga', 'execution.started', '{\"old\": true}')")


def ledger_migration(migrations: tuple[tuple[str, ...], ...]) -> int:
    """The index of the migration that brings the ledger in (it creates ``audit_heads``)."""
    return next(n for n, statements in enumerate(migrations) if any("audit_heads" in s for s in statements))


def upgrade_and_check(old: Store, new: Store, write_old: Any, tmp_path: Path) -> None:
    old.open()
    old.close()
    write_old()
    new.open()
    try:
        new.commit([Change(audit=(AuditEntry("ex-new", T0, "nina", "execution.started", tenant_id="default"),))])
        [before] = new.audit("ex-old")
        assert (before.actor, before.seq, before.hash) == ("olga", None, None)  # kept, not chained
        [after] = new.audit("ex-new")
        assert (after.seq, after.prev_hash) == (1, "0" * 64)
    finally:
        new.close()
    out = tmp_path / "bundle"
    export_from_store(new, "default", AuditRange(), out, None)
    assert verify_bundle(out).line() == "ok 1 entries"


def test_sqlite_upgrade_starts_each_chain_after_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "old.db"
    with monkeypatch.context() as patch:
        patch.setattr(sqlite, "MIGRATIONS", sqlite.MIGRATIONS[:ledger_migration(sqlite.MIGRATIONS)])
        old = SqliteStore(path)
        old.open()
        old.close()

    def write_old() -> None:
        with sqlite3.connect(path) as conn:
            conn.execute(OLD, (sqlite.SQLITE.stamp(T0),))

    upgrade_and_check(SqliteStore(path), SqliteStore(path), write_old, tmp_path)


@pytest.mark.postgres
def test_postgres_upgrade_starts_each_chain_after_it_and_runs_again_harmlessly(
        postgres_dsn: str, schema: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def make() -> PostgresStore:
        return PostgresStore(postgres_dsn, pool_max=1, schema=schema, pool_min=0)

    with monkeypatch.context() as patch:
        patch.setattr(postgres, "MIGRATIONS", postgres.MIGRATIONS[:ledger_migration(postgres.MIGRATIONS)])
        old = make()
        old.open()
        old.close()

    def run(query: str, params: tuple[Any, ...] = ()) -> None:
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
            conn.execute(query.replace("?", "%s"), params) if params else conn.execute(query)

    upgrade_and_check(make(), make(), lambda: run(OLD, (T0,)), tmp_path)
    for statement in postgres.MIGRATIONS[ledger_migration(postgres.MIGRATIONS)]:  # replayed: nothing breaks
        run(statement)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        run("DELETE FROM audit WHERE execution_id = 'ex-old'")
