"""An export of a tenant's audit ledger: the bundle ``runbooks audit verify`` checks.

``bundle_files`` turns what a store holds (``AuditSlice``) and the evidence the entries name
into the bundle's files: ``manifest.json`` (format, algorithms, key id and public key, the
range, the ``prevHash`` the entries start from), ``entries.jsonl`` (each entry exactly as it
was hashed, with its ``hash``), ``payloads.jsonl`` (``{seq, data}`` of each payload not
erased; ``{seq, erased: true}`` otherwise), ``checkpoints.jsonl`` and ``evidence/<id>.json``.
``write_directory`` and ``tar_bytes`` write them; ``export_from_store`` reads a store without
starting the engine (the ``runbooks audit export`` command).
"""

from __future__ import annotations

import io
import json
import pathlib
import tarfile
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import attrs

from runtime.api.stores import store_for
from runtime.model import AuditEntry, Evidence
from runtime.model.errors import Problem, ValidationError
from runtime.model.records import AuditSlice
from runtime.model.wire import format_time, to_json
from runtime.security.audit_signing import CheckpointSigner
from runtime.security.audit_verify import FORMAT, HASH_ALGORITHM, SIGNATURE_ALGORITHM
from runtime.store.audit_chain import checkpoint_json, ledger_json
from runtime.store.base import Store

Files = list[tuple[str, bytes]]


@attrs.frozen
class AuditRange:
    """What to export: seqs (``from_seq``, ``to_seq``) or times (``since``, ``until``); None: no bound."""

    from_seq: int | None = None
    to_seq: int | None = None
    since: datetime | None = None
    until: datetime | None = None


MAX_BOUND_LENGTH = 64  # as the REST API's schema declares


def parse_bound(name: str, text: str | None) -> tuple[int | None, datetime | None]:
    """A bound as given: a seq (digits) or an ISO 8601 time."""
    if text is None or text == "":
        return None, None
    if len(text) > MAX_BOUND_LENGTH:
        raise ValidationError([Problem(name, f"at most {MAX_BOUND_LENGTH} characters")])
    if text.isascii() and text.isdigit():  # a seq past the head is an empty range, not an error
        return min(int(text), 2**62), None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValidationError([Problem(name, "a seq (digits) or an ISO 8601 time")]) from None
    return None, when if when.tzinfo else when.replace(tzinfo=UTC)


def parse_range(from_text: str | None, to_text: str | None) -> AuditRange:
    from_seq, since = parse_bound("from", from_text)
    to_seq, until = parse_bound("to", to_text)
    return AuditRange(from_seq, to_seq, since, until)


def read_export(store: Store, tenant_id: str, bounds: AuditRange) -> tuple[AuditSlice, dict[str, Evidence], bool]:
    """The slice, the evidence its entries name, and whether the range is open at its end."""
    from_seq, to_seq = bounds.from_seq, bounds.to_seq
    if bounds.since is not None or bounds.until is not None:
        first, last = store.audit_seqs(tenant_id, bounds.since, bounds.until)
        if bounds.since is not None:
            from_seq = first if first is not None else 2**62  # nothing since then
        if bounds.until is not None:
            to_seq = last if last is not None else 0
    open_ended = to_seq is None
    piece = store.audit_slice(tenant_id, from_seq or 1, to_seq)
    return piece, _evidence(store, piece.entries), open_ended


def _evidence(store: Store, entries: Iterable[AuditEntry]) -> dict[str, Evidence]:
    wanted: dict[str, set[str]] = {}  # execution id -> evidence ids named
    for entry in entries:
        named = entry.data.get("evidence") if isinstance(entry.data, Mapping) else None
        if isinstance(named, Mapping) and isinstance(named.get("id"), str):
            wanted.setdefault(entry.execution_id, set()).add(named["id"])
    found: dict[str, Evidence] = {}
    for execution_id, ids in wanted.items():
        found |= {item.id: item for item in store.evidence(execution_id) if item.id in ids}
    return found


def bundle_files(piece: AuditSlice, evidence: Mapping[str, Evidence], *, open_ended: bool,
                 signer: CheckpointSigner | None, now: datetime) -> Files:
    entries = piece.entries
    first = entries[0].seq if entries else None
    manifest = {
        "format": FORMAT,
        "hashAlgorithm": HASH_ALGORITHM,
        "signatureAlgorithm": SIGNATURE_ALGORITHM,
        "tenant": piece.tenant_id,
        "fromSeq": first,
        "toSeq": None if open_ended else (entries[-1].seq if entries else None),
        "entries": len(entries),
        "prevHash": piece.prev_hash,
        "keyId": signer.key_id if signer is not None else None,
        "publicKey": signer.public_pem() if signer is not None else None,
        "exportedAt": format_time(now),
    }
    files: Files = [("manifest.json", _json(manifest) + b"\n")]
    files.append(("entries.jsonl", _lines(ledger_json(entry) for entry in entries)))
    files.append(("payloads.jsonl", _lines(_payload(entry) for entry in entries)))
    files.append(("checkpoints.jsonl", _lines(checkpoint_json(c) for c in piece.checkpoints)))
    files += [(f"evidence/{item.id}.json", _json(to_json(item)) + b"\n") for item in evidence.values()]
    return files


def _payload(entry: AuditEntry) -> dict[str, Any]:
    if entry.erased:
        return {"seq": entry.seq, "erased": True}
    return {"seq": entry.seq, "data": entry.data}


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _lines(values: Iterable[Any]) -> bytes:
    return b"".join(_json(value) + b"\n" for value in values)


def write_directory(files: Files, out: pathlib.Path) -> None:
    """Write the bundle into ``out`` (created; it must be empty if it exists)."""
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty")
    (out / "evidence").mkdir(parents=True, exist_ok=True)
    for name, data in files:
        (out / name).write_bytes(data)


def tar_bytes(files: Files, root: str, now: datetime) -> bytes:
    """The bundle as a tar archive, every file under ``root/``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files:
            info = tarfile.TarInfo(f"{root}/{name}")
            info.size = len(data)
            info.mtime = int(now.timestamp())
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def export_from_store(store: Store, tenant_id: str, bounds: AuditRange, out: pathlib.Path,
                      signer: CheckpointSigner | None, clock: Callable[[], datetime] | None = None) -> int:
    """Open the store (no engine starts), export the tenant's ledger into ``out``, close it;
    the number of entries written."""
    store.open()
    try:
        piece, evidence, open_ended = read_export(store, tenant_id, bounds)
    finally:
        store.close()
    now = (clock or (lambda: datetime.now(UTC)))()
    write_directory(bundle_files(piece, evidence, open_ended=open_ended, signer=signer, now=now), out)
    return len(piece.entries)


def export_to_directory(store_url: str, tenant_id: str, bounds: AuditRange, out: pathlib.Path,
                        signing_key: str | None) -> int:
    """``export_from_store`` on the store a URL names (the command's ``--store``)."""
    signer = CheckpointSigner.from_file(signing_key) if signing_key else None
    return export_from_store(store_for(store_url, pool_max=1), tenant_id, bounds, out, signer)
