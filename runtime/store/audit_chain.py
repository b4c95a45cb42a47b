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


class Prepared(NamedTuple):
    """What an entry's link in the chain needs besides the head, made before the head is
    read (a store holds the head's lock from that read to its commit): the payload's hash,
    the time as text, the entry's canonical text in the three parts around its ``prevHash``
    and ``seq`` (None when it holds a lone surrogate: then it is made at the link), and what
    the store's row needs of the entry alone (``extra``)."""

    entry: AuditEntry
    data_sha: str
    at_text: str
    parts: tuple[bytes, bytes, bytes] | None
    extra: Any = None


def prepare(tenant: str, entries: Sequence[AuditEntry],
            extra: Callable[[AuditEntry, str], Any] | None = None) -> list[Prepared]:
    """``entries`` of ``tenant`` made ready to be chained (``extra``: from the entry and its
    time's text, what a store's row needs of it)."""
    prepared = []
    for entry in entries:
        at_text = format_time(entry.at)  # (once: a SQLite row holds the same text)
        data_sha = _data_sha256(entry.data)
        parts = _canonical_parts(entry, tenant, data_sha, at_text)
        prepared.append(Prepared(entry, data_sha, at_text, parts, extra(entry, at_text) if extra else None))
    return prepared


def chained_entry(p: Prepared, tenant: str, seq: int, prev: str, hash_: str) -> AuditEntry:
    entry = p.entry
    return AuditEntry(entry.execution_id, entry.at, entry.actor, entry.action, entry.step_id, entry.legal_basis,
                      entry.reason, entry.data, tenant, seq, prev, hash_, p.data_sha, entry.erased)


def chain(tenant: str, head: Head, entries: Sequence[AuditEntry], policy: AuditPolicy,
          make: Callable[[Prepared, str, int, str, str], T] = chained_entry,  # type: ignore[assignment]
          ) -> tuple[list[T], Head, list[AuditCheckpoint]]:
    """``link`` of the entries, prepared here."""
    return link(tenant, head, prepare(tenant, entries), policy, make)


def link(tenant: str, head: Head, prepared: Sequence[Prepared], policy: AuditPolicy,
         make: Callable[[Prepared, str, int, str, str], T]) -> tuple[list[T], Head, list[AuditCheckpoint]]:
    """The entries chained after ``head`` (each with its seq and hashes, as ``make`` makes it
    from the prepared entry, tenant, seq, prevHash and hash: a chained ``AuditEntry``, or a
    store's row), the new head, and the checkpoints to write with them: at the entry that is
    the ``checkpoint_every``-th since the last checkpoint, or the first written
    ``checkpoint_ms`` or more after it. Only the hashing is left here."""
    chained: list[T] = []
    checkpoints: list[AuditCheckpoint] = []
    seq, prev = head.seq, head.hash
    checkpoint_seq, checkpoint_at = head.checkpoint_seq, head.checkpoint_at
    if checkpoint_at is None and prepared:  # a new chain: its time counts from its first entry
        checkpoint_at = prepared[0].entry.at
    every, interval = policy.checkpoint_every, timedelta(milliseconds=policy.checkpoint_ms)
    due = checkpoint_at + interval if checkpoint_at is not None else None
    sha256, fromhex = hashlib.sha256, bytes.fromhex
    for p in prepared:
        seq += 1
        if p.parts is not None:
            before_prev, before_seq, after_seq = p.parts
            text = b"%s%s%s%d%s" % (before_prev, prev.encode(), before_seq, seq, after_seq)
        else:
            text = canonical(_hashed(p.entry, tenant, seq, prev, p.data_sha))
        hash_ = sha256(fromhex(prev) + text).hexdigest()
        chained.append(make(p, tenant, seq, prev, hash_))
        prev = hash_
        at = p.entry.at
        if seq - checkpoint_seq >= every or (due is not None and at >= due):
            checkpoints.append(make_checkpoint(tenant, seq, prev, at, policy.signer))
            checkpoint_seq, checkpoint_at, due = seq, at, at + interval
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


def _canonical_parts(entry: AuditEntry, tenant: str, data_sha: str, at_text: str
                     ) -> tuple[bytes, bytes, bytes] | None:
    """``canonical(_hashed(...))``, written directly, in the parts around ``prevHash`` and
    ``seq``, as UTF-8: the members are known and sorted, so only the strings need escaping
    (the same text). None when a string holds a lone surrogate (the general way makes that
    text)."""
    step, basis, reason = entry.step_id, entry.legal_basis, entry.reason
    before_prev = (f'{{"action":{_string(entry.action)},"actor":{_string(entry.actor)},"at":"{at_text}",'
                   f'"dataSha256":"{data_sha}","executionId":{_string(entry.execution_id)},'
                   f'"legalBasis":{"null" if basis is None else _string(basis)},"prevHash":"')
    before_seq = f'","reason":{"null" if reason is None else _string(reason)},"seq":'
    after_seq = f',"stepId":{"null" if step is None else _string(step)},"tenantId":{_string(tenant)}}}'
    try:  # (strict UTF-8 refuses exactly the surrogates: cheaper than looking for them)
        return before_prev.encode(), before_seq.encode(), after_seq.encode()
    except UnicodeEncodeError:
        return None


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
