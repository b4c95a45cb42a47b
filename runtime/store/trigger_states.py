"""Trigger state in the SQL stores: enabled or not, and the last run of each trigger.

A trigger is named by its runbook's owner (a tenant, or ``''`` for a shared runbook), the
runbook id and its own id; its state outlives versions of the runbook, so a new version
keeps whether a trigger is enabled and when it last ran. Switching a trigger and recording a
run each write only their own columns (two processes never undo each other's write), and a
run is recorded only if it is newer than the one stored.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, ClassVar

from runtime.model import Runbook, TriggerState
from runtime.model.wire import parse_time
from runtime.store.schema import SHARED, owner_of, runbook_from

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


class TriggerQueries(abc.ABC):
    """The trigger reads and writes of a SQL store (``MARK`` is its placeholder)."""

    MARK: ClassVar[str]
    ALL_LATEST: ClassVar[str]  # (owner, version, document) of the latest version of every runbook
    trigger_stamp: Callable[[datetime], Any]

    @abc.abstractmethod
    def _trigger_rows(self, query: str, params: Sequence[Any]) -> list[tuple[Any, ...]]: ...

    @abc.abstractmethod
    def _trigger_write(self, query: str, params: Sequence[Any]) -> None: ...

    def trigger_states(self) -> list[TriggerState]:
        rows = self._trigger_rows(
            "SELECT owner, runbook_id, trigger_id, enabled, last_run_at, last_execution_id FROM trigger_states", ())
        return [TriggerState(None if owner == SHARED else owner, runbook_id, trigger_id, bool(enabled),
                             parse_time(last) if last is not None else None, execution_id)
                for owner, runbook_id, trigger_id, enabled, last, execution_id in rows]

    def set_trigger_enabled(self, tenant_id: str | None, runbook_id: str, trigger_id: str, enabled: bool) -> None:
        m = self.MARK
        self._trigger_write(
            f"""INSERT INTO trigger_states (owner, runbook_id, trigger_id, enabled) VALUES ({m}, {m}, {m}, {m})
                ON CONFLICT (owner, runbook_id, trigger_id) DO UPDATE SET enabled = excluded.enabled""",
            (owner_of(tenant_id), runbook_id, trigger_id, enabled))

    def record_trigger_run(self, tenant_id: str | None, runbook_id: str, trigger_id: str, at: datetime,
                           execution_id: str) -> None:
        m = self.MARK
        self._trigger_write(
            f"""INSERT INTO trigger_states (owner, runbook_id, trigger_id, enabled, last_run_at, last_execution_id)
                VALUES ({m}, {m}, {m}, TRUE, {m}, {m})
                ON CONFLICT (owner, runbook_id, trigger_id) DO UPDATE SET
                    last_run_at = excluded.last_run_at, last_execution_id = excluded.last_execution_id
                WHERE trigger_states.last_run_at IS NULL OR trigger_states.last_run_at <= excluded.last_run_at""",
            (owner_of(tenant_id), runbook_id, trigger_id, type(self).trigger_stamp(at), execution_id))

    def all_latest_runbooks(self) -> list[Runbook]:
        """The latest version of every runbook of every owner (the ones whose triggers are live)."""
        return [runbook_from(document, version) for _, version, document in self._trigger_rows(self.ALL_LATEST, ())]
