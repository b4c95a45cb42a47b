"""Receipts of event sources, and the lifecycle outbox of sinks, in the SQL stores.

A receipt is named by its source and the message's delivery id (a webhook's delivery
header, a JetStream message id or stream sequence, a Redis entry id). It is inserted in the
transaction that takes the message (``Change.receipt``): when the row is there already, the
message is a repeat and nothing else of that Change is written, whichever process wrote the
row first (the primary key settles a race). ``pending`` holds, until the delivery is
settled, the event and the steps it is being handed to (one-process stores); settled rows
are deleted once expired (``Change.expire_receipts_at``).

The outbox holds lifecycle events committed with their changes (``Change.lifecycle``), in
commit order (``seq``), until the process that committed them (``origin``) has published
them to its sinks (``Change.lifecycle_done``).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

from runtime.model import Event
from runtime.model.records import Lifecycle, Receipt
from runtime.model.wire import dumps, from_json, to_json
from runtime.store.dialect import Dialect
from runtime.store.schema import Row, loads

#: the migration that creates the table (the same SQL in both dialects)
RECEIPTS_TABLE = """CREATE TABLE IF NOT EXISTS receipts (
    source_id TEXT NOT NULL,
    delivery_id TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    received_at {time} NOT NULL,
    expires_at {time} NOT NULL,
    pending {json},
    PRIMARY KEY (source_id, delivery_id)
)"""
RECEIPTS_INDEX = "CREATE INDEX IF NOT EXISTS receipts_by_expiry ON receipts (expires_at)"

OUTBOX_TABLE = """CREATE TABLE IF NOT EXISTS outbox (
    seq {serial},
    origin TEXT NOT NULL,
    event {json} NOT NULL
)"""
OUTBOX_INDEX = "CREATE INDEX IF NOT EXISTS outbox_by_origin ON outbox (origin, seq)"
INSERT_LIFECYCLE = "INSERT INTO outbox (origin, event) VALUES (?, ?json)"
LIFECYCLE_DONE = "DELETE FROM outbox WHERE origin = ? AND seq <= ?"
LIFECYCLE_AFTER = "SELECT seq, event FROM outbox WHERE origin = ? AND seq > ? ORDER BY seq LIMIT ?"

INSERT = """
INSERT INTO receipts (source_id, delivery_id, tenant_id, event_id, received_at, expires_at, pending)
VALUES (?, ?, ?, ?, ?, ?, ?json)
ON CONFLICT (source_id, delivery_id) DO NOTHING
RETURNING 1"""
SETTLE = "UPDATE receipts SET pending = NULL WHERE source_id = ? AND delivery_id = ?"
EXPIRE = "DELETE FROM receipts WHERE expires_at <= ? AND pending IS NULL"
KNOWN = "SELECT 1 FROM receipts WHERE source_id = ? AND delivery_id = ?"
PENDING = """
SELECT source_id, delivery_id, tenant_id, event_id, received_at, expires_at, pending FROM receipts
WHERE pending IS NOT NULL ORDER BY received_at"""


def receipt_row(receipt: Receipt, dialect: Dialect) -> Row:
    """(source_id, delivery_id, tenant_id, event_id, received_at, expires_at, pending)"""
    pending = None
    if receipt.pending is not None:
        pending = dumps({"targets": [list(target) for target in receipt.pending], "event": to_json(receipt.event)})
    return (receipt.source_id, receipt.delivery_id, receipt.tenant_id, receipt.event_id,
            dialect.stamp(receipt.received_at), dialect.stamp(receipt.expires_at), pending)


def receipt_from(row: Row, dialect: Dialect) -> Receipt:
    source_id, delivery_id, tenant_id, event_id, received_at, expires_at, pending = row
    targets, event = None, None
    if pending is not None:
        data = loads(pending)
        targets = tuple((str(e), str(s)) for e, s in data["targets"])
        event = from_json(data["event"], Event)
    return Receipt(source_id, delivery_id, tenant_id, event_id, dialect.time(received_at), dialect.time(expires_at),
                   targets, event)


class ReceiptQueries(abc.ABC):
    """The receipt reads of a SQL store."""

    dialect: Dialect

    @abc.abstractmethod
    def _query(self, template: str, params: Sequence[Any] = ()) -> list[Row]: ...

    def receipt_known(self, source_id: str, delivery_id: str) -> bool:
        return bool(self._query(KNOWN, (source_id, delivery_id)))

    def receipts_known(self, source_id: str, delivery_ids: Sequence[str]) -> set[str]:
        if not delivery_ids:
            return set()
        marks = ", ".join("?" for _ in delivery_ids)
        query = f"SELECT delivery_id FROM receipts WHERE source_id = ? AND delivery_id IN ({marks})"
        return {str(row[0]) for row in self._query(query, (source_id, *delivery_ids))}

    def pending_receipts(self) -> list[Receipt]:
        return [receipt_from(row, self.dialect) for row in self._query(PENDING)]

    def lifecycle_after(self, origin: str, seq: int, limit: int) -> list[tuple[int, Lifecycle]]:
        return [(int(row[0]), from_json(loads(row[1]), Lifecycle))
                for row in self._query(LIFECYCLE_AFTER, (origin, seq, limit))]


def lifecycle_rows(events: Sequence[Lifecycle]) -> list[Row]:
    """(origin, event)"""
    return [(event.origin, dumps(to_json(event))) for event in events]
