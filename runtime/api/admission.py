"""Queued executions (and waiting steps) that hold a slot of their concurrency key: each one is let start.

The store gives slots (``runtime/store/slots.py``) in the transaction that queues a start or
ends an execution; the persistence actor hands the ids it gave a slot to ``tell_admitted``,
which sends each one ``Admit`` wherever it runs (with several processes, a command row for
its owner). ``pump`` looks for executions that hold a slot and are still ``queued``, and steps still
``pending``: once at start-up (a slot given just before a restart), and then, with several
processes, every ``interval_s`` (the process that gave the slot may have died before telling
them). A single process tells every holder itself, so it does not poll: an idle runtime
stays idle (a virtual clock in tests jumps straight to the next real deadline).
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
        if routing.cluster is None:
            return
        await trio.sleep(interval_s)
