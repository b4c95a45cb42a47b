"""``PostgresLedger``: the ``ClusterLedger`` of a PostgreSQL store (``PostgresStore.ledger``).

Each call is one statement on a pooled connection, or one short transaction of its own
(never the batch writer's connection); the SQL is in ``pg_cluster.py``, and the
notifications come through one LISTEN connection per process (``pg_listener.py``). What
the ledger asks of a batch (the owner's epoch, commands of a publish, ``NOTIFY``) is
written with the batch, by ``pg_writer.py``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import attrs
import psycopg

from runtime.model import Execution
from runtime.store import pg_cluster as cluster
from runtime.store.ledger import Notifications, Orphan
from runtime.store.pg_listener import Listener

Rows = Callable[..., list[tuple[Any, ...]]]
Cursor = psycopg.Cursor[tuple[Any, ...]]


@attrs.frozen
class PostgresLedger:
    rows: Rows  # one statement on a pooled connection
    transaction: Callable[[], AbstractContextManager[Cursor]]  # a short transaction of its own
    connect: Callable[[], psycopg.Connection[Any]]  # a connection of its own, out of the pool
    get_execution: Callable[[str], Execution | None]
    channel: str  # of the store's schema
    nonce: str

    def notifications(self, on_notice: Callable[[str], None],
                      on_connected: Callable[[bool], None]) -> Notifications:
        return Listener(self.connect, self.channel, on_notice, on_connected)

    # -- instances
    def register_instance(self, instance_id: str, incarnation: str, ttl_s: float) -> bool:
        rows = self.rows(cluster.REGISTER, {"id": instance_id, "me": incarnation, "ttl": ttl_s})
        return bool(rows and rows[0][0])

    def renew_instance(self, instance_id: str, incarnation: str, ttl_s: float) -> bool:
        return bool(self.rows(cluster.RENEW, {"id": instance_id, "me": incarnation, "ttl": ttl_s}))

    def stop_instance(self, instance_id: str, incarnation: str) -> list[str]:
        with self.transaction() as cursor:
            released = [row[0] for row in cursor.execute(cluster.RELEASE, {"id": instance_id}).fetchall()]
            cursor.execute(cluster.STOP, {"id": instance_id, "me": incarnation})
            cursor.execute(cluster.NOTIFY, (self.channel, ["released"]))
        return released

    def others_alive(self, instance_id: str) -> int:
        rows = self.rows(cluster.OTHERS_ALIVE, {"id": instance_id})
        return int(rows[0][0]) if rows else 0

    # -- ownership
    def claim_own(self, instance_id: str) -> list[str]:
        return [row[0] for row in self.rows(cluster.CLAIM_OWN, {"id": instance_id})]

    def orphans(self, instance_id: str, limit: int = 1000) -> list[Orphan]:
        return [(row[0], row[1], row[2], row[3], row[4])
                for row in self.rows(cluster.ORPHANS, {"id": instance_id, "limit": limit})]

    def claim(self, execution_id: str, instance_id: str, epoch: int) -> int | None:
        rows = self.rows(cluster.CLAIM, {"id": instance_id, "execution": execution_id, "epoch": epoch})
        return int(rows[0][0]) if rows else None

    def claim_finished(self, execution_id: str, instance_id: str) -> int | None:
        rows = self.rows(cluster.CLAIM_FINISHED, {"id": instance_id, "execution": execution_id})
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

    def sweep_commands(self, older_than_s: float) -> None:
        self.rows(cluster.SWEEP_COMMANDS, (older_than_s,))
