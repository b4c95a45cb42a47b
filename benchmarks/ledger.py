"""The audit ledger's CPU per entry: chaining one commit's entries as a store does.

Entries of the shape a step writes (``step.started`` without a payload, ``step.succeeded``
with its attempt, an execution's start and end with theirs) are chained four to a commit, as
``runtime/store/audit_chain.chain`` does in every commit: the payload's SHA-256 of its
canonical JSON, the entry's canonical JSON and its SHA-256 after the previous hash. ``entry``
makes the chained ``AuditEntry`` the memory store keeps; ``row`` the row the SQL stores insert
(with the payload as JSON text). The figure is CPU time (``time.process_time``) per entry, the
least of many rounds, so that other work on the machine weighs on it as little as it can.

    python -m benchmarks.ledger [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from benchmarks.common import Report, arguments, run
from runtime.model import AuditEntry
from runtime.model.wire import dumps_data
from runtime.store.audit_chain import AuditPolicy, Head, chain, chained_entry

SHAPES: tuple[tuple[str, Any], ...] = (
    ("step.started", None),
    ("step.succeeded", {"attempt": 1}),
    ("execution.started", {"runbookId": "chain-10", "runbookVersion": 1, "replayOf": None}),
    ("execution.completed", {"error": None}),
)
PER_COMMIT = 4


def entries(count: int) -> list[AuditEntry]:
    at = datetime(2026, 3, 1, tzinfo=UTC)
    return [AuditEntry("0123456789abcdef0123456789abcdef", at + timedelta(microseconds=i), "system",
                       SHAPES[i % 4][0], f"s{i % 10}", None, None, SHAPES[i % 4][1], tenant_id="default")
            for i in range(count)]


def row(entry: AuditEntry, tenant: str, seq: int, prev: str, hash_: str, data_sha: str,
        at_text: str) -> tuple[Any, ...]:
    """As ``runtime/store/audit_sql.write_chained`` makes it (SQLite's time stamps)."""
    return (entry.execution_id, at_text, entry.actor, entry.action, entry.step_id, entry.legal_basis,
            entry.reason, dumps_data(entry.data), tenant, seq, prev, hash_, data_sha)


def cpu_us_per_entry(batch: list[AuditEntry], make: Callable[..., Any], rounds: int) -> float:
    policy, best = AuditPolicy(), float("inf")
    for _ in range(rounds):
        started = time.process_time()
        for first in range(0, len(batch), PER_COMMIT):
            chain("default", Head(), batch[first:first + PER_COMMIT], policy, make)
        best = min(best, time.process_time() - started)
    return best / len(batch) * 1e6


async def main(report: Report, args: argparse.Namespace) -> None:
    count, rounds = (2000, 20) if args.quick else (2000, 100)
    batch = entries(count)
    parameters = {"entries": count, "per_commit": PER_COMMIT, "rounds": rounds}
    report.add("ledger.entry", cpu_us_per_entry(batch, chained_entry, rounds), "us CPU/entry", parameters, "memory")
    report.add("ledger.row", cpu_us_per_entry(batch, row, rounds), "us CPU/entry", parameters, "sqlite")


def cli(argv: Sequence[str] | None = None) -> int:
    args = arguments(__doc__.splitlines()[0], argv, stores=("memory",))
    run(main, "ledger", args)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
