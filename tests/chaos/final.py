"""The state a round ended in: the database's rows (read directly, not through a process), what
each process answered for each execution once the faults healed, and the service's calls.

``read_database`` reads one schema with psycopg; ``Snapshot`` is plain data, so the checker's
tests can build one by hand.
"""

from __future__ import annotations

from typing import Any

import attrs
import psycopg
from psycopg import sql

from tests.chaos.service import Call

FINISHED = ("completed", "failed", "cancelled", "timed_out")


@attrs.frozen
class ExecutionRow:
    id: str
    status: str
    runbook_id: str
    steps: dict[str, dict[str, Any]] = attrs.field(factory=dict)  # step id -> its state as stored
    owner: str | None = None  # the instance id owning it (None: released, or finished)
    tag: str | None = None  # the tag of the start request that made it (its input's ``tag``)
    replay_of: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


@attrs.frozen
class AuditRow:
    execution_id: str
    actor: str
    action: str
    step_id: str | None
    reason: str | None


@attrs.frozen
class CommandRow:
    id: str
    execution_id: str
    kind: str
    applied_after_s: float | None  # None: never applied
    outcome: Any


@attrs.frozen
class WaitRow:
    execution_id: str
    step_id: str
    execution_status: str | None


@attrs.frozen
class Read:
    """What ``process`` answered last for ``execution`` (None: no answer) while the checker waited for
    it to agree with the database."""

    process: str
    execution: str
    seen: str | None


@attrs.frozen
class CommandRead:
    """What ``process`` answered for a command that was answered ``202 queued`` (``GET
    .../commands/{id}``: queued, applied or refused; None: no answer)."""

    process: str
    command_id: str
    seen: str | None


@attrs.define
class Snapshot:
    executions: dict[str, ExecutionRow] = attrs.Factory(dict)
    audit: list[AuditRow] = attrs.Factory(list)
    commands: list[CommandRow] = attrs.Factory(list)
    waits: list[WaitRow] = attrs.Factory(list)
    retained: list[Any] = attrs.Factory(list)  # payloads of events no step took yet
    reads: list[Read] = attrs.Factory(list)
    command_reads: list[CommandRead] = attrs.Factory(list)
    calls: list[Call] = attrs.Factory(list)
    instances: dict[str, bool] = attrs.Factory(dict)  # an owner (instance or incarnation) -> its lease runs
    names: dict[str, str] = attrs.Factory(dict)  # an owner -> the instance id it is an incarnation of


def read_database(dsn: str, schema: str) -> Snapshot:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        steps: dict[str, dict[str, dict[str, Any]]] = {}
        for execution_id, step_id, state in conn.execute("SELECT execution_id, step_id, state FROM steps"):
            steps.setdefault(execution_id, {})[step_id] = state
        executions = {row[0]: ExecutionRow(row[0], row[1], row[2], steps.get(row[0], {}), *row[3:])
                      for row in conn.execute("SELECT id, status, runbook_id, owner, header->'input'->>'tag', "
                                              "header->>'replayOf' FROM executions")}
        instances, names = _owners(conn)
        audit = [AuditRow(*row) for row in conn.execute(
            "SELECT execution_id, actor, action, step_id, reason FROM audit ORDER BY seq")]
        commands = [CommandRow(*row) for row in conn.execute(
            "SELECT id, execution_id, kind, EXTRACT(EPOCH FROM applied_at - created_at)::float, outcome "
            "FROM commands ORDER BY seq")]
        waits = [WaitRow(*row) for row in conn.execute(
            "SELECT w.execution_id, w.step_id, e.status FROM waits w LEFT JOIN executions e ON e.id = w.execution_id")]
        retained = [row[0] for row in conn.execute("SELECT payload FROM events ORDER BY seq")]
    return Snapshot(executions, audit, commands, waits, retained, instances=instances, names=names)


def _owners(conn: psycopg.Connection[Any]) -> tuple[dict[str, bool], dict[str, str]]:
    """Who may own executions and whether their lease runs: one row per incarnation (``incarnations``)
    or, in schemas from before incarnations, one per instance id (``instances``)."""
    if conn.execute("SELECT to_regclass('incarnations')").fetchone() not in (None, (None,)):
        rows = conn.execute("SELECT owner, expires_at > now() AND NOT replaced, instance_id FROM incarnations")
    else:
        rows = conn.execute("SELECT id, expires_at > now(), id FROM instances")
    found = list(rows)
    return {row[0]: row[1] for row in found}, {row[0]: row[2] for row in found}
