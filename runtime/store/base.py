"""The store protocol: one synchronous interface for the memory, SQLite and PostgreSQL stores.

A store that several processes share has a ``ledger`` (``ledger.ClusterLedger``): the
runtime joins a cluster exactly when its store has one. The memory and SQLite stores
belong to one process (None).

Methods are synchronous. A store with ``threaded = True`` is only ever called from a worker
thread (``trio.to_thread.run_sync``): writes by the PersistenceActor, one batch at a time,
reads through ``Runtime`` helpers. ``commit`` applies a batch of Changes in ONE transaction
and returns one ChangeResult per Change, in order; it either commits all of them or raises
(and then nothing of the batch is written).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from runtime.model import AuditEntry, Event, Evidence, Execution, LogEntry, Runbook, TriggerState
from runtime.model.records import AuditSlice, Change, ChangeResult, Lifecycle, Receipt
from runtime.store.audit_chain import AuditPolicy
from runtime.store.ledger import ClusterLedger


class Store(Protocol):
    threaded: bool
    name: str
    audit_policy: AuditPolicy  # checkpoints of the audit ledger, and their signing key


    @property
    def ledger(self) -> ClusterLedger | None:
        """What several processes sharing this store need of it; None for a store of one process."""

    def open(self) -> None:
        """Connect, create or migrate the schema."""

    def close(self) -> None: ...

    def ping(self) -> None:
        """Raise if the store cannot serve (readiness)."""

    def commit(self, changes: Sequence[Change]) -> list[ChangeResult]: ...

    # -- runbooks
    def get_runbook(self, tenant_id: str | None, runbook_id: str, version: int | None = None) -> Runbook | None:
        """The tenant's own runbook (else the shared one); the latest version unless given."""

    def list_runbooks(self, tenant_id: str | None) -> list[Runbook]:
        """The latest version of every runbook the tenant sees (own and shared), by id."""

    # -- executions
    def get_execution(self, execution_id: str) -> Execution | None: ...

    def find_active(self, tenant_id: str, runbook_id: str, version: int, input_hash: str) -> Execution | None:
        """The deduplicated execution with this input hash that is not failed/cancelled/timed_out."""

    def find_by_idempotency_key(self, tenant_id: str, key: str) -> Execution | None: ...

    def list_executions(
        self,
        tenant_id: str | None,
        *,
        runbook_id: str | None = None,
        status: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[Execution], str | None]:
        """Newest first; ``cursor`` is the opaque ``next`` of the previous page."""

    def load_unfinished(self) -> list[Execution]: ...

    def admitted(self) -> list[tuple[str, str]]:
        """(execution id, step id or "") of what holds a slot of its concurrency key but has not
        started: an execution still ``queued``, a step still ``pending`` (given a slot by a
        commit whose process did not let it start yet)."""

    def awaiting_approval(
        self, tenant_id: str | None, *, limit: int = 50, cursor: str | None = None
    ) -> tuple[list[Execution], str | None]:
        """Unfinished executions with a step in ``awaiting_approval``, newest first, paged
        like ``list_executions``."""

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
        """Oldest first; ``level`` is a minimum level, ``after`` a ``seq``."""

    def evidence(self, execution_id: str) -> list[Evidence]: ...

    def audit(self, execution_id: str) -> list[AuditEntry]: ...

    # -- the audit ledger (runtime/store/audit_chain.py)
    def audit_slice(self, tenant_id: str, from_seq: int = 1, to_seq: int | None = None) -> AuditSlice:
        """The tenant's chained entries from ``from_seq`` to ``to_seq`` (None: the end), the
        hash before them, and the checkpoints in that range."""

    def audit_seqs(self, tenant_id: str, since: datetime | None, until: datetime | None) -> tuple[int | None, int | None]:
        """The first seq written at or after ``since`` and the last at or before ``until``."""

    def retained_events(self, now: datetime) -> list[Event]:
        """Retained events not yet consumed and not expired at ``now``, oldest first."""

    # -- receipts of event sources (runtime/store/receipts.py)
    def receipt_known(self, source_id: str, delivery_id: str) -> bool:
        """Whether a message of this source with this delivery id was taken (and not yet swept)."""

    def receipts_known(self, source_id: str, delivery_ids: Sequence[str]) -> set[str]:
        """The ones of ``delivery_ids`` whose message of this source was taken (one read)."""

    def pending_receipts(self) -> list[Receipt]:
        """Receipts whose event was not yet handed to every step it was for (one-process stores)."""

    def lifecycle_after(self, origin: str, seq: int, limit: int) -> list[tuple[int, Lifecycle]]:
        """(seq, event) of the outbox committed by ``origin`` after ``seq``, in commit order."""

    # -- triggers (runtime/store/trigger_states.py)
    def all_latest_runbooks(self) -> list[Runbook]:
        """The latest version of every runbook of every owner."""

    def trigger_states(self) -> list[TriggerState]:
        """The stored state of every trigger in every tenant (one never switched nor run has none)."""

    def set_trigger_enabled(self, tenant_id: str, owner: str | None, runbook_id: str, trigger_id: str,
                            enabled: bool) -> None:
        """Switch the trigger of ``owner``'s runbook (None: shared) for ``tenant_id``."""

    def record_trigger_run(self, tenant_id: str, owner: str | None, runbook_id: str, trigger_id: str, at: datetime,
                           execution_id: str) -> None:
        """Record a run in ``tenant_id`` unless a later one is already recorded there."""

    # -- decision links (runtime/store/decision_links.py)
    def claim_link(self, link_id: str, claimant: str, execution_id: str, step_id: str, approver: str,
                   at: datetime) -> datetime | None:
        """Record a decision link's use: None if this claim is the first, else when it was first used."""

    def link_used(self, link_id: str) -> datetime | None: ...


def level_at_least(level: str, minimum: str | None) -> bool:
    from runtime.model import LOG_LEVELS

    if minimum is None:
        return True
    return LOG_LEVELS.index(level) >= LOG_LEVELS.index(minimum)


def parse_cursor(cursor: str | None) -> int | None:
    """Cursors are the ``seq`` of the last item of the previous page, as text."""
    from runtime.model.errors import Problem, ValidationError

    if cursor is None or cursor == "":
        return None
    if not (cursor.isascii() and cursor.isdigit() and len(cursor) <= 19 and int(cursor) <= 2**63 - 1):
        raise ValidationError([Problem("cursor", "not a cursor returned by this API")])
    return int(cursor)
