"""Queued executions (and waiting steps) that hold a slot of their concurrency key: each one is let start.

The store gives slots (``runtime/store/slots.py``) in the transaction that queues a start or
ends an execution; the persistence actor hands the ids it gave a slot to ``tell_admitted``,
which sends each one ``Admit`` wherever it runs (with several processes, a command row for
its owner). ``pump`` looks again every ``interval_s`` for executions that hold a slot and are
still ``queued``, and steps still ``pending`` (after a restart, or when the process that gave the slot died before telling
them): one process's store, or the ones this process runs.
"""

from __future__ import annotations

import logging

import trio

from runtime.api.access import Read
from runtime.api.routing import Routing
from runtime.core.messages import Admit
from runtime.model.errors import StoreUnavailable
from runtime.store.base import Store

logger = logging.getLogger("runbooks.admission")


def tell_admitted(routing: Routing, holders: list[tuple[str, str]]) -> None:
    for execution_id, step_id in holders:
        routing.tell(execution_id, Admit(step_id))


async def pump(routing: Routing, read: Read, store: Store, interval_s: float) -> None:
    while True:
        try:
            found: list[tuple[str, str]] = await read(store.admitted)
        except StoreUnavailable as exc:
            logger.warning("could not look for admitted executions: %s", exc)
            found = []
        for execution_id, step_id in found:
            if routing.cluster is None or routing.owns(execution_id):
                routing.directory.post(execution_id, Admit(step_id))
        await trio.sleep(interval_s)
