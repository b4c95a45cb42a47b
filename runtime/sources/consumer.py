"""One bus source's loop: fetch what there is room for, publish each message's event, then ack.

At most ``maxInFlight`` messages of a source are between fetch and ack at once (a fetch
asks for as many as there is room for, at most half of them, so that the next batch is
fetched while one is published; finished messages are acknowledged together, in one round
trip, while the others go on). The events of a fetched batch are published together
(``Intake.publish_many``: one read finds the repeats, each receipt commits with its event)
and each message is acknowledged only after its commit; a message published before (a
redelivery after a crash) is acknowledged without a second event. A message that maps to no event is refused (audited) and acknowledged: the same
bytes would fail again. Any other failure gives the message back for a later delivery.

When the store's commits fail, the loop fetches nothing (``status`` says so, and so does
readiness) until they succeed again. A lost connection to the bus is retried with backoff.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, MutableMapping

import trio

from runtime.model.errors import LimitExceeded, RunbookError
from runtime.shell.events import PublishResult
from runtime.sources.buses import Bus, Message
from runtime.sources.config import Source
from runtime.sources.intake import Incoming, Intake
from runtime.sources.mapping import Unmappable, parse_body

logger = logging.getLogger("runbooks.sources")
BACKOFF_FIRST_S, BACKOFF_MAX_S = 0.5, 30.0
STORE_PROBE_S = 0.5
ACK, RETRY = "ack", "retry"


async def consume(source: Source, bus: Bus, intake: Intake, status: MutableMapping[str, str],
                  healthy: Callable[[], str | None]) -> None:
    """Run ``source`` until cancelled: connect, consume, reconnect after a failure."""
    delay = BACKOFF_FIRST_S
    while True:
        status[source.id] = "connecting"
        try:
            await bus.open()
            status[source.id] = "running"
            delay = BACKOFF_FIRST_S
            await _consume(source, bus, intake, status, healthy)
        except (OSError, RunbookError, Exception) as exc:  # the bus went away or refused: again, later
            status[source.id] = f"reconnecting: {type(exc).__name__}: {exc}"[:300]
            logger.warning("source %s: %s; connecting again in %.1f s", source.id, exc, delay)
        finally:
            with trio.CancelScope(shield=True):
                await bus.close()
        await trio.sleep(delay)
        delay = min(delay * 2, BACKOFF_MAX_S)


async def _consume(source: Source, bus: Bus, intake: Intake, status: MutableMapping[str, str],
                   healthy: Callable[[], str | None]) -> None:
    """Keep up to ``maxInFlight`` messages in flight: fetch what there is room for (at most
    half of them at once), publish each fetched batch together, ack those done in groups
    (one round trip for many)."""
    room = trio.Semaphore(source.max_in_flight)
    most = max(1, source.max_in_flight // 2)  # a fetch at most: the next batch is fetched while one is published
    done: list[tuple[Message, str]] = []
    bell = [trio.Event()]  # rung when a batch is done
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_settle, bus, done, bell)
        while True:
            await _store_ready(source, status, healthy)
            await room.acquire()  # at least one free place before fetching
            free = 1
            while free < most and room.value:
                room.acquire_nowait()
                free += 1
            batch = await bus.fetch(free)
            for _ in range(free - len(batch)):
                room.release()
            if batch:  # (published together: one read finds the repeats among them)
                nursery.start_soon(_batch, source, batch, intake, done, room, bell)


async def _settle(bus: Bus, done: list[tuple[Message, str]], bell: list[trio.Event]) -> None:
    """Ack (or give back) the messages finished since the last round trip, until cancelled."""
    while True:
        while not done:
            await bell[0].wait()
            bell[0] = trio.Event()
        batch = done[:]
        done.clear()
        try:
            with trio.CancelScope(shield=True):  # committed: the ack goes out even while stopping
                await bus.ack([m for m, outcome in batch if outcome == ACK])
            await bus.retry([m for m, outcome in batch if outcome == RETRY])
        except Exception as exc:  # the bus went away: they come again and are recognised (the fetch reconnects)
            logger.warning("%d messages not acknowledged, they will come again: %s", len(batch), exc)


async def _store_ready(source: Source, status: MutableMapping[str, str], healthy: Callable[[], str | None]) -> None:
    """Wait (fetching nothing) while the store's commits fail."""
    while (problem := healthy()) is not None:
        if status.get(source.id) == "running":
            logger.warning("source %s paused: %s", source.id, problem)
        status[source.id] = f"paused: {problem}"
        await trio.sleep(STORE_PROBE_S)
    if status.get(source.id, "").startswith("paused"):
        logger.info("source %s resumed", source.id)
    status[source.id] = "running"


async def _batch(source: Source, messages: list[Message], intake: Intake, done: list[tuple[Message, str]],
                 room: trio.Semaphore, bell: list[trio.Event]) -> None:
    outcomes = [RETRY] * len(messages)
    try:
        outcomes = await _publish(source, messages, intake)
    finally:
        done.extend(zip(messages, outcomes, strict=True))
        bell[0].set()
        for _ in messages:
            room.release()


async def _publish(source: Source, messages: list[Message], intake: Intake) -> list[str]:
    """Each message's outcome: ACK (published, a repeat, or refused: it would fail again) or
    RETRY (it comes again later)."""
    outcomes: list[str | None] = []
    incoming: list[Incoming] = []
    for message in messages:
        intake.arrived(source)
        try:
            body = parse_body(message.body, message.headers.get("content-type", "application/json"))
        except Unmappable as exc:
            intake.refuse(source, "unmappable", str(exc), {"messageId": message.delivery_id})
            outcomes.append(ACK)
            continue
        incoming.append((body, message.headers, message.meta, message.delivery_id))
        outcomes.append(None)
    results = iter(await intake.publish_many(source, incoming) if incoming else [])
    return [outcome if outcome is not None else _outcome(source, message, next(results), intake)
            for message, outcome in zip(messages, outcomes, strict=True)]


def _outcome(source: Source, message: Message, result: PublishResult | Exception, intake: Intake) -> str:
    if isinstance(result, Unmappable):
        intake.refuse(source, "unmappable", str(result), {"messageId": message.delivery_id})
    elif isinstance(result, LimitExceeded):
        logger.warning("source %s: message %s waits: %s", source.id, message.delivery_id, result)
        return RETRY
    elif isinstance(result, Exception):  # the store, a bug: the message comes back later
        logger.warning("source %s: message %s not published, it will come again: %s", source.id,
                       message.delivery_id, result)
        return RETRY
    return ACK
