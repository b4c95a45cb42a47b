"""The baseline the audit chain's cost is measured against: the same audit entries written
as before the ledger, one plain insert per entry, with no head, no seq and no hashes.

``unchain()`` switches this process's SQL stores to it (for good: call it first thing in a
process of its own). Entries written so are outside every chain, as entries written before
an upgrade are, and an export leaves them out. ``UNCHAINED`` is the environment variable that
asks a benchmark's child process to call it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from runtime.model import AuditEntry
from runtime.model.wire import dumps_data
from runtime.store import audit_sql
from runtime.store.audit_chain import AuditPolicy, Head, tenant_of
from runtime.store.dialect import Dialect

UNCHAINED = "RUNBOOKS_BENCH_UNCHAINED"


def write_unchained(db: Any, dialect: Dialect, entries: Sequence[AuditEntry], policy: AuditPolicy,
                    known: Mapping[str, Head] | None = None) -> audit_sql.Moved:
    stamp = dialect.stamp
    db.executemany(dialect.sql(audit_sql.INSERT_CHAINED),
                   [(e.execution_id, stamp(e.at), e.actor, e.action, e.step_id, e.legal_basis, e.reason,
                     dumps_data(e.data), tenant_of(e), None, None, None, None) for e in entries])
    return {}


def unchain() -> None:
    audit_sql.write_chained = write_unchained


def unchain_if_asked() -> None:
    if os.environ.get(UNCHAINED):
        unchain()
