"""The key that signs audit checkpoints: an Ed25519 private key in a PEM file
(``RUNBOOKS_AUDIT_SIGNING_KEY``) that the process reads and the database never holds.

``CheckpointSigner`` signs a checkpoint as ``runtime/security/audit_verify.py`` checks it;
``generate_key_file`` writes a new key (mode 0600) for ``runbooks audit key --generate``.
"""

from __future__ import annotations

import base64
import os
import pathlib
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from runtime.security.audit_verify import checkpoint_message, key_id


class CheckpointSigner:
    """Signs checkpoints with one Ed25519 private key."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.key_id = key_id(private_key.public_key())

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> CheckpointSigner:
        """The signer of a PEM file; ``ValueError`` naming the file if it is not an Ed25519 key."""
        try:
            key = serialization.load_pem_private_key(pathlib.Path(path).read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise ValueError(f"{path}: cannot read an audit signing key: {exc}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path}: the audit signing key must be an Ed25519 private key (PEM)")
        return cls(key)

    def sign(self, checkpoint: Mapping[str, Any]) -> str:
        """The base64 signature of a checkpoint ``{tenant, seq, hash, at}``."""
        return base64.b64encode(self._key.sign(checkpoint_message(checkpoint))).decode()

    def public_pem(self) -> str:
        return self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def generate_key_file(path: str | os.PathLike[str]) -> CheckpointSigner:
    """Write a new Ed25519 private key to ``path`` (refused if the file exists)."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(pem)
    return CheckpointSigner(key)
