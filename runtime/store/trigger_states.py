"""Trigger state in the SQL stores: enabled or not, and the last run of each trigger.

A trigger is named by its runbook's owner (a tenant, or ``''`` for a shared runbook), the
runbook id and its own id; its state outlives versions of the runbook, so a new version
keeps whether a trigger is enabled and when it last ran. Switching a trigger and recording a
run each write only their own columns (two processes never undo each other's write), and a
run is recorded only if it is newer than the one stored.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from runtime.model import TriggerState
from runtime.store.dialect import Dialect
from runtime.store.schema import SHARED, Row, owner_of

#: the migration that creates the table (the same SQL in both dialects)
TRIGGER_STATES_TABLE = """CREATE TABLE trigger_states (
    owner TEXT NOT NULL,
    runbook_id TEXT NOT NULL,
    trigger_id TEXT NOT NULL,
    enabled BOOLEAN NOT NULL,
    last_run_at {time},
    last_execution_id TEXT,
    PRIMARY KEY (owner, runbook_id, trigger_id)
)"""

STATES = "SELECT owner, runbook_id, trigger_id, enabled, last_run_at, last_execution_id FROM trigger_states"

SET_ENABLED = """
INSERT INTO trigger_states (owner, runbook_id, trigger_id, enabled) VALUES (?, ?, ?, ?)
ON CONFLICT (owner, runbook_id, trigger_id) DO UPDATE SET enabled = excluded.enabled"""

RECORD_RUN = """
INSERT INTO trigger_states (owner, runbook_id, trigger_id, enabled, last_run_at, last_execution_id)
VALUES (?, ?, ?, TRUE, ?, ?)
ON CONFLICT (owner, runbook_id, trigger_id) DO UPDATE SET
    last_run_at = excluded.last_run_at, last_execution_id = excluded.last_execution_id
WHERE trigger_states.last_run_at IS NULL OR trigger_states.last_run_at <= excluded.last_run_at"""


class TriggerQueries(abc.ABC):
    """The trigger reads and writes of a SQL store."""

    dialect: Dialect

    @abc.abstractmethod
    def _query(self, template: str, params: Sequence[Any] = ()) -> list[Row]: ...

    @abc.abstractmethod
    def _write_one(self, query: str, params: Sequence[Any]) -> None:
        """One statement (rendered already) in a transaction of its own."""

    def trigger_states(self) -> list[TriggerState]:
        return [TriggerState(None if owner == SHARED else owner, runbook_id, trigger_id, bool(enabled),
                             self.dialect.time(last) if last is not None else None, execution_id)
                for owner, runbook_id, trigger_id, enabled, last, execution_id in self._query(STATES)]

    def set_trigger_enabled(self, tenant_id: str | None, runbook_id: str, trigger_id: str, enabled: bool) -> None:
        self._write_one(self.dialect.sql(SET_ENABLED), (owner_of(tenant_id), runbook_id, trigger_id, enabled))

    def record_trigger_run(self, tenant_id: str | None, runbook_id: str, trigger_id: str, at: datetime,
                           execution_id: str) -> None:
        self._write_one(self.dialect.sql(RECORD_RUN), (owner_of(tenant_id), runbook_id, trigger_id,
                                                       self.dialect.stamp(at), execution_id))
