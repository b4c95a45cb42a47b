"""Stores behind one protocol (see ``base``): memory, SQLite and PostgreSQL."""

from runtime.store.base import Store
from runtime.store.memory import MemoryStore


def open_store_from_url(url: str) -> Store:
    if url == "memory":
        return MemoryStore()
    raise ValueError(f"unknown store URL {url!r}")


__all__ = ["MemoryStore", "Store", "open_store_from_url"]
