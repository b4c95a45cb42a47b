"""The upgrade to trigger state per tenant, on SQLite and PostgreSQL: a store whose shared
triggers were switched for every tenant at once is migrated so that the switch belongs to the
tenant that made it (the last switch in the audit), the last run to the tenant of the
execution that ran, and the switch's audit entries to that tenant's key."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from runtime.model import TriggerState
from runtime.store import PostgresStore, SqliteStore, postgres, sqlite
from runtime.store.trigger_states import PER_TENANT_MIGRATION
from runtime.triggers.scheduler import audit_key

T1, T2, T3 = (datetime(2025, 1, 1, hour, tzinfo=UTC) for hour in (1, 2, 3))
Run = Callable[[str, tuple[Any, ...]], None]

OLD_TRIGGERS = [("", "shared", "on-alert", False, T1, "ex-a"),  # B switched it off for everyone
                ("", "shared", "hourly", True, T2, "ex-d"),  # ran in 'default'
                ("t1", "own", "cron", False, T3, "ex-t1")]


def before_per_tenant(migrations: tuple[tuple[str, ...], ...]) -> tuple[tuple[str, ...], ...]:
    """The migrations up to the one that makes trigger state per tenant."""
    index = next(i for i, statements in enumerate(migrations) if statements[1:2] == PER_TENANT_MIGRATION[1:2])
    return migrations[:index]


def write_old_rows(run: Run, stamp: Callable[[datetime], Any]) -> None:
    for row in OLD_TRIGGERS:
        run("INSERT INTO trigger_states VALUES (?, ?, ?, ?, ?, ?)", (*row[:4], stamp(row[4]), row[5]))
    for execution_id, tenant in (("ex-a", "a"), ("ex-d", "default"), ("ex-t1", "t1")):
        run("INSERT INTO executions (id, tenant_id, runbook_id, runbook_version, status, input_hash, deduplicated, "
            "created_at, header) VALUES (?, ?, 'shared', 1, 'completed', 'h', FALSE, ?, '{}')",
            (execution_id, tenant, stamp(T1)))
    for tenant, actor in (("a", "ann"), ("b", "bert")):  # A switched it off and on, B off last
        run("INSERT INTO audit (execution_id, at, actor, action, reason, data) VALUES (?, ?, ?, ?, ?, ?)",
            ("trigger::shared:on-alert", stamp(T1), actor, "trigger.disabled", "noisy",
             f'{{"runbookId": "shared", "triggerId": "on-alert", "tenantId": "{tenant}"}}'))


def check_migrated(store: Any) -> None:
    states = sorted(store.trigger_states(), key=lambda s: (s.tenant_id, s.trigger_id))
    assert states == [
        TriggerState("a", None, "shared", "on-alert", True, T1, "ex-a"),  # A's run is A's; on for A
        TriggerState("b", None, "shared", "on-alert", False, None, None),  # B's switch is B's
        TriggerState("default", None, "shared", "hourly", True, T2, "ex-d"),
        TriggerState("t1", "t1", "own", "cron", False, T3, "ex-t1"),
    ]
    assert [e.actor for e in store.audit(audit_key("a", None, "shared", "on-alert"))] == ["ann"]
    assert [e.actor for e in store.audit(audit_key("b", None, "shared", "on-alert"))] == ["bert"]
    assert store.audit("trigger::shared:on-alert") == []


def test_sqlite_store_migrates_shared_trigger_state_to_each_tenant(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "old.db"
    with monkeypatch.context() as patch:
        patch.setattr(sqlite, "MIGRATIONS", before_per_tenant(sqlite.MIGRATIONS))
        old = SqliteStore(path)
        old.open()
        old.close()
    with sqlite3.connect(path) as conn:
        write_old_rows(lambda query, params: conn.execute(query, params) and None, sqlite.SQLITE.stamp)
    store = SqliteStore(path)
    store.open()
    try:
        check_migrated(store)
    finally:
        store.close()


@pytest.mark.postgres
def test_postgres_store_migrates_shared_trigger_state_to_each_tenant(postgres_dsn: str, schema: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as patch:
        patch.setattr(postgres, "MIGRATIONS", before_per_tenant(postgres.MIGRATIONS))
        old = PostgresStore(postgres_dsn, pool_max=1, schema=schema, pool_min=0)
        old.open()
        old.close()
    with pg_schema(postgres_dsn, schema) as conn:
        write_old_rows(lambda query, params: conn.execute(query.replace("?", "%s"), params) and None, lambda t: t)
    store = PostgresStore(postgres_dsn, pool_max=1, schema=schema, pool_min=0)
    store.open()
    try:
        check_migrated(store)
    finally:
        store.close()


@contextmanager
def pg_schema(dsn: str, schema: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        yield conn
