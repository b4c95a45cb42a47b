"""The audit ledger in the stores: each tenant's entries chained by hash as they commit, and
checkpoints of the chain's head.

``chain`` is the arithmetic every store shares: given the tenant's head (its last ``seq`` and
``hash``, and its last checkpoint) and the entries of one commit in order, it gives each entry
its ``seq``, ``prevHash``, ``dataSha256`` and ``hash`` (``runtime/security/audit_verify.py``
defines them) and says whether a checkpoint is due: ``AuditPolicy.checkpoint_every`` entries
since the last one, or ``checkpoint_ms`` of the entries' own time. A checkpoint is signed when
the policy has a signer (its key is the process's; the database never holds it).

The SQL stores keep the head in ``audit_heads``, one row per tenant, read and locked in the
transaction that writes the entries (PostgreSQL: the row lock of ``INSERT ... ON CONFLICT DO
UPDATE``; SQLite has one writer), so two processes never give out the same ``seq``.
"""

from __future__ import annotations

import hashlib
import json
import json.encoder
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple, TypeVar

import attrs

from runtime.model import AuditEntry
from runtime.model.canonical import canonical
from runtime.model.records import AuditCheckpoint
from runtime.model.wire import dumps_data, format_time
from runtime.security.audit_signing import CheckpointSigner
from runtime.security.audit_verify import GENESIS, payload_sha256

_NULL_SHA256 = payload_sha256(None)
_string = json.encoder.encode_basestring  # (JSON string escaping as RFC 8785's, without lone surrogates)
T = TypeVar("T")
#: where an entry that names no tenant is chained
DEFAULT_TENANT = "default"


@attrs.frozen
class AuditPolicy:
    """When checkpoints are taken, and the key that signs them (None: unsigned)."""

    checkpoint_every: int = 1000
    checkpoint_ms: int = 60_000
    signer: CheckpointSigner | None = None


class Head(NamedTuple):
    """A tenant's chain: its last entry and its last checkpoint (``checkpoint_at``: when the
    time to the next one started counting, the first entry's time before any checkpoint).
    (A tuple: one is made at every commit.)"""

    seq: int = 0
    hash: str = GENESIS
    checkpoint_seq: int = 0
    checkpoint_at: datetime | None = None


def tenant_of(entry: AuditEntry) -> str:
    return entry.tenant_id or DEFAULT_TENANT


def chained_entry(entry: AuditEntry, tenant: str, seq: int, prev: str, hash_: str, data_sha: str,
                  at_text: str = "") -> AuditEntry:
    return AuditEntry(entry.execution_id, entry.at, entry.actor, entry.action, entry.step_id, entry.legal_basis,
                      entry.reason, entry.data, tenant, seq, prev, hash_, data_sha, entry.erased)


def chain(tenant: str, head: Head, entries: Sequence[AuditEntry], policy: AuditPolicy,
          make: Callable[[AuditEntry, str, int, str, str, str, str], T] = chained_entry,  # type: ignore[assignment]
          ) -> tuple[list[T], Head, list[AuditCheckpoint]]:
    """The entries chained after ``head`` (each with its seq and hashes, as ``make`` makes it
    from the entry, tenant, seq, prevHash, hash, dataSha256 and the entry's time as the chain
    writes it: a chained ``AuditEntry``, or a store's row), the new head, and the checkpoints to write with them: at the entry that is
    the ``checkpoint_every``-th since the last checkpoint, or the first written
    ``checkpoint_ms`` or more after it."""
    chained: list[T] = []
    checkpoints: list[AuditCheckpoint] = []
    seq, prev = head.seq, head.hash
    checkpoint_seq, checkpoint_at = head.checkpoint_seq, head.checkpoint_at
    if checkpoint_at is None and entries:  # a new chain: its time counts from its first entry
        checkpoint_at = entries[0].at
    every, interval = policy.checkpoint_every, timedelta(milliseconds=policy.checkpoint_ms)
    due = checkpoint_at + interval if checkpoint_at is not None else None
    for entry in entries:
        seq += 1
        data_sha = _data_sha256(entry.data)
        at_text = format_time(entry.at)  # (once: a SQLite row holds the same text)
        hash_ = hashlib.sha256(bytes.fromhex(prev) + _canonical_entry(entry, tenant, seq, prev, data_sha, at_text)
                               ).hexdigest()
        chained.append(make(entry, tenant, seq, prev, hash_, data_sha, at_text))
        prev = hash_
        if seq - checkpoint_seq >= every or (due is not None and entry.at >= due):
            checkpoints.append(make_checkpoint(tenant, seq, prev, entry.at, policy.signer))
            checkpoint_seq, checkpoint_at, due = seq, entry.at, entry.at + interval
    return chained, Head(seq, prev, checkpoint_seq, checkpoint_at), checkpoints


def make_checkpoint(tenant: str, seq: int, hash_: str, at: datetime,
                    signer: CheckpointSigner | None) -> AuditCheckpoint:
    if signer is None:
        return AuditCheckpoint(tenant, seq, hash_, at)
    signature = signer.sign(checkpoint_json(AuditCheckpoint(tenant, seq, hash_, at)))
    return AuditCheckpoint(tenant, seq, hash_, at, signer.key_id, signature)


def _data_sha256(data: Any) -> str:
    """The payload's hash, as it will read back from the store (plain JSON)."""
    if data is None:
        return _NULL_SHA256
    try:
        return payload_sha256(data)
    except (TypeError, ValueError):
        return payload_sha256(json.loads(dumps_data(data)))


def ledger_json(entry: AuditEntry) -> dict[str, Any]:
    """An entry as the chain hashes it and a bundle holds it (``hash`` included once set)."""
    body = _hashed(entry, entry.tenant_id, entry.seq, entry.prev_hash, entry.data_sha256)
    if entry.hash is not None:
        body["hash"] = entry.hash
    return body


def _canonical_entry(entry: AuditEntry, tenant: str, seq: int, prev: str, data_sha: str, at_text: str) -> bytes:
    """``canonical(_hashed(...))``, written directly: the members are known and sorted, so only
    the strings need escaping (the same text; the general way when one holds a lone surrogate)."""
    step, basis, reason = entry.step_id, entry.legal_basis, entry.reason
    text = (f'{{"action":{_string(entry.action)},"actor":{_string(entry.actor)},"at":"{at_text}",'
            f'"dataSha256":"{data_sha}","executionId":{_string(entry.execution_id)},'
            f'"legalBasis":{"null" if basis is None else _string(basis)},"prevHash":"{prev}",'
            f'"reason":{"null" if reason is None else _string(reason)},"seq":{seq:d},'
            f'"stepId":{"null" if step is None else _string(step)},"tenantId":{_string(tenant)}}}')
    try:
        return text.encode("utf-8")  # (strict UTF-8 refuses exactly the surrogates: cheaper than looking for them)
    except UnicodeEncodeError:
        return canonical(_hashed(entry, tenant, seq, prev, data_sha))


def _hashed(entry: AuditEntry, tenant: str | None, seq: int | None, prev: str | None,
            data_sha: str | None) -> dict[str, Any]:
    return {
        "seq": seq, "prevHash": prev, "tenantId": tenant, "executionId": entry.execution_id,
        "at": format_time(entry.at), "actor": entry.actor, "action": entry.action, "stepId": entry.step_id,
        "legalBasis": entry.legal_basis, "reason": entry.reason, "dataSha256": data_sha,
    }


def checkpoint_json(checkpoint: AuditCheckpoint) -> dict[str, Any]:
    body: dict[str, Any] = {"tenant": checkpoint.tenant_id, "seq": checkpoint.seq, "hash": checkpoint.hash,
                            "at": format_time(checkpoint.at)}
    if checkpoint.signature is not None:
        body |= {"keyId": checkpoint.key_id, "signature": checkpoint.signature}
    return body
