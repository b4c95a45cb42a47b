"""The audit ledger's CPU per entry: chaining one commit's entries as a store does.

Entries of the shape a step writes (``step.started`` without a payload, ``step.succeeded``
with its attempt, an execution's start and end with theirs) are chained four to a commit, as
``runtime/store/audit_chain`` does in every commit: ``prepare`` (the payload's SHA-256 of
its canonical JSON, the entry's canonical text), then ``link`` (its SHA-256 after the
previous hash). ``entry`` makes the chained ``AuditEntry`` the memory store keeps; ``row``
the row the SQL stores insert (with the payload as JSON text). ``once_head_known_us`` is the
part ``link`` takes: a SQL store holds the tenant head's lock for it. The figure is CPU time (``time.process_time``) per entry, the
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
from runtime.store.audit_chain import AuditPolicy, Head, Prepared, chained_entry, link, prepare

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


def base(entry: AuditEntry, at_text: str) -> tuple[Any, ...]:
    """What a SQL row holds of the entry alone, as ``runtime/store/audit_sql.write_chained``
    makes it before it reads the head (SQLite's time stamps)."""
    return (entry.execution_id, at_text, entry.actor, entry.action, entry.step_id, entry.legal_basis,
            entry.reason, dumps_data(entry.data))


def row(p: Prepared, tenant: str, seq: int, prev: str, hash_: str) -> tuple[Any, ...]:
    return (*p.extra, tenant, seq, prev, hash_, p.data_sha)


def cpu_us_per_entry(batch: list[AuditEntry], make: Callable[..., Any], rounds: int,
                     extra: Callable[[AuditEntry, str], Any] | None = None) -> tuple[float, float]:
    """CPU per entry in all, and of it the part done once the head is known (``link``: a
    store holds the head's lock then)."""
    policy, best, best_link = AuditPolicy(), float("inf"), float("inf")
    for _ in range(rounds):
        started, linking = time.process_time(), 0.0
        for first in range(0, len(batch), PER_COMMIT):
            prepared = prepare("default", batch[first:first + PER_COMMIT], extra)
            linked = time.process_time()
            link("default", Head(), prepared, policy, make)
            linking += time.process_time() - linked
        best = min(best, time.process_time() - started)
        best_link = min(best_link, linking)
    return best / len(batch) * 1e6, best_link / len(batch) * 1e6


async def main(report: Report, args: argparse.Namespace) -> None:
    count, rounds = (2000, 20) if args.quick else (2000, 100)
    batch = entries(count)
    parameters = {"entries": count, "per_commit": PER_COMMIT, "rounds": rounds}
    entry_us, entry_link_us = cpu_us_per_entry(batch, chained_entry, rounds)
    report.add("ledger.entry", entry_us, "us CPU/entry", parameters | {"once_head_known_us": round(entry_link_us, 2)},
               "memory")
    row_us, row_link_us = cpu_us_per_entry(batch, row, rounds, base)
    report.add("ledger.row", row_us, "us CPU/entry", parameters | {"once_head_known_us": round(row_link_us, 2)},
               "sqlite")


def cli(argv: Sequence[str] | None = None) -> int:
    args = arguments(__doc__.splitlines()[0], argv, stores=("memory",))
    run(main, "ledger", args)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
