"""The audit ledger: each tenant's entries chained by hash, checkpoints, the export bundle, and
a verifier that names the first entry someone changed directly in the database (SQLite and
PostgreSQL, past the triggers that refuse UPDATE and DELETE), with the PostgreSQL table refusing
UPDATE and DELETE itself (SQLite's: ``tests/test_audit_append_only.py``)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import psycopg
import pytest
from psycopg import sql

from runtime.api.audit_export import AuditRange, export_from_store
from runtime.model import AuditEntry
from runtime.model.records import Change
from runtime.model.wire import format_time
from runtime.security.audit_signing import CheckpointSigner, generate_key_file
from runtime.security.audit_verify import (
    Verdict,
    entry_hash,
    load_public_key,
    payload_sha256,
    verify_bundle,
)
from runtime.store import PostgresStore, SqliteStore
from runtime.store.audit_chain import AuditPolicy, Head, chain, ledger_json
from runtime.store.audit_sql import SQLITE_TRIGGERS
from runtime.store.base import Store

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
TENANT = "acme"


def entry(i: int, tenant: str = TENANT) -> AuditEntry:
    return AuditEntry(f"ex{i % 7}", T0 + timedelta(seconds=i), f"user{i % 3}", "step.succeeded", f"s{i}",
                      "contract", None, {"i": i, "note": "ü"}, tenant_id=tenant)


@dataclass
class Db:
    """A store of one kind, and raw SQL on its database as someone with access would run it."""

    make: Callable[[], Store]
    run: Callable[[str, tuple[Any, ...]], list[tuple[Any, ...]]]
    kind: str


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Db]:
    if request.param == "sqlite":
        path = tmp_path / "ledger.db"

        def run_sqlite(query: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
            with sqlite3.connect(path) as conn:
                # whoever can write the file can drop the triggers (and put them back after):
                # the chain, not the triggers, must catch it
                conn.execute("DROP TRIGGER audit_no_update")
                conn.execute("DROP TRIGGER audit_no_delete")
                rows = conn.execute(query, params).fetchall()
                for statement in SQLITE_TRIGGERS:
                    conn.execute(statement)
                return rows

        yield Db(lambda: SqliteStore(path), run_sqlite, "sqlite")
        return
    dsn, schema = request.getfixturevalue("postgres_dsn"), request.getfixturevalue("schema")

    def run_pg(query: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
            # a superuser can switch triggers off: the chain, not the trigger, must catch it
            conn.execute("SET session_replication_role = replica")
            cursor = conn.execute(query.replace("?", "%s"), params)
            return cursor.fetchall() if cursor.description else []

    yield Db(lambda: PostgresStore(dsn, pool_max=1, schema=schema, pool_min=0), run_pg, "postgres")


def write(db: Db, changes: list[Change], policy: AuditPolicy | None = None) -> None:
    store = db.make()
    store.audit_policy = policy or AuditPolicy(checkpoint_every=5, checkpoint_ms=10**9)
    store.open()
    try:
        store.commit(changes)
    finally:
        store.close()


def export(db: Db, out: Path, bounds: AuditRange | None = None) -> Path:
    export_from_store(db.make(), TENANT, bounds or AuditRange(), out, None)
    return out


def twelve(db: Db) -> None:
    """Twelve entries of the tenant, one commit each (checkpoints at 5 and 10), and others'."""
    write(db, [Change(audit=(entry(i), entry(i, "other"))) for i in range(12)])


def verdict(db: Db, tmp_path: Path) -> Verdict:
    return verify_bundle(export(db, tmp_path / "bundle"))


def test_an_untouched_ledger_verifies(db: Db, tmp_path: Path) -> None:
    twelve(db)
    result = verdict(db, tmp_path)
    assert result.ok, result.line()
    assert result.line() == "ok 12 entries"
    lines = (tmp_path / "bundle" / "entries.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    assert first["seq"] == 1 and first["prevHash"] == "0" * 64 and first["tenantId"] == TENANT
    # the hash is what anyone computes: sha256(prevHash bytes + RFC 8785 JSON of the entry without it)
    assert first["hash"] == entry_hash(first["prevHash"], first)
    checkpoints = [json.loads(line) for line in (tmp_path / "bundle" / "checkpoints.jsonl").read_text().splitlines()]
    assert [c["seq"] for c in checkpoints] == [5, 10]


def test_an_edited_entry_is_named(db: Db, tmp_path: Path) -> None:
    twelve(db)
    db.run("UPDATE audit SET actor = 'mallory' WHERE tenant = ? AND chain_seq = 4", (TENANT,))
    result = verdict(db, tmp_path)
    assert (result.seq, result.reason) == (4, "edited")


def test_an_edited_payload_is_named(db: Db, tmp_path: Path) -> None:
    twelve(db)
    db.run("UPDATE audit SET data = '{\"i\": 99}' WHERE tenant = ? AND chain_seq = 7", (TENANT,))
    result = verdict(db, tmp_path)
    assert (result.seq, result.reason) == (7, "edited")


def test_a_deleted_entry_is_named(db: Db, tmp_path: Path) -> None:
    twelve(db)
    db.run("DELETE FROM audit WHERE tenant = ? AND chain_seq = 6", (TENANT,))
    result = verdict(db, tmp_path)
    assert (result.seq, result.reason) == (6, "missing")


def test_an_inserted_entry_is_named(db: Db, tmp_path: Path) -> None:
    twelve(db)
    # the forger renumbers what follows and chains a forged entry properly after seq 3
    db.run("UPDATE audit SET chain_seq = chain_seq + 1000 WHERE tenant = ? AND chain_seq >= 4", (TENANT,))
    db.run("UPDATE audit SET chain_seq = chain_seq - 999 WHERE tenant = ? AND chain_seq >= 1000", (TENANT,))
    [(prev,)] = db.run("SELECT hash FROM audit WHERE tenant = ? AND chain_seq = 3", (TENANT,))
    forged = {"seq": 4, "prevHash": prev, "tenantId": TENANT, "executionId": "ex1", "at": format_time(T0),
              "actor": "mallory", "action": "approval.decided", "stepId": "s4", "legalBasis": None, "reason": None,
              "dataSha256": payload_sha256(None)}
    db.run("INSERT INTO audit (execution_id, at, actor, action, step_id, data, tenant, chain_seq, prev_hash, hash,"
           " data_sha256) VALUES ('ex1', ?, 'mallory', 'approval.decided', 's4', 'null', ?, 4, ?, ?, ?)",
           (format_time(T0) if db.kind == "sqlite" else T0, TENANT, prev, entry_hash(prev, forged), payload_sha256(None)))
    result = verdict(db, tmp_path)
    assert (result.seq, result.reason) == (4, "inserted")


def test_reordered_entries_are_named(db: Db, tmp_path: Path) -> None:
    twelve(db)
    db.run("UPDATE audit SET chain_seq = -1 WHERE tenant = ? AND chain_seq = 8", (TENANT,))
    db.run("UPDATE audit SET chain_seq = 8 WHERE tenant = ? AND chain_seq = 9", (TENANT,))
    db.run("UPDATE audit SET chain_seq = 9 WHERE tenant = ? AND chain_seq = -1", (TENANT,))
    result = verdict(db, tmp_path)
    assert (result.seq, result.reason) == (8, "reordered")


def test_a_truncated_ledger_is_caught_by_its_latest_checkpoint(db: Db, tmp_path: Path) -> None:
    twelve(db)
    db.run("DELETE FROM audit WHERE tenant = ? AND chain_seq >= 8", (TENANT,))
    result = verdict(db, tmp_path)
    assert (result.seq, result.reason) == (8, "truncated")


def test_ten_thousand_untouched_entries_verify(db: Db, tmp_path: Path) -> None:
    write(db, [Change(audit=tuple(entry(i) for i in range(n, n + 1000))) for n in range(0, 10_000, 1000)],
          AuditPolicy(checkpoint_every=1000, checkpoint_ms=10**9))
    result = verdict(db, tmp_path)
    assert result.line() == "ok 10000 entries"


def test_a_range_starts_from_the_hash_before_it(db: Db, tmp_path: Path) -> None:
    twelve(db)
    out = export(db, tmp_path / "part", AuditRange(from_seq=4, to_seq=9))
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["fromSeq"], manifest["toSeq"], manifest["entries"]) == (4, 9, 6)
    assert verify_bundle(out).ok
    db.run("UPDATE audit SET reason = 'later' WHERE tenant = ? AND chain_seq = 4", (TENANT,))
    result = verify_bundle(export(db, tmp_path / "again", AuditRange(from_seq=4, to_seq=9)))
    assert (result.seq, result.reason) == (4, "edited")


def test_signed_checkpoints_verify_with_the_public_key_and_not_with_another(db: Db, tmp_path: Path) -> None:
    signer = generate_key_file(tmp_path / "audit.pem")
    other = generate_key_file(tmp_path / "other.pem")
    write(db, [Change(audit=(entry(i),)) for i in range(7)],
          AuditPolicy(checkpoint_every=3, checkpoint_ms=10**9, signer=signer))
    out = tmp_path / "bundle"
    export_from_store(db.make(), TENANT, AuditRange(), out, signer)
    assert verify_bundle(out, load_public_key(signer.public_pem().encode())).ok
    result = verify_bundle(out, load_public_key(other.public_pem().encode()))
    assert (result.seq, result.reason) == (3, "bad signature")
    # a forger who rewrites the chain from seq 2 on, checkpoints included, cannot sign them again
    rewrite_chain(out, None)
    result = verify_bundle(out, load_public_key(signer.public_pem().encode()))
    assert (result.seq, result.reason) == (3, "bad signature")
    # signed with the forger's own key and that key put in the manifest: only pinning the key catches it
    rewrite_chain(out, other)
    assert verify_bundle(out).ok
    result = verify_bundle(out, load_public_key(signer.public_pem().encode()))
    assert (result.seq, result.reason) == (3, "bad signature")


def rewrite_chain(bundle: Path, key: CheckpointSigner | None) -> None:
    """Change seq 2's actor, chain everything after it again and move the checkpoints along."""
    entries = [json.loads(line) for line in (bundle / "entries.jsonl").read_text().splitlines()]
    entries[1]["actor"] = "mallory"
    prev = "0" * 64
    for item in entries:
        item["prevHash"] = prev
        item["hash"] = prev = entry_hash(prev, item)
    (bundle / "entries.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    checkpoints = [json.loads(line) for line in (bundle / "checkpoints.jsonl").read_text().splitlines()]
    for checkpoint in checkpoints:
        checkpoint["hash"] = entries[checkpoint["seq"] - 1]["hash"]
        if key is not None:
            checkpoint["signature"] = key.sign(checkpoint)
    (bundle / "checkpoints.jsonl").write_text("".join(json.dumps(c) + "\n" for c in checkpoints))
    if key is not None:
        manifest = json.loads((bundle / "manifest.json").read_text())
        manifest["publicKey"] = key.public_pem()
        (bundle / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.postgres
def test_postgres_refuses_update_and_delete_of_audit_entries(postgres_dsn: str, schema: str) -> None:
    write(Db(lambda: PostgresStore(postgres_dsn, pool_max=1, schema=schema, pool_min=0), lambda q, p: [], "postgres"),
          [Change(audit=(entry(1),))])
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        for statement in ("UPDATE audit SET actor = 'mallory'", "DELETE FROM audit", "TRUNCATE audit",
                          "UPDATE audit SET data = 'null', erased = TRUE"):  # (erasure only through the store)
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
                conn.execute(statement)
        assert conn.execute("SELECT actor FROM audit").fetchall() == [("user1",)]


def test_a_checkpoint_follows_checkpoint_ms_of_the_entries_own_time(db: Db, tmp_path: Path) -> None:
    times = [0, 30, 59, 61, 62, 200]  # seconds after T0: 60 s pass at the 4th entry, then at the 6th
    entries = [attrs.evolve(entry(i), at=T0 + timedelta(seconds=s)) for i, s in enumerate(times)]
    write(db, [Change(audit=(e,)) for e in entries], AuditPolicy(checkpoint_every=1000, checkpoint_ms=60_000))
    out = export(db, tmp_path / "bundle")
    checkpoints = [json.loads(line) for line in (out / "checkpoints.jsonl").read_text().splitlines()]
    assert [(c["seq"], c["at"]) for c in checkpoints] == [(4, format_time(T0 + timedelta(seconds=61))),
                                                          (6, format_time(T0 + timedelta(seconds=200)))]
    assert "keyId" not in checkpoints[0]  # no key: unsigned


def test_a_quiet_chain_is_checkpointed_at_its_head(db: Db, tmp_path: Path) -> None:
    policy = AuditPolicy(checkpoint_every=1000, checkpoint_ms=60_000)
    write(db, [Change(audit=(entry(i),)) for i in range(3)], policy)  # at T0 .. T0 + 2 s
    write(db, [Change(checkpoint_idle=T0 + timedelta(seconds=30))], policy)  # not quiet long enough
    assert (export(db, tmp_path / "early") / "checkpoints.jsonl").read_text() == ""
    write(db, [Change(checkpoint_idle=T0 + timedelta(seconds=61))], policy)
    write(db, [Change(checkpoint_idle=T0 + timedelta(seconds=200))], policy)  # nothing new since: none
    out = export(db, tmp_path / "bundle")
    checkpoints = [json.loads(line) for line in (out / "checkpoints.jsonl").read_text().splitlines()]
    assert [(c["seq"], c["at"]) for c in checkpoints] == [(3, format_time(T0 + timedelta(seconds=61)))]
    assert verify_bundle(out).ok
    db.run("DELETE FROM audit WHERE tenant = ? AND chain_seq = 3", (TENANT,))  # the last entry, removed
    result = verify_bundle(export(db, tmp_path / "cut"))
    assert (result.seq, result.reason) == (3, "truncated")


@pytest.mark.postgres
def test_two_processes_writing_one_tenant_share_one_gap_free_chain(postgres_dsn: str, schema: str,
                                                                  tmp_path: Path) -> None:
    """Two stores on one database (as two processes) commit entries of one tenant at once:
    the head's row lock gives every entry its own seq, with no gap and no fork."""
    import threading

    stores = [PostgresStore(postgres_dsn, pool_max=1, schema=schema, pool_min=0) for _ in range(2)]
    for store in stores:
        store.audit_policy = AuditPolicy(checkpoint_every=7, checkpoint_ms=10**9)
        store.open()
    try:
        def writer(store: Store, offset: int) -> None:
            for n in range(25):
                store.commit([Change(audit=(entry(offset + n), entry(offset + n + 1000)))])

        threads = [threading.Thread(target=writer, args=(store, 10_000 * k)) for k, store in enumerate(stores)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        for store in stores:
            store.close()
    out = tmp_path / "bundle"
    export_from_store(PostgresStore(postgres_dsn, pool_max=1, schema=schema, pool_min=0), TENANT, AuditRange(), out,
                      None)
    assert verify_bundle(out).line() == "ok 100 entries"


@pytest.mark.parametrize(("tamper", "expected"), [
    ("swap", (5, "reordered")),
    ("intruder", (5, "inserted")),
    ("drop", (5, "missing")),
    ("drop_and_renumber", (5, "missing")),
    ("rehash", (5, "edited")),
    ("prev_hash", (5, "edited")),
])
def test_the_verifier_names_tampering_done_to_the_bundle_itself(tamper: str, expected: tuple[int, str],
                                                                tmp_path: Path) -> None:
    """The same kinds of tampering, made to an exported bundle's lines rather than the database."""
    db = Db(lambda: SqliteStore(tmp_path / "b.db"), lambda q, p: [], "sqlite")
    twelve(db)
    out = export(db, tmp_path / "bundle")
    lines = [json.loads(line) for line in (out / "entries.jsonl").read_text().splitlines()]
    at = 4  # seq 5
    if tamper == "swap":
        lines[at], lines[at + 1] = lines[at + 1], lines[at]
    elif tamper == "intruder":
        lines.insert(at, {**lines[at], "actor": "mallory", "hash": "f" * 64})
    elif tamper == "drop":
        del lines[at]
    elif tamper == "drop_and_renumber":
        del lines[at]
        for line in lines[at:]:
            line["seq"] -= 1
    elif tamper == "rehash":  # edited, and its hash recomputed (its successor still links to the old one)
        lines[at]["actor"] = "mallory"
        lines[at]["hash"] = entry_hash(lines[at]["prevHash"], lines[at])
    elif tamper == "prev_hash":
        lines[at]["prevHash"] = "e" * 64
    (out / "entries.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = verify_bundle(out)
    assert (result.seq, result.reason) == expected, result.line()


@pytest.mark.postgres
def test_a_head_another_process_moved_is_read_again_and_the_batch_written_once(postgres_dsn: str, schema: str,
                                                                                 tmp_path: Path) -> None:
    """A process that wrote a tenant's last entries chains its next batch after the head it
    left, without reading it under its lock. When another process wrote the tenant in
    between, the unique (tenant, seq) index refuses that batch; it is written again after
    the head read under its lock, once, and the chain has no gap and no fork."""
    def store() -> PostgresStore:
        made = PostgresStore(postgres_dsn, pool_max=1, schema=schema, pool_min=0)
        made.audit_policy = AuditPolicy(checkpoint_every=4, checkpoint_ms=10**9)
        made.open()
        return made

    a, b = store(), store()
    try:
        a.commit([Change(audit=(entry(0),))])
        a.commit([Change(audit=(entry(1),))])  # read under the lock, found where a left it: trusted
        assert TENANT in a._known_heads.trusted()
        a.commit([Change(audit=(entry(2),))])  # not read
        b.commit([Change(audit=(entry(3), entry(4)))])
        a.commit([Change(audit=(entry(5),))])  # after a head b moved: refused, then written again
        assert TENANT not in a._known_heads.trusted()
        b.commit([Change(audit=(entry(6),))])
    finally:
        a.close()
        b.close()
    out = tmp_path / "bundle"
    export_from_store(PostgresStore(postgres_dsn, pool_max=1, schema=schema, pool_min=0), TENANT, AuditRange(), out,
                      None)
    assert verify_bundle(out).line() == "ok 7 entries"
    entries = [json.loads(line) for line in (out / "entries.jsonl").read_text().splitlines()]
    assert [e["stepId"] for e in entries] == [f"s{i}" for i in range(7)]


def test_entries_with_any_text_chain_as_the_verifier_computes(db: Db, tmp_path: Path) -> None:
    """Quotes, backslashes, control characters, line separators and characters beyond the
    BMP, in every text member: the hashes the store wrote are the ones the verifier
    computes from the exported entries."""
    odd = 'a"b\\c\n\t\x01\u2028 ü 𝄞 <&>'
    entries = [AuditEntry(f"ex-{odd}", T0 + timedelta(seconds=i), f"actor {odd}", f"act{odd}", odd if i else None,
                          odd if i % 2 else None, f"why {odd}" if i else None, {"k": odd}, tenant_id=TENANT)
               for i in range(4)]
    write(db, [Change(audit=tuple(entries))])
    result = verdict(db, tmp_path)
    assert result.line() == "ok 4 entries", result.line()


@pytest.mark.parametrize("actor", ["plain", "quote\" and \\ and é", "lone \ud800 surrogate"])
def test_the_fast_canonical_text_is_the_verifiers(actor: str) -> None:
    """The stores write an entry's canonical text directly, in parts made before the head is
    known; it hashes as the verifier's general canonical JSON does (a lone surrogate, which
    strict UTF-8 refuses, takes the general way)."""
    entries = [AuditEntry("ex", T0 + timedelta(seconds=i), actor, "act", "s", None, actor, {"a": [i]},
                          tenant_id=TENANT) for i in range(3)]
    chained, head, _ = chain(TENANT, Head(), entries, AuditPolicy())
    prev = "0" * 64
    for entry in chained:
        assert entry.prev_hash == prev and entry.hash == entry_hash(prev, ledger_json(entry))
        prev = entry.hash
    assert head.seq == 3 and head.hash == prev
