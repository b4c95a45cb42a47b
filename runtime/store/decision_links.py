"""Decision links used: the first use of a signed decision link wins, decided by the store.

A link (``runtime.security.links``) is recorded by its token id when it is used. The row's
primary key makes the first claim the only one, however many processes share the database:
each claimant inserts a row naming itself (``ON CONFLICT DO NOTHING``) and reads back whose
row it is. A claim is kept for good: a used link stays used.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from runtime.store.dialect import Dialect
from runtime.store.schema import Row

#: the migration that creates the table (the same SQL in both dialects)
DECISION_LINKS_TABLE = """CREATE TABLE IF NOT EXISTS decision_links (
    id TEXT PRIMARY KEY,
    claimant TEXT NOT NULL,
    execution_id TEXT NOT NULL,
    step_id TEXT NOT NULL,
    approver TEXT NOT NULL,
    used_at {time} NOT NULL
)"""

CLAIM = """
INSERT INTO decision_links (id, claimant, execution_id, step_id, approver, used_at) VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (id) DO NOTHING"""
USE = "SELECT claimant, used_at FROM decision_links WHERE id = ?"


class LinkQueries(abc.ABC):
    """The decision-link reads and writes of a SQL store."""

    dialect: Dialect

    @abc.abstractmethod
    def _query(self, template: str, params: Sequence[Any] = ()) -> list[Row]: ...

    @abc.abstractmethod
    def _write_one(self, query: str, params: Sequence[Any]) -> None: ...

    def claim_link(self, link_id: str, claimant: str, execution_id: str, step_id: str, approver: str,
                   at: datetime) -> datetime | None:
        """Record the link's use by ``claimant``: None if this claim is the first, else when
        the link was first used."""
        self._write_one(self.dialect.sql(CLAIM), (link_id, claimant, execution_id, step_id, approver,
                                                  self.dialect.stamp(at)))
        [(owner, used_at)] = self._query(USE, (link_id,))
        return None if owner == claimant else self.dialect.time(used_at)

    def link_used(self, link_id: str) -> datetime | None:
        """When the link was used, or None."""
        rows = self._query(USE, (link_id,))
        return self.dialect.time(rows[0][1]) if rows else None


class LinkUses:
    """The same, kept in a dict (the memory store)."""

    def __init__(self) -> None:
        self._used: dict[str, tuple[str, datetime]] = {}

    def claim_link(self, link_id: str, claimant: str, execution_id: str, step_id: str, approver: str,
                   at: datetime) -> datetime | None:
        owner, used_at = self._used.setdefault(link_id, (claimant, at))
        return None if owner == claimant else used_at

    def link_used(self, link_id: str) -> datetime | None:
        found = self._used.get(link_id)
        return found[1] if found else None
