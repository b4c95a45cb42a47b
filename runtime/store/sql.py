"""``SqlStore``: what the SQLite and PostgreSQL stores share, written once over a ``Dialect``.

It holds every read of the ``Store`` protocol (runbooks, executions and their pages, logs,
evidence, audit, retained events; trigger state in ``trigger_states.py``, decision links used
in ``decision_links.py``); the writes of a
batch are ``SqlWriter``'s (``sql_writer.py``). A backend (``sqlite.py``, ``postgres.py``)
brings its dialect, its connections (``open``, ``close``, ``ping``) and its way of
committing a batch (``commit``), and fills in three hooks: ``_rows`` (one statement on a
read connection), ``_write_one`` (one statement in a transaction of its own) and
``_executions`` (executions with their steps, read from one snapshot: PostgreSQL does it in
one statement, SQLite in two within one read transaction).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from datetime import datetime
from typing import Any, ClassVar

from runtime.model import LOG_LEVELS, AuditEntry, Event, Evidence, Execution, LogEntry, Runbook
from runtime.model.records import AuditSlice
from runtime.store import audit_sql
from runtime.store.audit_chain import AuditPolicy
from runtime.store.base import parse_cursor
from runtime.store.decision_links import LinkQueries
from runtime.store.dialect import Dialect, marks
from runtime.store.ledger import ClusterLedger
from runtime.store.receipts import ReceiptQueries
from runtime.store.schema import (
    UNFINISHED_SQL,
    ParsedRunbooks,
    Row,
    event_from,
    evidence_from,
    latest_runbooks,
    log_from,
    owners,
    runbook_from,
)
from runtime.store.sql_writer import ACTIVE
from runtime.store.trigger_states import TriggerQueries

#: (owner, version, document text) of the latest version of each runbook
LATEST = """
SELECT owner, version, CAST(document AS TEXT) FROM runbooks AS r
WHERE version = (SELECT MAX(version) FROM runbooks AS m WHERE m.owner = r.owner AND m.id = r.id)"""

# per owner: the version asked for and the latest one (the first owner that has any wins);
# the document as text, so that ``ParsedRunbooks`` parses each version once
RUNBOOK = """
SELECT owner, version, CAST(document AS TEXT) FROM runbooks AS r
WHERE id = ? AND owner IN ({owners}) AND (version = ? OR version =
    (SELECT MAX(version) FROM runbooks AS m WHERE m.owner = r.owner AND m.id = r.id))"""

LOGS = "SELECT seq, execution_id, step_id, level, at, message, data FROM logs"
EVIDENCE = """
SELECT id, execution_id, step_id, kind, sha256, data, created_at FROM evidence WHERE execution_id = ? ORDER BY seq"""
AUDIT = f"SELECT {audit_sql.ENTRY_COLUMNS} FROM audit WHERE execution_id = ? ORDER BY seq"
RETAINED = """
SELECT id, tenant_id, type, correlation_key, payload, received_at, expires_at FROM events
WHERE expires_at IS NULL OR expires_at > ? ORDER BY seq"""


class SqlStore(TriggerQueries, ReceiptQueries, LinkQueries, abc.ABC):
    threaded = True
    ledger: ClusterLedger | None = None  # only a store several processes share has one
    #: the statement selecting ``(seq, ...)`` of executions, completed by a WHERE clause
    EXECUTIONS: ClassVar[str]

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self.audit_policy = AuditPolicy()  # set by ``open_runtime`` from its settings
        self._parsed = ParsedRunbooks()  # (a document is read as text: parsed only once)

    # -- each backend's
    @abc.abstractmethod
    def _rows(self, query: str, params: Sequence[Any] = ()) -> list[Row]:
        """The rows of one statement (none for a write), in autocommit or a read snapshot."""

    @abc.abstractmethod
    def _executions(self, query: str, params: Sequence[Any]) -> list[tuple[int, Execution]]:
        """(seq, execution) of what ``query`` (``EXECUTIONS`` and a WHERE clause) selects,
        each with its steps, from one snapshot."""

    def _query(self, template: str, params: Sequence[Any] = ()) -> list[Row]:
        return self._rows(self.dialect.sql(template), params)

    # -- runbooks
    def get_runbook(self, tenant_id: str | None, runbook_id: str, version: int | None = None) -> Runbook | None:
        scope = owners(tenant_id)
        rows = self._query(RUNBOOK.format(owners=marks(len(scope))), (runbook_id, *scope, version))
        for owner in scope:
            found = {row[1]: row for row in rows if row[0] == owner}
            if found:
                row = found.get(max(found) if version is None else version)
                return self._parsed.get(owner, runbook_id, row[1], row[2]) if row else None
        return None

    def list_runbooks(self, tenant_id: str | None) -> list[Runbook]:
        scope = owners(tenant_id)
        return latest_runbooks(self._query(f"{LATEST} AND owner IN ({marks(len(scope))})", scope))

    def all_latest_runbooks(self) -> list[Runbook]:
        """The latest version of every runbook of every owner (the ones whose triggers are live)."""
        return [runbook_from(document, version) for _, version, document in self._query(LATEST)]

    # -- executions
    def _select(self, where: str, params: Sequence[Any]) -> list[tuple[int, Execution]]:
        return self._executions(self.dialect.sql(f"{self.EXECUTIONS} {where}"), params)

    def _one(self, where: str, params: Sequence[Any]) -> Execution | None:
        found = self._select(where, params)
        return found[0][1] if found else None

    def get_execution(self, execution_id: str) -> Execution | None:
        return self._one("WHERE id = ?", (execution_id,))

    def find_active(self, tenant_id: str, runbook_id: str, version: int, input_hash: str) -> Execution | None:
        return self._one(ACTIVE, (tenant_id, runbook_id, version, input_hash))

    def find_by_idempotency_key(self, tenant_id: str, key: str) -> Execution | None:
        return self._one("WHERE tenant_id = ? AND idempotency_key = ?", (tenant_id, key))

    def load_unfinished(self) -> list[Execution]:
        return [execution for _, execution in self._select(f"WHERE status IN {UNFINISHED_SQL} ORDER BY seq", ())]

    def list_executions(
        self,
        tenant_id: str | None,
        *,
        runbook_id: str | None = None,
        status: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[Execution], str | None]:
        conditions = (("tenant_id = ?", tenant_id), ("runbook_id = ?", runbook_id), ("status = ?", status),
                      ("seq < ?", parse_cursor(cursor)))
        return self._page([], conditions, limit)

    def awaiting_approval(self, tenant_id: str | None, *, limit: int = 50,
                          cursor: str | None = None) -> tuple[list[Execution], str | None]:
        waiting = (f"status IN {UNFINISHED_SQL}", "id IN (SELECT execution_id FROM steps "
                   f"WHERE {self.dialect.step_status} = 'awaiting_approval')")
        return self._page(list(waiting), (("tenant_id = ?", tenant_id), ("seq < ?", parse_cursor(cursor))), limit)

    def _page(self, where: list[str], conditions: Sequence[tuple[str, Any]],
              limit: int) -> tuple[list[Execution], str | None]:
        """Newest first, ``where`` and each condition whose value is given; the next cursor."""
        given = [(condition, value) for condition, value in conditions if value is not None]
        where = [*where, *(condition for condition, _ in given)]
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        params = [value for _, value in given]
        page = self._select(f"{clause} ORDER BY seq DESC LIMIT ?", (*params, max(limit + 1, 0)))
        more = len(page) > limit
        page = page[: max(limit, 0)]
        return [execution for _, execution in page], str(page[-1][0]) if more and page else None

    # -- records
    def logs(
        self,
        execution_id: str,
        *,
        step_id: str | None = None,
        level: str | None = None,
        after: int | None = None,
        limit: int = 1000,
    ) -> list[LogEntry]:
        where = ["execution_id = ?"]
        params: list[Any] = [execution_id]
        if step_id is not None:
            where.append("step_id = ?")
            params.append(step_id)
        if level is not None:
            levels = LOG_LEVELS[LOG_LEVELS.index(level) :]
            where.append(f"level IN ({marks(len(levels))})")
            params.extend(levels)
        if after is not None:
            where.append("seq > ?")
            params.append(after)
        query = f"{LOGS} WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?"
        return [log_from(row, self.dialect.time) for row in self._query(query, (*params, max(limit, 0)))]

    def evidence(self, execution_id: str) -> list[Evidence]:
        return [evidence_from(row, self.dialect.time) for row in self._query(EVIDENCE, (execution_id,))]

    def audit(self, execution_id: str) -> list[AuditEntry]:
        return [audit_sql.entry_from(row, self.dialect) for row in self._query(AUDIT, (execution_id,))]

    def audit_slice(self, tenant_id: str, from_seq: int = 1, to_seq: int | None = None) -> AuditSlice:
        return audit_sql.read_slice(self._query, self.dialect, tenant_id, from_seq, to_seq)

    def audit_seqs(self, tenant_id: str, since: datetime | None, until: datetime | None) -> tuple[int | None, int | None]:
        stamp = self.dialect.stamp
        return audit_sql.seq_bounds(self._query, tenant_id, stamp(since) if since is not None else None,
                                    stamp(until) if until is not None else None)

    def retained_events(self, now: datetime) -> list[Event]:
        return [event_from(row, self.dialect.time) for row in self._query(RETAINED, (self.dialect.stamp(now),))]
