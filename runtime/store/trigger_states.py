"""Trigger state in the SQL stores: enabled or not, and the last run, of each trigger in each tenant.

A trigger is named by the tenant it is switched for, its runbook's owner (that tenant, or
``''`` for a shared runbook), the runbook id and its own id: each tenant switches a shared
runbook's triggers for itself and sees only its own runs of them. The state outlives
versions of the runbook, so a new version keeps whether a trigger is enabled and when it
last ran. Switching a trigger and recording a run each write only their own columns (two
processes never undo each other's write), and a run is recorded only if it is newer than
the one stored.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from runtime.model import TriggerState
from runtime.store.dialect import Dialect
from runtime.store.schema import SHARED, Row, owner_of

#: the migration that created the first table, one row per trigger for every tenant (the same
#: SQL in both dialects); ``tenant_trigger_states`` replaced it
TRIGGER_STATES_TABLE = """CREATE TABLE trigger_states (
    owner TEXT NOT NULL,
    runbook_id TEXT NOT NULL,
    trigger_id TEXT NOT NULL,
    enabled BOOLEAN NOT NULL,
    last_run_at {time},
    last_execution_id TEXT,
    PRIMARY KEY (owner, runbook_id, trigger_id)
)"""

#: The migration to a row per tenant, in a table of its own (``{time}``: the time column's
#: type; ``{tenant_of_data}``: SQL for the ``tenantId`` of an audit entry's ``data``). A
#: tenant's own runbook: its row. A shared runbook's switch goes to the tenant whose switch it
#: was (the last switch in the audit), its last run to the tenant of the execution that ran,
#: and its audit entries, kept under one key for all, to the key of the tenant each names.
#: Running it again changes nothing (an upgrade test replays migrations); the old table is
#: left as it was.
PER_TENANT_MIGRATION = (
    """CREATE TABLE IF NOT EXISTS tenant_trigger_states (
        tenant TEXT NOT NULL,
        owner TEXT NOT NULL,
        runbook_id TEXT NOT NULL,
        trigger_id TEXT NOT NULL,
        enabled BOOLEAN NOT NULL,
        last_run_at {time},
        last_execution_id TEXT,
        PRIMARY KEY (tenant, owner, runbook_id, trigger_id)
    )""",
    """INSERT INTO tenant_trigger_states
       SELECT owner, owner, runbook_id, trigger_id, enabled, last_run_at, last_execution_id
       FROM trigger_states WHERE owner <> ''
       ON CONFLICT DO NOTHING""",
    """INSERT INTO tenant_trigger_states (tenant, owner, runbook_id, trigger_id, enabled)
       SELECT switched.tenant, '', switched.runbook_id, switched.trigger_id, switched.enabled FROM (
           SELECT s.runbook_id, s.trigger_id, s.enabled,
                  (SELECT {tenant_of_data} FROM audit AS a
                   WHERE a.execution_id = 'trigger::' || s.runbook_id || ':' || s.trigger_id
                   ORDER BY a.seq DESC LIMIT 1) AS tenant
           FROM trigger_states AS s WHERE s.owner = '') AS switched
       WHERE switched.tenant IS NOT NULL
       ON CONFLICT DO NOTHING""",
    """INSERT INTO tenant_trigger_states
           (tenant, owner, runbook_id, trigger_id, enabled, last_run_at, last_execution_id)
       SELECT COALESCE((SELECT e.tenant_id FROM executions AS e WHERE e.id = s.last_execution_id), 'default'),
              '', s.runbook_id, s.trigger_id, TRUE, s.last_run_at, s.last_execution_id
       FROM trigger_states AS s WHERE s.owner = '' AND s.last_run_at IS NOT NULL
       ON CONFLICT (tenant, owner, runbook_id, trigger_id) DO UPDATE SET
           last_run_at = excluded.last_run_at, last_execution_id = excluded.last_execution_id
       WHERE tenant_trigger_states.last_run_at IS NULL
          OR tenant_trigger_states.last_run_at < excluded.last_run_at""",
    """UPDATE audit AS a SET execution_id = a.execution_id || '@' || COALESCE({tenant_of_data}, 'default')
       WHERE a.execution_id LIKE 'trigger::%' AND a.execution_id NOT LIKE '%@%'""",
)


def per_tenant_migration(time: str, tenant_of_data: str) -> tuple[str, ...]:
    return tuple(statement.format(time=time, tenant_of_data=tenant_of_data) for statement in PER_TENANT_MIGRATION)


STATES = """
SELECT tenant, owner, runbook_id, trigger_id, enabled, last_run_at, last_execution_id FROM tenant_trigger_states"""

SET_ENABLED = """
INSERT INTO tenant_trigger_states (tenant, owner, runbook_id, trigger_id, enabled) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (tenant, owner, runbook_id, trigger_id) DO UPDATE SET enabled = excluded.enabled"""

RECORD_RUN = """
INSERT INTO tenant_trigger_states (tenant, owner, runbook_id, trigger_id, enabled, last_run_at, last_execution_id)
VALUES (?, ?, ?, ?, TRUE, ?, ?)
ON CONFLICT (tenant, owner, runbook_id, trigger_id) DO UPDATE SET
    last_run_at = excluded.last_run_at, last_execution_id = excluded.last_execution_id
WHERE tenant_trigger_states.last_run_at IS NULL OR tenant_trigger_states.last_run_at <= excluded.last_run_at"""


class TriggerQueries(abc.ABC):
    """The trigger reads and writes of a SQL store."""

    dialect: Dialect

    @abc.abstractmethod
    def _query(self, template: str, params: Sequence[Any] = ()) -> list[Row]: ...

    @abc.abstractmethod
    def _write_one(self, query: str, params: Sequence[Any]) -> None:
        """One statement (rendered already) in a transaction of its own."""

    def trigger_states(self) -> list[TriggerState]:
        return [TriggerState(tenant, None if owner == SHARED else owner, runbook_id, trigger_id, bool(enabled),
                             self.dialect.time(last) if last is not None else None, execution_id)
                for tenant, owner, runbook_id, trigger_id, enabled, last, execution_id in self._query(STATES)]

    def set_trigger_enabled(self, tenant_id: str, owner: str | None, runbook_id: str, trigger_id: str,
                            enabled: bool) -> None:
        self._write_one(self.dialect.sql(SET_ENABLED), (tenant_id, owner_of(owner), runbook_id, trigger_id, enabled))

    def record_trigger_run(self, tenant_id: str, owner: str | None, runbook_id: str, trigger_id: str, at: datetime,
                           execution_id: str) -> None:
        self._write_one(self.dialect.sql(RECORD_RUN), (tenant_id, owner_of(owner), runbook_id, trigger_id,
                                                       self.dialect.stamp(at), execution_id))
