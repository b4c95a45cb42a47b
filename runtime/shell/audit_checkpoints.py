"""The sweep that checkpoints quiet audit chains: a tenant whose last entries came after its
last checkpoint, and nothing since for ``AUDIT_CHECKPOINT_MS``, gets a checkpoint of its head
(the chains that keep growing get theirs as entries are written; ``store/audit_chain.py``).
Without it, the last entries of a tenant that went quiet could be removed unnoticed."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import trio

from runtime.model.errors import StoreUnavailable
from runtime.model.records import Change

logger = logging.getLogger("runbooks.audit")

MIN_INTERVAL_S = 1.0


async def sweep(now: Callable[[], datetime], commit: Callable[[Change], Awaitable[Any]], interval_ms: int,
                written: Callable[[], Awaitable[None]] | None = None) -> None:
    """Forever: every ``interval_ms`` (at least a second), checkpoint the chains that are due.
    With ``written`` (one process: every entry is its own), a round comes only after entries
    were written since the last one: an idle runtime does nothing. With several processes it
    is periodic (another process may have written the entries and died before its sweep)."""
    if interval_ms <= 0:
        return  # every entry is checkpointed as it is written
    while True:
        if written is not None:
            await written()
        await trio.sleep(max(interval_ms / 1000, MIN_INTERVAL_S))
        try:
            await commit(Change(checkpoint_idle=now()))
        except StoreUnavailable as exc:  # the next round tries again
            logger.warning("audit checkpoints: %s", exc)
