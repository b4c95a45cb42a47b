"""``PostgresLedger``: the ``ClusterLedger`` of a PostgreSQL store (``PostgresStore.ledger``).

Each call is one statement on a pooled connection, or one short transaction of its own
(never the batch writer's connection); the SQL is in ``pg_cluster.py``, and the
notifications come through one LISTEN connection per process (``pg_listener.py``). What
the ledger asks of a batch (the owner's epoch, commands of a publish, ``NOTIFY``) is
written with the batch, by ``pg_writer.py``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, TypeVar

import attrs
import psycopg

from runtime.model import Execution
from runtime.store import pg_cluster as cluster
from runtime.store.ledger import Notifications, Orphan, Renewal
from runtime.store.pg_listener import Listener

T = TypeVar("T")
Rows = Callable[..., list[tuple[Any, ...]]]
Cursor = psycopg.Cursor[tuple[Any, ...]]


@attrs.frozen
class PostgresLedger:
    rows: Rows  # one statement on a pooled connection
    transaction: Callable[[], AbstractContextManager[Cursor]]  # a short transaction of its own
    connect: Callable[[], psycopg.Connection[Any]]  # a connection of its own, out of the pool (LISTEN)
    connect_own: Callable[[], psycopg.Connection[Any]]  # the same, set up for the store's schema
    get_execution: Callable[[str], Execution | None]
    channel: str  # of the store's schema
    nonce: str

    def notifications(self, on_notice: Callable[[str], None], on_connected: Callable[[bool], None],
                      silence_s: float) -> Notifications:
        return Listener(self.connect, self.channel, on_notice, on_connected, f"ping:{self.nonce}:", silence_s)

    def ping_of(self, beat: int) -> str:
        return f"ping:{self.nonce}:{beat}"

    def renewer(self) -> PostgresRenewer:
        return PostgresRenewer(self.connect_own, self.channel)

    # -- incarnations
    def register_instance(self, instance_id: str, owner: str, ttl_s: float) -> bool:
        rows = self.rows(cluster.REGISTER, {"id": instance_id, "me": owner, "ttl": ttl_s})
        return bool(rows and rows[0][0])

    def stop_instance(self, owner: str) -> list[str]:
        with self.transaction() as cursor:
            released = [row[0] for row in cursor.execute(cluster.RELEASE, {"me": owner}).fetchall()]
            cursor.execute(cluster.STOP, {"me": owner})
            cursor.execute(cluster.NOTIFY, (self.channel, ["released"]))
        return released

    def database_now(self) -> datetime:
        found: datetime = self.rows(cluster.DATABASE_NOW)[0][0]
        return found

    def others_alive(self, instance_id: str) -> int:
        rows = self.rows(cluster.OTHERS_ALIVE, {"id": instance_id})
        return int(rows[0][0]) if rows else 0

    # -- ownership
    def claim_own(self, instance_id: str, owner: str) -> list[str]:
        return [row[0] for row in self.rows(cluster.CLAIM_OWN, {"id": instance_id, "me": owner})]

    def orphans(self, owner: str, skip: Sequence[str] = (), limit: int = 100) -> list[Orphan]:
        return [(row[0], row[1], row[2], row[3], row[4])
                for row in self.rows(cluster.ORPHANS, {"me": owner, "skip": list(skip), "limit": limit})]

    def skipped_orphans(self, owner: str, skip: Sequence[str]) -> int:
        rows = self.rows(cluster.SKIPPED_ORPHANS, {"me": owner, "skip": list(skip)})
        return int(rows[0][0]) if rows else 0

    def claim(self, execution_id: str, owner: str, epoch: int) -> int | None:
        rows = self.rows(cluster.CLAIM, {"me": owner, "execution": execution_id, "epoch": epoch})
        return int(rows[0][0]) if rows else None

    def claim_all(self, owner: str, seen: Sequence[tuple[str, int]]) -> list[str]:
        rows = self.rows(cluster.CLAIM_ALL, {"me": owner, "ids": [i for i, _ in seen],
                                             "epochs": [epoch for _, epoch in seen]})
        return [row[0] for row in rows]

    def claim_finished(self, execution_id: str, owner: str) -> int | None:
        rows = self.rows(cluster.CLAIM_FINISHED, {"me": owner, "execution": execution_id})
        return int(rows[0][0]) if rows else None

    # -- commands
    def insert_command(self, command_id: str, execution_id: str, kind: str, body: Any, origin: str) -> None:
        with self.transaction() as cursor:
            cursor.execute(cluster.INSERT_COMMAND, (command_id, execution_id, kind, json.dumps(body), origin))
            cursor.execute(cluster.NOTIFY, (self.channel, [f"cmd:{execution_id}:{command_id}"]))

    def pending_commands(self, execution_id: str) -> list[tuple[str, str, Any]]:
        return [(row[0], row[1], row[2]) for row in self.rows(cluster.PENDING_COMMANDS, (execution_id,))]

    def command_outcome(self, command_id: str) -> tuple[bool, Any] | None:
        rows = self.rows(cluster.OUTCOME, (command_id,))
        return (bool(rows[0][0]), rows[0][1]) if rows else None

    def command(self, command_id: str) -> tuple[str, bool, Any] | None:
        rows = self.rows(cluster.COMMAND, (command_id,))
        return (rows[0][0], bool(rows[0][1]), rows[0][2]) if rows else None

    def leftovers(self, instance_id: str, limit: int = 100) -> list[tuple[str, int, str | None, str]]:
        return [(row[0], int(row[1]), row[2], row[3])
                for row in self.rows(cluster.LEFTOVERS, {"id": instance_id, "limit": limit})]

    def abandoned_children(self, instance_id: str, limit: int = 100) -> list[tuple[str, str, str]]:
        return [(row[0], row[1], row[2])
                for row in self.rows(cluster.ABANDONED_CHILDREN, {"id": instance_id, "limit": limit})]

    def overdue_commands(self, instance_id: str, age_s: float, limit: int = 100) -> list[str]:
        return [row[0] for row in self.rows(cluster.OVERDUE_COMMANDS, {"id": instance_id, "age": age_s,
                                                                       "limit": limit})]

    def sweep_commands(self, older_than_s: float) -> None:
        self.rows(cluster.SWEEP_COMMANDS, (older_than_s,))
        self.rows(cluster.SWEEP_INCARNATIONS)

    # -- what the listener misses while it is down
    def commands_after(self, seq: int) -> list[tuple[int, str, str]]:
        return [(int(row[0]), row[1], row[2]) for row in self.rows(cluster.COMMANDS_AFTER, (seq,))]

    def versions(self, execution_ids: Sequence[str]) -> dict[str, int]:
        return {row[0]: int(row[1]) for row in self.rows(cluster.VERSIONS, (list(execution_ids),))}


class PostgresRenewer:
    """The renewal of one incarnation, on a connection of its own (never waiting behind reads
    for a pooled one), used from one worker thread at a time. A renewal that hangs is
    abandoned (``abandon``): the next one opens a new connection."""

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]], channel: str) -> None:
        self._connect = connect
        self._channel = channel
        self._conn: psycopg.Connection[Any] | None = None

    def renew(self, owner: str, ttl_s: float, ping: str) -> Renewal:
        """Extend the incarnation's heartbeat, then announce ``ping`` (the listener's check)."""
        def statements(conn: psycopg.Connection[Any]) -> Renewal:
            row = conn.execute(cluster.RENEW, {"me": owner, "ttl": ttl_s}).fetchone()
            conn.execute(cluster.NOTIFY, (self._channel, [ping]))
            if row is None or row[1]:
                return "replaced"
            return "renewed" if row[0] else "lapsed"
        return self._on_own(statements)

    def rejoin(self, owner: str, ttl_s: float) -> bool:
        """After a lapse: alive again, unless replaced meanwhile."""
        return self._on_own(lambda conn: bool(conn.execute(cluster.REJOIN, {"me": owner, "ttl": ttl_s}).fetchall()))

    def abandon(self) -> None:
        self._conn = None  # (the thread that hangs on it closes it if it ever returns)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _on_own(self, statements: Callable[[psycopg.Connection[Any]], T]) -> T:
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            conn = self._conn = self._connect()
        try:
            return statements(conn)
        except psycopg.Error:
            if self._conn is conn:
                self._conn = None
            conn.close()
            raise
        finally:
            if self._conn is not conn:  # abandoned while it hung: nobody else closes it
                conn.close()
