"""The store ``open_runtime`` opens: one a URL names, or a ``Store`` object given as is.

A program that only knows a URL (the gateway, the CLI) never builds a store itself: it hands
the URL and ``pool_max`` to ``open_runtime``, and may check the URL before anything starts
(``check_store_url``).
"""

from __future__ import annotations

from runtime.security.audit_signing import CheckpointSigner
from runtime.shell.settings import Settings
from runtime.store import open_store_from_url
from runtime.store.audit_chain import AuditPolicy
from runtime.store.base import Store


def check_store_url(url: str) -> None:
    """Raise ``ValueError`` saying why, if ``open_runtime`` does not know this store URL
    (nothing is opened)."""
    open_store_from_url(url)


def store_for(store: str | Store, *, pool_max: int) -> Store:
    """The store to open: the one ``store`` names (a PostgreSQL read pool of at most
    ``pool_max`` connections), or ``store`` itself."""
    return open_store_from_url(store, pool_max=pool_max) if isinstance(store, str) else store


def audit_policy(settings: Settings) -> AuditPolicy:
    """When the store checkpoints the audit ledger, and the key that signs (``ValueError``
    naming the file if the key cannot be read)."""
    key = settings.audit_signing_key
    return AuditPolicy(settings.audit_checkpoint_every, settings.audit_checkpoint_ms,
                       CheckpointSigner.from_file(key) if key else None)
