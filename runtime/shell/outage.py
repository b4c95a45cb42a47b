"""While the store is unavailable, an execution waits for it; it does not crash.

Commits already wait (the persistence actor retries a batch until it commits). The reads an
execution actor makes when it starts (its committed state, its runbook version) go through
``waiting`` here: a ``StoreUnavailable`` is retried with the same backoff, so a database
restart or a full disk delays executions instead of crashing their actors (which would be
restarted at once, three times, and then marked failed with code ``crashed``).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

import trio

from runtime.model.errors import StoreUnavailable
from runtime.shell.persistence import RETRY_FIRST_S, RETRY_MAX_S

P = ParamSpec("P")
T = TypeVar("T")
logger = logging.getLogger("runbooks.runtime")


def waiting(read: Callable[P, Awaitable[T]], what: str) -> Callable[P, Awaitable[T]]:
    """``read``, retried with backoff for as long as it raises ``StoreUnavailable``."""

    @functools.wraps(read)
    async def patient(*args: P.args, **kwargs: P.kwargs) -> T:
        delay = RETRY_FIRST_S
        while True:
            try:
                return await read(*args, **kwargs)
            except StoreUnavailable as exc:
                logger.warning("%s failed, retrying in %.2f s: %s", what, delay, exc)
                await trio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)

    return patient
