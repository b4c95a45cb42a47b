"""The audit ledger's arithmetic, and the offline check of an exported bundle.

This module stands alone on purpose: it imports the standard library, ``cryptography``
(Ed25519) and the RFC 8785 canonicaliser (``runtime/model/canonical.py``, itself standard
library only) and nothing else of the engine. An auditor may copy these two files side by
side and run ``python audit_verify.py BUNDLE [--public-key FILE]`` without the engine; the
engine's ``runbooks audit verify`` runs the same code.

The chain: each audit entry of a tenant carries ``seq`` (1, 2, 3... with no gap), ``prevHash``
(the previous entry's ``hash``, 64 zeros before the first) and
``hash = sha256(bytes.fromhex(prevHash) + canonical(entry without "hash"))``. The entry holds
``dataSha256``, the SHA-256 of its payload's canonical JSON, not the payload itself: a payload
can be erased (a person's data) and the chain still verifies. A checkpoint
``{tenant, seq, hash, at}`` names the head of the chain at a moment; with a signing key it
carries ``keyId`` and an Ed25519 ``signature`` over its canonical JSON without them.

A bundle is a directory: ``manifest.json``, ``entries.jsonl`` (one entry a line, by seq),
``payloads.jsonl`` (``{seq, data}`` of each payload not erased), ``checkpoints.jsonl`` and
``evidence/<id>.json`` (the evidence items the entries name). ``verify_bundle`` recomputes the
chain from the manifest's ``prevHash``, checks each payload against its ``dataSha256``, each
checkpoint's signature and head, and each evidence item's hash, and names the first ``seq``
where something is wrong and how: ``edited``, ``missing`` (deleted), ``inserted``,
``reordered``, ``truncated`` (entries end before the latest checkpoint), ``bad signature``,
``evidence mismatch``.

Exit status of the command: 0 intact (``ok <n> entries``), 1 tampered (the first bad seq and
why), 2 the bundle cannot be read (or usage).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import pathlib
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

try:
    from runtime.model.canonical import canonical
except ImportError:  # copied beside canonical.py, outside the engine
    from canonical import canonical  # type: ignore[no-redef,import-not-found]

FORMAT = "runbooks-audit-bundle/1"
GENESIS = "0" * 64
HASH_ALGORITHM = "sha256(prevHash || RFC 8785 canonical JSON of the entry without hash)"
SIGNATURE_ALGORITHM = "Ed25519 over RFC 8785 canonical JSON of {tenant, seq, hash, at}"
#: the fields of a chained entry, as the bundle and the API name them
ENTRY_FIELDS = ("seq", "prevHash", "tenantId", "executionId", "at", "actor", "action", "stepId",
                "legalBasis", "reason", "dataSha256", "hash")
CHECKPOINT_SIGNED = ("tenant", "seq", "hash", "at")

OK, TAMPERED, UNREADABLE = 0, 1, 2


def entry_hash(prev_hash: str, entry: Mapping[str, Any]) -> str:
    """The ``hash`` of an entry (its own ``hash`` member, if any, is left out)."""
    body = {key: value for key, value in entry.items() if key != "hash"}
    return hashlib.sha256(bytes.fromhex(prev_hash) + canonical(body)).hexdigest()


def payload_sha256(data: Any) -> str:
    """The ``dataSha256`` of a payload."""
    return hashlib.sha256(canonical(data)).hexdigest()


def checkpoint_message(checkpoint: Mapping[str, Any]) -> bytes:
    """What a checkpoint's signature signs."""
    return canonical({key: checkpoint.get(key) for key in CHECKPOINT_SIGNED})


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short name of a public key: the first 16 hex digits of SHA-256 of its raw bytes."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return key


def evidence_sha256(data: Any) -> str:
    """How the engine hashes an evidence item's ``data`` (sorted keys, no whitespace, UTF-8)."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Verdict:
    """``seq`` None and ``reason`` None: intact. Otherwise the first bad seq and why."""

    entries: int
    seq: int | None = None
    reason: str | None = None
    detail: str = ""
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.reason is None

    def line(self) -> str:
        if self.ok:
            return f"ok {self.entries} entries"
        where = f"seq {self.seq}" if self.seq is not None else "bundle"
        return f"{where}: {self.reason}" + (f" ({self.detail})" if self.detail else "")


class BundleError(Exception):
    """The bundle cannot be read (missing file, bad JSON)."""


def verify_bundle(path: pathlib.Path, public_key: Ed25519PublicKey | None = None) -> Verdict:
    """Check a bundle directory; ``public_key`` pins the signer (else the manifest's key is used)."""
    if not path.is_dir():
        raise BundleError(f"{path} is not a directory")
    files = {file.relative_to(path).as_posix(): file.read_bytes() for file in path.rglob("*") if file.is_file()}
    return verify_files(files, public_key)


def verify_files(files: Mapping[str, bytes], public_key: Ed25519PublicKey | None = None) -> Verdict:
    """Check a bundle given as its files (name -> content)."""
    manifest = _read_json(files, "manifest.json")
    if manifest.get("format") != FORMAT:
        raise BundleError(f"manifest.json: format {manifest.get('format')!r} is not {FORMAT}")
    entries = _read_lines(files, "entries.jsonl")
    payloads = {int(item.get("seq") or 0): item for item in _read_lines(files, "payloads.jsonl", missing_ok=True)}
    checkpoints = _read_lines(files, "checkpoints.jsonl", missing_ok=True)
    notes: list[str] = []
    verdict = _chain(entries, manifest, payloads)
    if verdict is not None:
        return verdict
    signer, note = _signer(manifest, public_key)
    if note:
        notes.append(note)
    if signer is None and any(c.get("signature") for c in checkpoints):
        notes.append("signatures not checked: no public key in the bundle nor given")
    verdict = _checkpoints(entries, manifest, checkpoints, signer)
    if verdict is not None:
        return verdict
    verdict = _evidence(files, entries, payloads)
    if verdict is not None:
        return verdict
    if not checkpoints:
        notes.append("no checkpoint: entries removed from the end cannot be detected")
    return Verdict(len(entries), notes=tuple(notes))


def _chain(entries: Sequence[Mapping[str, Any]], manifest: Mapping[str, Any],
           payloads: Mapping[int, Mapping[str, Any]]) -> Verdict | None:
    """The first break of the chain, by seq, and what it looks like."""
    start = int(manifest.get("fromSeq") or 1)
    prev = str(manifest.get("prevHash") or GENESIS)
    for index, entry in enumerate(entries):
        expected = start + index
        if entry.get("prevHash") != prev or entry.get("seq") != expected or _hash_of(entry) != entry.get("hash"):
            reason, seq, detail = _break(entries, index, expected, prev)
            return Verdict(len(entries), seq, reason, detail)
        payload = payloads.get(expected)
        if payload is not None and not payload.get("erased") and payload_sha256(payload.get("data")) != entry.get(
                "dataSha256"):
            return Verdict(len(entries), expected, "edited", "its payload does not match its dataSha256")
        prev = str(entry.get("hash"))
    return None


def _break(entries: Sequence[Mapping[str, Any]], index: int, expected: int, prev: str) -> tuple[str, int, str]:
    """What happened where the chain breaks at ``entries[index]`` (which should be seq
    ``expected``, after the entry whose hash is ``prev``)."""
    entry = entries[index]
    links = entry.get("prevHash")
    following = entries[index + 1] if index + 1 < len(entries) else None
    seq = entry.get("seq")
    if index > 0 and links == entries[index - 1].get("prevHash"):
        return "inserted", expected - 1, "it is not in the chain its successor links to"
    if links != prev and any(later.get("hash") == links for later in entries[index + 1:]):
        return "reordered", expected, "it belongs after an entry that comes later"
    if following is not None and following.get("prevHash") == prev:
        return "inserted", expected, "the entry after it links past it"
    if links == prev:
        return "edited", expected, "its hash does not match its content"
    if any(later.get("prevHash") == prev for later in entries[index + 1:]):
        return "reordered", expected, "the entry that follows in the chain comes later"
    if (isinstance(seq, int) and seq > expected) or _renumbered(entry):
        return "missing", expected, f"the entry after seq {expected - 1} is absent"
    if index > 0 and _hash_of(entry) == entry.get("hash"):  # intact, linked to what the entry before it was
        return "edited", expected - 1, "it was rewritten with a new hash: the entry after it links to the old one"
    return "edited", expected, "its prevHash does not link to the entry before it"


def _renumbered(entry: Mapping[str, Any]) -> bool:
    """Whether the entry is intact but for its seq, lowered after an entry before it was removed."""
    seq = entry.get("seq")
    return isinstance(seq, int) and _hash_of({**entry, "seq": seq + 1}) == entry.get("hash")


def _hash_of(entry: Mapping[str, Any]) -> str | None:
    prev = entry.get("prevHash")
    try:
        return entry_hash(str(prev), entry)
    except (ValueError, TypeError):
        return None


def _signer(manifest: Mapping[str, Any], pinned: Ed25519PublicKey | None) -> tuple[Ed25519PublicKey | None, str]:
    if pinned is not None:
        return pinned, ""
    text = manifest.get("publicKey")
    if not text:
        return None, "checkpoints are unsigned"
    return load_public_key(str(text).encode()), "signatures checked with the key in the bundle; pin it with --public-key"


def _checkpoints(entries: Sequence[Mapping[str, Any]], manifest: Mapping[str, Any],
                 checkpoints: Sequence[Mapping[str, Any]], signer: Ed25519PublicKey | None) -> Verdict | None:
    start = int(manifest.get("fromSeq") or 1)
    last = start + len(entries) - 1
    open_ended = manifest.get("toSeq") is None
    for checkpoint in sorted(checkpoints, key=lambda c: int(c.get("seq") or 0)):
        seq = int(checkpoint.get("seq") or 0)
        if signer is not None and not _signed_by(checkpoint, signer):
            return Verdict(len(entries), seq, "bad signature", "the checkpoint's signature does not verify")
        if seq > last:
            if open_ended:
                return Verdict(len(entries), last + 1, "truncated",
                               f"a checkpoint names seq {seq}, the entries end at {last}")
            continue
        if seq < start:
            continue
        if entries[seq - start].get("hash") != checkpoint.get("hash"):
            return Verdict(len(entries), seq, "edited", "the chain differs from the checkpoint taken at this seq")
    return None


def _signed_by(checkpoint: Mapping[str, Any], key: Ed25519PublicKey) -> bool:
    signature = checkpoint.get("signature")
    if not signature:
        return False
    try:
        key.verify(base64.b64decode(str(signature)), checkpoint_message(checkpoint))
    except (InvalidSignature, ValueError):
        return False
    return True


def _evidence(files: Mapping[str, bytes], entries: Sequence[Mapping[str, Any]],
              payloads: Mapping[int, Mapping[str, Any]]) -> Verdict | None:
    for entry in entries:
        seq = int(entry["seq"])
        data = (payloads.get(seq) or {}).get("data")
        named = data.get("evidence") if isinstance(data, Mapping) else None
        if not isinstance(named, Mapping):
            continue
        evidence_id, expected = str(named.get("id")), named.get("sha256")
        name = f"evidence/{evidence_id}.json"
        if name not in files:
            return Verdict(len(entries), seq, "evidence mismatch", f"evidence {evidence_id} is not in the bundle")
        item = _read_json(files, name)
        if item.get("sha256") != expected or evidence_sha256(item.get("data")) != expected:
            return Verdict(len(entries), seq, "evidence mismatch", f"evidence {evidence_id} does not match its hash")
    return None


def _read_json(files: Mapping[str, bytes], name: str) -> dict[str, Any]:
    if name not in files:
        raise BundleError(f"{name} is missing")
    try:
        value = json.loads(files[name].decode("utf-8"))
    except ValueError as exc:
        raise BundleError(f"{name}: {exc}") from None
    if not isinstance(value, dict):
        raise BundleError(f"{name}: not a JSON object")
    return value


def _read_lines(files: Mapping[str, bytes], name: str, *, missing_ok: bool = False) -> list[dict[str, Any]]:
    if name not in files:
        if missing_ok:
            return []
        raise BundleError(f"{name} is missing")
    try:
        # split at "\n" only: str.splitlines also splits at U+2028, U+2029 and U+0085, which
        # JSON text holds unescaped (a reason or a comment may carry one)
        lines = [json.loads(line) for line in files[name].decode("utf-8").split("\n") if line.strip()]
    except ValueError as exc:
        raise BundleError(f"{name}: {exc}") from None
    if not all(isinstance(line, dict) for line in lines):
        raise BundleError(f"{name}: every line must be a JSON object")
    return lines


def main(argv: Sequence[str] | None = None, out: Any = None, err: Any = None) -> int:
    """``verify BUNDLE [--public-key FILE]``: 0 intact, 1 tampered, 2 unreadable."""
    out, err = out or sys.stdout, err or sys.stderr
    parser = argparse.ArgumentParser(prog="audit_verify", description="Verify an exported audit bundle.")
    parser.add_argument("bundle")
    parser.add_argument("--public-key", default=None, help="PEM file of the Ed25519 key checkpoints must be signed by")
    args = parser.parse_args(argv)
    return verify_command(pathlib.Path(args.bundle), args.public_key, out, err)


def verify_command(bundle: pathlib.Path, public_key_file: str | None, out: Any, err: Any) -> int:
    """Verify and print the verdict (``ok <n> entries``, or the first bad seq and why)."""
    try:
        key = load_public_key(pathlib.Path(public_key_file).read_bytes()) if public_key_file else None
        verdict = verify_bundle(bundle, key)
    except (BundleError, OSError, ValueError) as exc:
        print(f"cannot verify {bundle}: {exc}", file=err)
        return UNREADABLE
    for note in verdict.notes:
        print(f"note: {note}", file=err)
    print(verdict.line(), file=out)
    return OK if verdict.ok else TAMPERED


if __name__ == "__main__":
    sys.exit(main())
