"""What the SQL stores share below their SQL: the plan of a ``commit`` batch, row <-> model
mapping and the migration runner. The statements are in ``sql.py`` and ``sql_writer.py``
(written once over a ``Dialect``); each backend keeps its migrations.

A batch is applied Change by Change, in order, but without one round trip per row: a new
execution and a runbook registration are written at once (their results decide the rest of
their Change), every other part is collected in a ``Pending`` and written with one
``executemany`` per table. ``Pending`` keeps only the last header and step state of each
execution, so the last write of a batch wins, as it does in the memory store.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, Protocol

import attrs

from runtime.model import AuditEntry, Event, Evidence, Execution, LogEntry, Runbook, StepState
from runtime.model.canonical import canonical_sha256
from runtime.model.records import Change, ChangeResult, Receipt
from runtime.model.wire import dumps, dumps_data, from_json, to_json

#: ``model.NOT_DEDUPED`` as SQL: these executions leave the idempotent-start index
NOT_DEDUPED_SQL = "('failed', 'cancelled', 'timed_out')"
#: the statuses that are not ``finished`` (what ``load_unfinished`` loads), as SQL
UNFINISHED_SQL = "('queued', 'pending', 'running', 'awaiting_approval', 'pausing', 'paused')"
#: the statuses that are ``finished``, as SQL
FINISHED_SQL = "('completed', 'failed', 'cancelled', 'timed_out')"
#: the ``owner`` of a shared runbook (NULL would not take part in the unique key)
SHARED = ""

Row = tuple[Any, ...]
Stamp = Callable[[datetime], Any]  # a datetime as the backend stores it
Time = Callable[[Any], datetime]  # and back


def owner_of(tenant_id: str | None) -> str:
    return SHARED if tenant_id is None else tenant_id


def owners(tenant_id: str | None) -> list[str]:
    """Where a tenant looks for runbooks: its own first, then the shared ones."""
    return [tenant_id, SHARED] if tenant_id is not None else [SHARED]


# -- commit


class BatchWriter(Protocol):
    """One backend's writes inside the transaction of one batch."""

    def insert_executions(self, starts: Sequence[Change]) -> list[str | None]:
        """Insert each start's ``new_execution`` unless a unique index already holds one (then
        the id of that existing execution), and the lease a start asks for with it."""

    def admit(self, change: Change) -> str | None:
        """Admit a child just inserted (``change.fanout``), or take it out again and say why not
        (``records.ENDED``, ``ROOT_FULL``, ``TENANT_FULL``)."""

    def quota(self, change: Change, later: Sequence[str]) -> tuple[str | None, float | None]:
        """Keep a start just inserted within its tenant's quota (``change.quota``), or take it
        out again: (``records.QUOTA_ACTIVE`` or ``QUOTA_RATE``, seconds until a token comes)."""

    def add_runbook(self, runbook: Runbook) -> tuple[int, bool]:
        """Store the next version of the runbook, unless its latest version holds the same
        document (then nothing is written); (its version, whether it was there already)."""

    def add_receipt(self, receipt: Receipt) -> bool:
        """Insert a source's receipt at once; False if the store holds it already (a repeat)."""

    def events(self, change: Change) -> ChangeResult:
        """A publish, waits that start and stop: the stores shared by several processes."""

    def publishes(self, changes: Sequence[Change]) -> list[ChangeResult]:
        """A run of publishes (nothing else in them): as ``events`` one after another."""

    def slots(self, changes: Sequence[Change], results: list[ChangeResult]) -> list[ChangeResult]:
        """The queues of concurrency keys after the batch (``slots.py``): the results, with the
        executions given a slot named in them."""

    def flush(self, pending: Pending) -> None:
        """Write everything collected, one ``executemany`` per table."""

    def seal(self) -> None:
        """Write what waits for the end of the batch (the audit entries, chained)."""


@attrs.define
class Pending:
    """The bulk parts of a batch, in order, waiting for one ``executemany`` per table."""

    headers: dict[str, Execution] = attrs.Factory(dict)
    steps: dict[tuple[str, str], tuple[int, StepState]] = attrs.Factory(dict)
    logs: list[LogEntry] = attrs.Factory(list)
    audit: list[AuditEntry] = attrs.Factory(list)
    erase: list[tuple[str, int]] = attrs.Factory(list)  # audit payloads to erase (tenant, seq)
    checkpoint_idle: datetime | None = None  # checkpoint the audit chains idle since their checkpoint was due
    evidence: list[Evidence] = attrs.Factory(list)
    events: dict[str, Event] = attrs.Factory(dict)
    consumed: dict[str, None] = attrs.Factory(dict)  # deleted before ``events`` are written
    expired_at: datetime | None = None  # retained events expired at this time are deleted (before ``events``)
    versions: dict[str, int] = attrs.Factory(dict)  # execution id -> its newest version
    fences: dict[str, tuple[int, str]] = attrs.Factory(dict)  # execution id -> (epoch, owner) to check
    outcomes: list[tuple[str, Any]] = attrs.Factory(list)  # (command id, outcome)
    start_keys: set[tuple[object, ...]] = attrs.Factory(set)  # unique keys the headers touch
    settled: dict[tuple[str, str], None] = attrs.Factory(dict)  # receipts whose pending delivery is done
    taken: list[Any] = attrs.Factory(list)  # receipts of messages taken with these changes (``Receipt``)
    receipts_expired_at: datetime | None = None  # settled receipts expired at this time are deleted
    lifecycle: list[Any] = attrs.Factory(list)  # outbox entries (``Lifecycle``), in commit order
    lifecycle_done: dict[str, int] = attrs.Factory(dict)  # origin -> outbox rows up to this seq are published

    def add(self, change: Change) -> None:
        if change.execution is not None:
            header = change.execution
            self.headers[header.id] = header
            self.start_keys.update(_start_keys(header))
        for execution_id, step_id, position, state in change.steps:
            self.steps[execution_id, step_id] = (position, state)
        self.logs.extend(change.logs)
        self.audit.extend(change.audit)
        self.erase.extend(change.erase)
        if (idle := change.checkpoint_idle) is not None:
            self.checkpoint_idle = max(idle, self.checkpoint_idle or idle)
        self.evidence.extend(change.evidence)
        for event in change.retain_events:
            self.events[event.id] = event
        for event_id in change.consume_events:
            self.events.pop(event_id, None)
            self.consumed[event_id] = None
        if change.version is not None:
            execution_id, version = change.version
            self.versions[execution_id] = max(version, self.versions.get(execution_id, 0))
        if change.fence is not None:
            execution_id, epoch, owner = change.fence
            self.fences[execution_id] = (epoch, owner)
        self.outcomes.extend(change.outcomes)
        if change.expire_events_at is not None:
            self.expired_at = max(change.expire_events_at, self.expired_at or change.expire_events_at)
        self.settled.update(dict.fromkeys(change.settle))
        self.taken.extend(change.taken)
        self.lifecycle.extend(change.lifecycle)
        if change.lifecycle_done is not None:
            origin, seq = change.lifecycle_done
            self.lifecycle_done[origin] = max(seq, self.lifecycle_done.get(origin, 0))
        if (expired := change.expire_receipts_at) is not None:
            self.receipts_expired_at = max(expired, self.receipts_expired_at or expired)

    @property
    def empty(self) -> bool:
        return not (self.headers or self.steps or self.logs or self.audit or self.evidence or self.erase
                    or self.checkpoint_idle
                    or self.events or self.consumed or self.versions or self.outcomes or self.expired_at
                    or self.settled or self.taken or self.receipts_expired_at or self.lifecycle or self.lifecycle_done)

    def header_rows(self, stamp: Stamp) -> list[Row]:
        """The headers to write, each with the newest version of its execution."""
        return [header_row(h, stamp, self.versions.get(h.id, 0)) for h in self.headers.values()]

    def version_rows(self) -> list[Row]:
        """(version, id) of the executions whose header is not rewritten."""
        return [(version, eid) for eid, version in self.versions.items() if eid not in self.headers]

    def add_new(self, execution: Execution) -> None:
        for position, (step_id, state) in enumerate(execution.steps.items()):
            self.steps[execution.id, step_id] = (position, state)

    def touches(self, execution: Execution) -> bool:
        """Could a pending header change whether this new execution is a duplicate?"""
        return bool(self.start_keys) and not self.start_keys.isdisjoint(_start_keys(execution))


def _start_keys(execution: Execution) -> list[tuple[object, ...]]:
    """The keys of the two unique indexes a start can hit."""
    keys: list[tuple[object, ...]] = [
        ("hash", execution.tenant_id, execution.runbook_id, execution.runbook_version, execution.input_hash)
    ]
    if execution.idempotency_key is not None:
        keys.append(("key", execution.tenant_id, execution.idempotency_key))
    return keys


def apply_batch(changes: Sequence[Change], writer: BatchWriter) -> list[ChangeResult]:
    """The memory store's ``commit``, in SQL: call inside the batch's transaction."""
    pending = Pending()
    results: list[ChangeResult] = []
    index = 0
    while index < len(changes):
        starts = _starts_at(changes, index, pending)
        if starts:
            for position, (change, existing) in enumerate(zip(starts, writer.insert_executions(starts),
                                                              strict=True)):
                if existing is not None:
                    results.append(ChangeResult(existing_id=existing))
                    continue
                refused = writer.admit(change) if change.fanout is not None else None
                retry_after = None
                if refused is None and change.quota is not None:
                    later = [c.new_execution.id for c in starts[position + 1:] if c.new_execution is not None]
                    refused, retry_after = writer.quota(change, later)
                if refused is not None:
                    results.append(ChangeResult(refused=refused, retry_after_s=retry_after))
                    continue
                assert change.new_execution is not None
                pending.add_new(change.new_execution)
                pending.add(change)
                results.append(ChangeResult())
            index += len(starts)
            continue
        change = changes[index]
        if change.new_execution is not None:  # a header before it may free or take its slot: in order
            writer.flush(pending)
            pending = Pending()
            continue
        if change.receipt is not None and not writer.add_receipt(change.receipt):
            results.append(ChangeResult(duplicate=True))  # a repeated message: nothing of it is written
            index += 1
            continue
        run = _publishes_at(changes, index)
        if len(run) > 1:  # (several publishes in a row: their lookups go out together)
            for published, result in zip(run, writer.publishes(run), strict=True):
                pending.add(published)
                results.append(result)
            index += len(run)
            continue
        result = ChangeResult()
        if change.runbook is not None:
            version, unchanged = writer.add_runbook(change.runbook)
            result = ChangeResult(runbook_version=version, runbook_unchanged=unchanged)
        if change.publish is not None or change.waits or change.unwaits:
            result = writer.events(change)  # at once, in order: what a later wait or publish sees
        pending.add(change)
        results.append(result)
        index += 1
    writer.flush(pending)  # (also when nothing is pending: what the batch announces goes out)
    results = writer.slots(changes, results)  # (before the audit ledger: its heads are locked last)
    writer.seal()
    return results


def _publishes_at(changes: Sequence[Change], index: int) -> list[Change]:
    """The run of changes from ``index`` on that are publishes and nothing else."""
    run: list[Change] = []
    for change in changes[index:]:
        if change.publish is None or change.waits or change.unwaits or change.runbook is not None \
                or change.new_execution is not None or change.receipt is not None:
            break
        run.append(change)
    return run


def _starts_at(changes: Sequence[Change], index: int, pending: Pending) -> list[Change]:
    """The run of starts from ``index`` on that no pending header could decide (inserted at once)."""
    run: list[Change] = []
    for change in changes[index:]:
        new = change.new_execution
        if new is None or pending.touches(new):
            break
        run.append(change)
    return run


# -- model -> rows (the column order is in each docstring; the backends' SQL follows it)


def header_json(execution: Execution) -> str:
    return dumps(attrs.evolve(execution, steps={}) if execution.steps else execution)


def header_row(execution: Execution, stamp: Stamp, version: int = 0) -> Row:
    """(id, tenant_id, runbook_id, runbook_version, status, input_hash, idempotency_key,
    created_at, header, version)"""
    return (
        execution.id,
        execution.tenant_id,
        execution.runbook_id,
        execution.runbook_version,
        execution.status.value,
        execution.input_hash,
        execution.idempotency_key,
        stamp(execution.created_at),
        header_json(execution),
        max(execution.version, version),
    )


def step_rows(pending: Pending) -> list[Row]:
    """(execution_id, step_id, position, state)"""
    return [(eid, sid, pos, dumps(state)) for (eid, sid), (pos, state) in pending.steps.items()]


def log_row(entry: LogEntry, stamp: Stamp) -> Row:
    """(execution_id, step_id, level, at, message, data)"""
    return (entry.execution_id, entry.step_id, entry.level, stamp(entry.at), entry.message, dumps_data(entry.data))


def evidence_row(item: Evidence, stamp: Stamp) -> Row:
    """(id, execution_id, step_id, kind, sha256, data, created_at)"""
    return (item.id, item.execution_id, item.step_id, item.kind, item.sha256, dumps(item.data), stamp(item.created_at))


def event_row(event: Event, stamp: Stamp) -> Row:
    """(id, tenant_id, type, correlation_key, payload, received_at, expires_at)"""
    expires = stamp(event.expires_at) if event.expires_at is not None else None
    return (
        event.id, event.tenant_id, event.type, event.correlation_key, dumps(event.payload),
        stamp(event.received_at), expires,
    )


def runbook_row(runbook: Runbook, now: datetime, stamp: Stamp) -> Row:
    """(owner, id, document, created_at): the runbook's JSON without ``version``, which is
    a column of its own (assigned by the insert)."""
    document = to_json(runbook)
    document.pop("version", None)
    created = runbook.created_at or now
    return (owner_of(runbook.tenant_id), runbook.id, json.dumps(document, separators=(",", ":"), ensure_ascii=False), stamp(created))


# -- rows -> model


def loads(value: Any) -> Any:
    """A JSON column: text from SQLite, already parsed from psycopg."""
    return json.loads(value) if isinstance(value, str) else value


def execution_from(header: Any, steps: Iterable[tuple[str, Any]], version: int, epoch: int = 0) -> Execution:
    data = dict(loads(header))
    data["steps"] = {step_id: loads(state) for step_id, state in steps}
    data["version"] = version  # the columns: the header is not rewritten at every change
    data["epoch"] = epoch
    return from_json(data, Execution)


def same_document(runbook: Runbook, stored: Any) -> bool:
    """Whether a stored version (its JSON) holds the runbook's document, by content hash."""
    data = loads(stored)
    return bool(runbook.content_sha256) and (data.get("contentSha256") or canonical_sha256(data.get("document"))) \
        == runbook.content_sha256


def runbook_from(document: Any, version: int) -> Runbook:
    data = dict(loads(document))
    data["version"] = version
    return from_json(data, Runbook)


class ParsedRunbooks:
    """Stored runbook versions never change, so a store parses each one once (``runbook_from``
    is the costly part of reading a runbook, and every start reads one). Thread-safe enough:
    two threads may both parse a version, and either result is the same."""

    def __init__(self) -> None:
        self._parsed: dict[tuple[str, str, int], Runbook] = {}

    def get(self, owner: str, runbook_id: str, version: int, document: Any) -> Runbook:
        key = (owner, runbook_id, version)
        runbook = self._parsed.get(key)
        if runbook is None:
            runbook = self._parsed[key] = runbook_from(document, version)
        return runbook


def log_from(row: Row, time: Time) -> LogEntry:
    """(seq, execution_id, step_id, level, at, message, data)"""
    seq, execution_id, step_id, level, at, message, data = row
    return LogEntry(execution_id, time(at), level, message, step_id, loads(data), seq)


def evidence_from(row: Row, time: Time) -> Evidence:
    """(id, execution_id, step_id, kind, sha256, data, created_at)"""
    id_, execution_id, step_id, kind, sha256, data, created_at = row
    return Evidence(id_, execution_id, step_id, kind, sha256, loads(data), time(created_at))


def event_from(row: Row, time: Time) -> Event:
    """(id, tenant_id, type, correlation_key, payload, received_at, expires_at)"""
    id_, tenant_id, type_, key, payload, received_at, expires_at = row
    expires = time(expires_at) if expires_at is not None else None
    return Event(id_, tenant_id, type_, key, loads(payload), time(received_at), expires)


def latest_runbooks(rows: Iterable[Row]) -> list[Runbook]:
    """``list_runbooks`` from the latest (owner, version, document) of each (owner, id):
    the tenant's own runbooks shadow the shared ones of the same id."""
    found: dict[str, tuple[bool, Runbook]] = {}
    for owner, version, document in rows:
        own = owner != SHARED
        runbook = runbook_from(document, version)
        if runbook.id not in found or own:
            found[runbook.id] = (own, runbook)
    return [found[key][1] for key in sorted(found)]


# -- migrations

#: the indexes of the first migration, the same SQL in both dialects (after its tables)
INDEXES = (
    f"""CREATE UNIQUE INDEX executions_active_hash
        ON executions (tenant_id, runbook_id, runbook_version, input_hash)
        WHERE deduplicated AND status NOT IN {NOT_DEDUPED_SQL}""",
    """CREATE UNIQUE INDEX executions_idempotency_key ON executions (tenant_id, idempotency_key)
        WHERE idempotency_key IS NOT NULL""",
    "CREATE INDEX executions_listing ON executions (tenant_id, runbook_id, status, seq DESC)",
    "CREATE INDEX executions_status ON executions (status)",
    "CREATE INDEX logs_by_step ON logs (execution_id, step_id, seq)",
    "CREATE INDEX audit_by_execution ON audit (execution_id, seq)",
    "CREATE INDEX evidence_by_execution ON evidence (execution_id, seq)",
    "CREATE INDEX events_match ON events (tenant_id, type, correlation_key)",
)



def fanout_migration(add_column: str) -> tuple[str, ...]:
    """The migration that lets a store admit child executions (``FanoutCaps``): each
    execution's root (a child's; NULL for a root), how many executions were started under it
    (a root's), and an index of each tenant's unfinished children. ``add_column``: the
    dialect's ``ADD COLUMN`` (PostgreSQL's with ``IF NOT EXISTS``, so that running it again
    changes nothing, as an upgrade test does)."""
    return (
        f"ALTER TABLE executions {add_column} root_id TEXT",
        f"ALTER TABLE executions {add_column} descendants INTEGER NOT NULL DEFAULT 0",
        f"""CREATE INDEX IF NOT EXISTS executions_active_children ON executions (tenant_id)
            WHERE root_id IS NOT NULL AND status NOT IN {FINISHED_SQL}""",
    )

Execute = Callable[[str], list[Row]]


def migrate(transaction: Callable[[], AbstractContextManager[Execute]], migrations: Sequence[Sequence[str]]) -> int:
    """Apply the migrations the schema lacks, each in one transaction; the schema version.

    ``transaction()`` opens a transaction that holds the backend's migration lock and in
    which the ``schema_version`` table exists; it yields a function running one statement.
    """
    latest = len(migrations)
    for number, statements in enumerate(migrations, start=1):
        with transaction() as execute:
            current = int(execute("SELECT COALESCE(MAX(version), 0) FROM schema_version")[0][0])
            if current > latest:
                raise RuntimeError(
                    f"the store's schema version {current} is newer than this program knows ({latest}); "
                    "upgrade the program"
                )
            if current >= number:
                continue
            for statement in statements:
                execute(statement)
            execute(f"INSERT INTO schema_version (version) VALUES ({number:d})")
    return latest
