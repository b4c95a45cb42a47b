"""The in-memory store: the same contract as the SQL stores, kept in dicts (nothing survives
the process). Used by tests and by embedded programs that need no durability."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from datetime import datetime

import attrs

from runtime.model import (
    NOT_DEDUPED,
    AuditEntry,
    Event,
    Evidence,
    Execution,
    ExecutionStatus,
    LogEntry,
    Runbook,
    StepState,
    StepStatus,
    TriggerState,
)
from runtime.model.errors import Conflict, erased_already
from runtime.model.records import (
    ENDED,
    QUOTA_ACTIVE,
    QUOTA_RATE,
    ROOT_FULL,
    TENANT_FULL,
    AuditSlice,
    Change,
    ChangeResult,
    FanoutCaps,
    Lifecycle,
    QuotaCaps,
    Receipt,
)
from runtime.store.audit_chain import AuditPolicy
from runtime.store.audit_memory import MemoryAudit
from runtime.store.base import level_at_least, parse_cursor
from runtime.store.decision_links import LinkUses
from runtime.store.quotas import take_token
from runtime.store.slots import MemorySlots

_DedupKey = tuple[str, str, int, str]
_TriggerKey = tuple[str, str | None, str, str]  # (tenant, owner, runbook id, trigger id)


class _TriggerStates:
    """Trigger state, kept like the SQL stores keep it (``runtime.store.trigger_states``)."""

    _triggers: dict[_TriggerKey, TriggerState]
    _runbooks: dict[tuple[str | None, str], list[Runbook]]

    def trigger_states(self) -> list[TriggerState]:
        return list(self._triggers.values())

    def set_trigger_enabled(self, tenant_id: str, owner: str | None, runbook_id: str, trigger_id: str,
                            enabled: bool) -> None:
        key = (tenant_id, owner, runbook_id, trigger_id)
        self._triggers[key] = attrs.evolve(self._triggers.get(key, TriggerState(*key)), enabled=enabled)

    def record_trigger_run(self, tenant_id: str, owner: str | None, runbook_id: str, trigger_id: str, at: datetime,
                           execution_id: str) -> None:
        key = (tenant_id, owner, runbook_id, trigger_id)
        state = self._triggers.get(key, TriggerState(*key))
        if state.last_run_at is None or state.last_run_at <= at:
            self._triggers[key] = attrs.evolve(state, last_run_at=at, last_execution_id=execution_id)

    def all_latest_runbooks(self) -> list[Runbook]:
        return [versions[-1] for versions in self._runbooks.values() if versions]


class _Fanout:
    """The admission of child executions (``FanoutCaps``), as the SQL stores decide it."""

    def __init__(self) -> None:
        self._under_root: dict[str, int] = {}  # root id -> executions started under it
        self._children: dict[str, set[str]] = {}  # tenant -> its children not known to have finished

    def refusal(self, child: Execution, caps: FanoutCaps | None,
                status: Callable[[str | None], ExecutionStatus | None]) -> str | None:
        if caps is None or child.root_execution_id is None:
            return None
        root = child.root_execution_id
        running = {root, child.parent_execution_id}
        if any(s is None or s.finished for s in map(status, running)):
            return ENDED
        if self._under_root.get(root, 0) >= caps.per_root:
            return ROOT_FULL
        children = self._children.setdefault(child.tenant_id, set())
        children -= {c for c in children if (s := status(c)) is not None and s.finished}
        if len(children) >= caps.per_tenant:
            return TENANT_FULL
        self._under_root[root] = self._under_root.get(root, 0) + 1
        children.add(child.id)
        return None


class MemoryStore(_TriggerStates, LinkUses):
    threaded = False
    name = "memory"
    ledger = None  # (one process's)

    def __init__(self) -> None:
        LinkUses.__init__(self)
        self._seq = itertools.count(1)
        self._runbooks: dict[tuple[str | None, str], list[Runbook]] = {}
        self._headers: dict[str, tuple[int, Execution]] = {}
        self._steps: dict[str, dict[str, tuple[int, StepState]]] = {}
        self._by_hash: dict[_DedupKey, list[str]] = {}
        self._by_key: dict[tuple[str, str], str] = {}
        self._logs: dict[str, list[tuple[int, LogEntry]]] = {}  # (seq, entry): seq set when read
        self._audit = MemoryAudit()
        self.audit_policy = AuditPolicy()  # set by ``open_runtime`` from its settings
        self._evidence: dict[str, list[Evidence]] = {}
        self._events: dict[str, Event] = {}
        self._versions: dict[str, int] = {}
        self._slots = MemorySlots()
        self._buckets: dict[str, tuple[float, float]] = {}  # tenant -> (tokens, counted at): start rates
        self._triggers: dict[_TriggerKey, TriggerState] = {}
        self._fanout = _Fanout()
        self._receipts: dict[tuple[str, str], Receipt] = {}
        self._outbox: list[tuple[int, Lifecycle]] = []

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def ping(self) -> None:
        pass

    # -- writes
    def commit(self, changes: Sequence[Change]) -> list[ChangeResult]:
        self._check_whole(changes)
        return [self._slots.apply(change, self._apply(change)) for change in changes]

    def _check_whole(self, changes: Sequence[Change]) -> None:
        """Refuse the batch before any of it is written, as a SQL store's rollback would: a
        message taken that an earlier change (or commit) holds, a payload erased twice.
        (The persistence actor then commits each change alone: none may be written twice.)"""
        held: set[tuple[str, str]] = set()
        erasing: set[tuple[str, int]] = set()
        for change in changes:
            for receipt in change.taken:
                key = (receipt.source_id, receipt.delivery_id)
                if key in self._receipts or key in held:
                    raise Conflict(f"messages {receipt.delivery_id} were taken before: nothing of this change is "
                                   "written")
                held.add(key)
            if change.receipt is not None:
                held.add((change.receipt.source_id, change.receipt.delivery_id))
            for tenant, seq in change.erase:
                if self._audit.is_erased(tenant, seq) or (tenant, seq) in erasing:
                    raise erased_already(seq)
                erasing.add((tenant, seq))

    def admitted(self) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        for execution_id, step_id in self._slots.holding():
            if not step_id and self._status(execution_id) is ExecutionStatus.QUEUED:
                found.append((execution_id, step_id))
            elif step_id and self._steps[execution_id][step_id][1].status is StepStatus.PENDING:
                found.append((execution_id, step_id))
        return found

    def _apply(self, change: Change) -> ChangeResult:
        version, unchanged = None, False
        if change.taken:  # (none held: ``_check_whole`` refused the batch before anything was written)
            self._receipts.update({(r.source_id, r.delivery_id): r for r in change.taken})
        if change.receipt is not None:
            key = (change.receipt.source_id, change.receipt.delivery_id)
            if key in self._receipts:
                return ChangeResult(duplicate=True)
            self._receipts[key] = change.receipt
        if change.new_execution is not None:
            existing = self._duplicate_of(change.new_execution, change.dedup)
            if existing is not None:
                return ChangeResult(existing_id=existing)
            refused = self._fanout.refusal(change.new_execution, change.fanout, self._status)
            if refused is not None:
                return ChangeResult(refused=refused)
            if change.quota is not None:
                refused, retry_after = self._quota_refusal(change.new_execution.tenant_id, change.quota)
                if refused is not None:
                    return ChangeResult(refused=refused, retry_after_s=retry_after)
            self._insert(change.new_execution, change.dedup)
        if change.runbook is not None:
            version, unchanged = self._add_runbook(change.runbook)
        if change.execution is not None:
            seq = self._headers[change.execution.id][0]
            self._headers[change.execution.id] = (seq, _header(change.execution))
        for execution_id, step_id, position, state in change.steps:
            self._steps[execution_id][step_id] = (position, state)
        for entry in change.logs:
            self._logs.setdefault(entry.execution_id, []).append((next(self._seq), entry))
        if change.audit:
            self._audit.append(change.audit, self.audit_policy)
        for tenant, seq in change.erase:
            self._audit.erase(tenant, seq)
        if change.checkpoint_idle is not None:
            self._audit.checkpoint_idle(change.checkpoint_idle, self.audit_policy)
        for item in change.evidence:
            self._evidence.setdefault(item.execution_id, []).append(item)
        for event in change.retain_events:
            self._events[event.id] = event
        for event_id in change.consume_events:
            self._events.pop(event_id, None)
        if change.expire_events_at is not None:
            expired = change.expire_events_at
            self._events = {k: e for k, e in self._events.items() if e.expires_at is None or e.expires_at > expired}
        if change.version is not None:
            self._versions[change.version[0]] = change.version[1]
        self._settle(change)
        return ChangeResult(runbook_version=version, runbook_unchanged=unchanged)

    def _quota_refusal(self, tenant_id: str, caps: QuotaCaps) -> tuple[str | None, float | None]:
        """Why a start of the tenant is over its quota (and when a token comes), or (None, None)."""
        if caps.max_active is not None:
            active = sum(1 for _, e in self._headers.values() if e.tenant_id == tenant_id and not e.status.finished)
            if active >= caps.max_active:
                return QUOTA_ACTIVE, None
        if caps.rate is not None:
            held, at = self._buckets.get(tenant_id, (caps.burst, caps.now_s))
            tokens, wait = take_token(held, at, caps.now_s, caps.rate, caps.burst)
            if wait is not None:
                return QUOTA_RATE, wait
            self._buckets[tenant_id] = (tokens, caps.now_s)
        return None, None

    def _status(self, execution_id: str | None) -> ExecutionStatus | None:
        found = self._headers.get(execution_id or "")
        return found[1].status if found else None

    def _settle(self, change: Change) -> None:
        for key in change.settle:
            if key in self._receipts:
                self._receipts[key] = attrs.evolve(self._receipts[key], pending=None, event=None)
        if (expired := change.expire_receipts_at) is not None:
            self._receipts = {key: r for key, r in self._receipts.items()
                              if r.pending is not None or r.expires_at > expired}
        self._outbox.extend((next(self._seq), event) for event in change.lifecycle)
        if change.lifecycle_done is not None:
            origin, seq = change.lifecycle_done
            self._outbox = [(n, e) for n, e in self._outbox if e.origin != origin or n > seq]

    def _duplicate_of(self, execution: Execution, dedup: bool) -> str | None:
        if execution.idempotency_key is not None:
            existing = self._by_key.get((execution.tenant_id, execution.idempotency_key))
            if existing is not None:
                return existing
        if dedup:
            found = self.find_active(
                execution.tenant_id, execution.runbook_id, execution.runbook_version, execution.input_hash
            )
            return found.id if found else None
        return None

    def _insert(self, execution: Execution, dedup: bool) -> None:
        self._headers[execution.id] = (next(self._seq), _header(execution))
        self._versions[execution.id] = execution.version
        self._steps[execution.id] = {
            step_id: (position, state) for position, (step_id, state) in enumerate(execution.steps.items())
        }
        if dedup:
            key = (execution.tenant_id, execution.runbook_id, execution.runbook_version, execution.input_hash)
            self._by_hash.setdefault(key, []).append(execution.id)
        if execution.idempotency_key is not None:
            self._by_key[(execution.tenant_id, execution.idempotency_key)] = execution.id

    def _add_runbook(self, runbook: Runbook) -> tuple[int, bool]:
        versions = self._runbooks.setdefault((runbook.tenant_id, runbook.id), [])
        if versions and runbook.content_sha256 and versions[-1].content_sha256 == runbook.content_sha256:
            return len(versions), True  # the same document again: its version
        version = len(versions) + 1
        versions.append(attrs.evolve(runbook, version=version))
        return version, False

    # -- reads
    def get_runbook(self, tenant_id: str | None, runbook_id: str, version: int | None = None) -> Runbook | None:
        for owner in _owners(tenant_id):
            versions = self._runbooks.get((owner, runbook_id))
            if versions:
                if version is None:
                    return versions[-1]
                return versions[version - 1] if 0 < version <= len(versions) else None
        return None

    def list_runbooks(self, tenant_id: str | None) -> list[Runbook]:
        latest: dict[str, Runbook] = {}
        for owner in reversed(_owners(tenant_id)):  # the tenant's own shadow the shared ones
            for (rb_owner, rb_id), versions in self._runbooks.items():
                if rb_owner == owner:
                    latest[rb_id] = versions[-1]
        return [latest[key] for key in sorted(latest)]

    def get_execution(self, execution_id: str) -> Execution | None:
        found = self._headers.get(execution_id)
        return self._assemble(found[1]) if found else None

    def _assemble(self, header: Execution) -> Execution:
        rows = sorted(self._steps[header.id].items(), key=lambda item: item[1][0])
        return attrs.evolve(header, steps={step_id: state for step_id, (_, state) in rows},
                            version=self._versions.get(header.id, header.version))

    def find_active(self, tenant_id: str, runbook_id: str, version: int, input_hash: str) -> Execution | None:
        for execution_id in self._by_hash.get((tenant_id, runbook_id, version, input_hash), ()):
            header = self._headers[execution_id][1]
            if header.status not in NOT_DEDUPED:
                return self._assemble(header)
        return None

    def find_by_idempotency_key(self, tenant_id: str, key: str) -> Execution | None:
        execution_id = self._by_key.get((tenant_id, key))
        return self.get_execution(execution_id) if execution_id else None

    def list_executions(
        self,
        tenant_id: str | None,
        *,
        runbook_id: str | None = None,
        status: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[Execution], str | None]:
        before = parse_cursor(cursor)
        rows = sorted(self._headers.values(), key=lambda row: row[0], reverse=True)
        page: list[tuple[int, Execution]] = []
        for seq, header in rows:
            if before is not None and seq >= before:
                continue
            if tenant_id is not None and header.tenant_id != tenant_id:
                continue
            if runbook_id is not None and header.runbook_id != runbook_id:
                continue
            if status is not None and header.status != status:
                continue
            page.append((seq, header))
            if len(page) > limit:
                break
        more = len(page) > limit
        page = page[:limit]
        next_cursor = str(page[-1][0]) if more and page else None
        return [self._assemble(header) for _, header in page], next_cursor

    def awaiting_approval(
        self, tenant_id: str | None, *, limit: int = 50, cursor: str | None = None
    ) -> tuple[list[Execution], str | None]:
        before = parse_cursor(cursor)
        page: list[tuple[int, Execution]] = []
        for seq, header in sorted(self._headers.values(), key=lambda row: row[0], reverse=True):
            if (before is not None and seq >= before) or header.status.finished:
                continue
            if (tenant_id is not None and header.tenant_id != tenant_id) or not self._awaits(header.id):
                continue
            page.append((seq, header))
            if len(page) > limit:
                break
        more = len(page) > limit
        page = page[:limit]
        return [self._assemble(header) for _, header in page], str(page[-1][0]) if more and page else None

    def _awaits(self, execution_id: str) -> bool:
        return any(state.status is StepStatus.AWAITING_APPROVAL for _, state in self._steps[execution_id].values())

    def load_unfinished(self) -> list[Execution]:
        return [self._assemble(h) for _, h in sorted(self._headers.values(), key=lambda row: row[0])
                if not h.status.finished]

    def logs(
        self,
        execution_id: str,
        *,
        step_id: str | None = None,
        level: str | None = None,
        after: int | None = None,
        limit: int = 1000,
    ) -> list[LogEntry]:
        found = [
            (seq, entry) for seq, entry in self._logs.get(execution_id, ())
            if (step_id is None or entry.step_id == step_id)
            and level_at_least(entry.level, level)
            and (after is None or seq > after)
        ]
        return [attrs.evolve(entry, seq=seq) for seq, entry in found[:limit]]

    def evidence(self, execution_id: str) -> list[Evidence]:
        return list(self._evidence.get(execution_id, ()))

    def audit(self, execution_id: str) -> list[AuditEntry]:
        return self._audit.of_execution(execution_id)

    def audit_slice(self, tenant_id: str, from_seq: int = 1, to_seq: int | None = None) -> AuditSlice:
        return self._audit.slice(tenant_id, from_seq, to_seq)

    def audit_seqs(self, tenant_id: str, since: datetime | None, until: datetime | None) -> tuple[int | None, int | None]:
        return self._audit.seqs(tenant_id, since, until)

    def retained_events(self, now: datetime) -> list[Event]:
        return [e for e in self._events.values() if e.expires_at is None or e.expires_at > now]

    def receipt_known(self, source_id: str, delivery_id: str) -> bool:
        return (source_id, delivery_id) in self._receipts

    def receipts_known(self, source_id: str, delivery_ids: Sequence[str]) -> set[str]:
        return {delivery_id for delivery_id in delivery_ids if (source_id, delivery_id) in self._receipts}

    def pending_receipts(self) -> list[Receipt]:
        return [r for r in self._receipts.values() if r.pending is not None]

    def lifecycle_after(self, origin: str, seq: int, limit: int) -> list[tuple[int, Lifecycle]]:
        return [(n, e) for n, e in self._outbox if e.origin == origin and n > seq][:limit]


def _owners(tenant_id: str | None) -> list[str | None]:
    return [tenant_id, None] if tenant_id is not None else [None]


def _header(execution: Execution) -> Execution:
    return attrs.evolve(execution, steps={}) if execution.steps else execution
