"""The stores behind one protocol (``base.Store``): memory, and SQLite and PostgreSQL, two
dialects of one SQL store (``sql.SqlStore``); the PostgreSQL one is shared by several
processes through its ``ClusterLedger``. ``open_store_from_url`` makes the store a URL names."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from runtime.store.base import Store
from runtime.store.ledger import ClusterLedger
from runtime.store.memory import MemoryStore
from runtime.store.postgres import PostgresStore
from runtime.store.sqlite import SqliteStore

__all__ = ["ClusterLedger", "MemoryStore", "PostgresStore", "SqliteStore", "Store", "open_store_from_url", "postgres_store"]

_SCHEMA = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

_FORMS = "'memory', 'sqlite:///relative.db', 'sqlite:////absolute.db', a path ending in .db, or 'postgresql://...' (with ?schema=NAME if wanted)"


def postgres_store(url: str, pool_max: int = 20) -> PostgresStore:
    """A PostgreSQL store from a libpq URI; ``schema=NAME`` among its query parameters (ours,
    not libpq's) puts the tables in that schema, so several deployments share one database."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schemas = [value for key, value in query if key == "schema"]
    if not schemas:
        return PostgresStore(url, pool_max=pool_max)
    if len(schemas) > 1 or (schemas and not _SCHEMA.match(schemas[0])):
        raise ValueError(f"store URL: schema must be one name of letters, digits and _ (got {schemas})")
    rest = urlencode([(key, value) for key, value in query if key != "schema"], quote_via=quote)
    return PostgresStore(urlunsplit(parts._replace(query=rest)), pool_max=pool_max,
                         schema=schemas[0] if schemas else None)


def open_store_from_url(url: str, *, pool_max: int = 20) -> Store:
    """The store a URL names (not yet opened: the runtime calls ``open()``).

    ``memory``; ``sqlite:///rel.db``, ``sqlite:////abs.db`` or a bare path ending in ``.db``;
    ``postgresql://...`` or ``postgres://...`` (a libpq URI; it may carry ``sslmode``), whose
    read pool holds at most ``pool_max`` connections. ``ValueError`` for any other URL.
    """
    text = url.strip()
    if text == "memory":
        return MemoryStore()
    if text.startswith(("postgresql://", "postgres://")):
        return postgres_store(text, pool_max)
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
