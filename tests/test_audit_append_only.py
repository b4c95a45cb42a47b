"""The SQLite audit table is append-only: its triggers refuse UPDATE and DELETE made on the
file directly (as with ``sqlite3``), an erasure made by hand included, and let through only
the engine's erasure (the payload nulled, nothing else changed, in the transaction that
audits it); a database made before the triggers gets them on upgrade, its entries kept."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio

from runtime import open_runtime
from runtime.store import SqliteStore, sqlite
from runtime.store.audit_sql import SQLITE_APPEND_ONLY


async def echo(ctx: Any) -> Any:
    """A custom step that answers its config."""
    return ctx.config


TWO_STEPS = {"id": "two", "steps": [{"id": "a", "type": "echo", "config": {"n": 1}},
                                    {"id": "b", "type": "echo", "config": {"n": 2}, "dependsOn": ["a"]}]}
REFUSED = (
    "UPDATE audit SET actor = 'mallory' WHERE chain_seq = 2",
    "UPDATE audit SET data = '{\"n\": 99}' WHERE chain_seq = 2",
    "UPDATE audit SET chain_seq = chain_seq + 100",
    "UPDATE audit SET hash = prev_hash WHERE chain_seq = 3",
    "UPDATE audit SET data = 'null', erased = TRUE, reason = 'hidden' WHERE chain_seq = 4",  # more than an erasure
    "UPDATE audit SET erased = TRUE WHERE chain_seq = 4",  # marked erased, payload kept
    "UPDATE audit SET data = 'null' WHERE chain_seq = 4",  # payload gone, not marked erased
    "UPDATE audit SET data = 'null', erased = TRUE WHERE chain_seq = 4",  # an erasure, but not the engine's
    "DELETE FROM audit WHERE chain_seq = 3",
    "DELETE FROM audit",
)


async def run_twice(path: Path) -> None:
    async with open_runtime(f"sqlite:///{path}") as rt:
        rt.register_executor("echo", echo)
        await rt.register_runbook(TWO_STEPS, tenant_id="t1")
        for _ in range(2):
            assert (await rt.wait((await rt.start("two", context={"tenantId": "t1"}, force=True)).id)).status == "completed"


def rows(path: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT * FROM audit ORDER BY seq").fetchall()


def triggers(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger' ORDER BY name")]


def assert_refused(path: Path) -> None:
    before = rows(path)
    assert before
    with sqlite3.connect(path) as conn:
        for statement in REFUSED:
            with pytest.raises(sqlite3.IntegrityError, match="the audit table is append-only"):
                conn.execute(statement)
    assert rows(path) == before


def erase_and_verify(path: Path, seq: int) -> None:
    async def erase() -> None:
        async with open_runtime(f"sqlite:///{path}") as rt:
            erased = await rt.erase_audit_data("t1", seq, actor="dpo", reason="GDPR art. 17")
            assert erased.erased and erased.data is None
            verdict = await rt.verify_audit("t1")
            assert verdict.ok, verdict.line()

    trio.run(erase)
    with sqlite3.connect(path) as conn:  # what let the erasure through lasted as long as its statement
        assert conn.execute("SELECT COUNT(*) FROM audit_erasing").fetchall() == [(0,)]


def test_sqlite_refuses_update_and_delete_of_audit_entries_but_not_an_erasure(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    trio.run(run_twice, path)
    assert_refused(path)
    erase_and_verify(path, 1)
    assert_refused(path)  # an erased entry is as protected as any other
    # the triggers stop the application and casual edits; whoever can write the file can drop them
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TRIGGER audit_no_update")
        conn.execute("UPDATE audit SET actor = 'mallory' WHERE chain_seq = 2")

    async def verify() -> None:
        async with open_runtime(f"sqlite:///{path}") as rt:
            verdict = await rt.verify_audit("t1")
            assert (verdict.seq, verdict.reason) == (2, "edited")

    trio.run(verify)


@pytest.mark.parametrize("before", ["triggers", "ledger"])
def test_an_upgrade_adds_the_triggers_and_keeps_the_entries(before: str, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """From a database made just before the triggers (a chained ledger), and from one made before
    the ledger existed (whose upgrade rewrites audit rows before the triggers are made)."""
    path = tmp_path / "old.db"
    last = sqlite.MIGRATIONS.index(SQLITE_APPEND_ONLY)
    old_migrations = sqlite.MIGRATIONS[:last] if before == "triggers" else sqlite.MIGRATIONS[:5]
    with monkeypatch.context() as patch:
        patch.setattr(sqlite, "MIGRATIONS", old_migrations)
        if before == "triggers":
            trio.run(run_twice, path)
        else:
            store = SqliteStore(path)
            store.open()
            store.close()
            with sqlite3.connect(path) as conn:  # a shared trigger switched before trigger state was per tenant
                conn.execute("INSERT INTO audit (execution_id, at, actor, action, data) VALUES "
                             "('trigger::nightly:every-day', '2025-06-01T00:00:00.000000Z', 'ops', 'trigger.disabled',"
                             " '{\"tenantId\": \"t1\"}')")
    old = rows(path)
    assert triggers(path) == []
    trio.run(run_twice, path)  # opened by this version: migrated
    assert triggers(path) == ["audit_no_delete", "audit_no_update"]
    upgraded = rows(path)
    assert len(upgraded) > len(old)
    if before == "triggers":
        assert upgraded[:len(old)] == old
    else:  # that upgrade still rewrites the row, before the triggers exist
        assert upgraded[0][1:5] == ("trigger::nightly:every-day@t1", "2025-06-01T00:00:00.000000Z", "ops",
                                    "trigger.disabled")
    assert_refused(path)
    with sqlite3.connect(path) as conn:
        [(seq,)] = conn.execute("SELECT MAX(chain_seq) FROM audit WHERE tenant = 't1'").fetchall()
    erase_and_verify(path, seq)
