"""The audit ledger of the memory store: each tenant's chain in a list, its head and its
checkpoints, with the same arithmetic as the SQL stores (``audit_chain.chain``)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import attrs

from runtime.model import AuditEntry
from runtime.model.records import AuditCheckpoint, AuditSlice
from runtime.security.audit_verify import GENESIS
from runtime.store.audit_chain import (
    AuditPolicy,
    Head,
    chain,
    chained_entry,
    make_checkpoint,
    tenant_of,
)

EMPTY = Head()


class MemoryAudit:
    def __init__(self) -> None:
        self._chains: dict[str, list[AuditEntry]] = {}  # tenant -> entries, seq n at index n - 1
        self._heads: dict[str, Head] = {}  # (EMPTY until a first entry)
        self._checkpoints: dict[str, list[AuditCheckpoint]] = {}
        self._by_execution: dict[str, list[AuditEntry]] = {}

    def append(self, entries: Sequence[AuditEntry], policy: AuditPolicy) -> None:
        by_tenant: dict[str, list[AuditEntry]] = {}
        for entry in entries:
            by_tenant.setdefault(tenant_of(entry), []).append(entry)
        for tenant, mine in by_tenant.items():
            chained, self._heads[tenant], checkpoints = chain(tenant, self._heads.get(tenant) or EMPTY, mine, policy,
                                                             chained_entry)
            self._chains.setdefault(tenant, []).extend(chained)
            for entry in chained:
                self._by_execution.setdefault(entry.execution_id, []).append(entry)
            self._checkpoints.setdefault(tenant, []).extend(checkpoints)

    def checkpoint_idle(self, at: datetime, policy: AuditPolicy) -> None:
        due = at - timedelta(milliseconds=policy.checkpoint_ms)
        for tenant, head in self._heads.items():
            if head.seq > head.checkpoint_seq and head.checkpoint_at is not None and head.checkpoint_at <= due:
                self._checkpoints.setdefault(tenant, []).append(
                    make_checkpoint(tenant, head.seq, head.hash, at, policy.signer))
                self._heads[tenant] = head._replace(checkpoint_seq=head.seq, checkpoint_at=at)

    def is_erased(self, tenant: str, seq: int) -> bool:
        entries = self._chains.get(tenant, [])
        return 0 < seq <= len(entries) and entries[seq - 1].erased

    def erase(self, tenant: str, seq: int) -> None:
        entries = self._chains.get(tenant, [])
        if 0 < seq <= len(entries):
            old = entries[seq - 1]
            entries[seq - 1] = new = attrs.evolve(old, data=None, erased=True)
            mine = self._by_execution[old.execution_id]
            mine[mine.index(old)] = new

    def of_execution(self, execution_id: str) -> list[AuditEntry]:
        return list(self._by_execution.get(execution_id, ()))

    def slice(self, tenant: str, from_seq: int, to_seq: int | None) -> AuditSlice:
        entries = self._chains.get(tenant, [])
        upper = len(entries) if to_seq is None else min(to_seq, len(entries))
        first = max(from_seq, 1)
        prev = entries[first - 2].hash or GENESIS if first > 1 and first - 2 < len(entries) else GENESIS
        checkpoints = tuple(c for c in self._checkpoints.get(tenant, ())
                            if c.seq >= first and (to_seq is None or c.seq <= to_seq))
        return AuditSlice(tenant, tuple(entries[first - 1:upper]), prev, checkpoints)

    def seqs(self, tenant: str, since: datetime | None, until: datetime | None) -> tuple[int | None, int | None]:
        entries = self._chains.get(tenant, [])
        first = next((e.seq for e in entries if since is None or e.at >= since), None) if since else None
        last = next((e.seq for e in reversed(entries) if e.at <= until), None) if until else None
        return first, last
