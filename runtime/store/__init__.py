"""The stores behind one protocol (``base.Store``): memory, SQLite and PostgreSQL."""

from __future__ import annotations

from runtime.store.base import Store
from runtime.store.memory import MemoryStore
from runtime.store.postgres import PostgresStore
from runtime.store.sqlite import SqliteStore

__all__ = ["MemoryStore", "PostgresStore", "SqliteStore", "Store", "open_store_from_url"]

_FORMS = "'memory', 'sqlite:///relative.db', 'sqlite:////absolute.db', a path ending in .db, or 'postgresql://...'"


def open_store_from_url(url: str) -> Store:
    """The store a URL names (not yet opened: the runtime calls ``open()``).

    ``memory``; ``sqlite:///rel.db``, ``sqlite:////abs.db`` or a bare path ending in ``.db``;
    ``postgresql://...`` or ``postgres://...`` (a libpq URI; it may carry ``sslmode``).
    """
    text = url.strip()
    if text == "memory":
        return MemoryStore()
    if text.startswith(("postgresql://", "postgres://")):
        return PostgresStore(text, pool_max=20)
    if text.startswith("sqlite:"):
        if not text.startswith("sqlite:///") or len(text) == len("sqlite:///"):
            raise ValueError(f"store URL {url!r}: a SQLite URL is sqlite:///relative.db or sqlite:////absolute.db")
        path = text[len("sqlite:///") :]
    elif text.endswith(".db") and "://" not in text:
        path = text
    else:
        raise ValueError(f"store URL {url!r} is not supported; use {_FORMS}")
    if path == ":memory:":
        raise ValueError(f"store URL {url!r}: an in-memory SQLite store cannot be shared; use 'memory'")
    return SqliteStore(path)
