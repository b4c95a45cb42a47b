"""Sinks: lifecycle events of executions published to a NATS subject or a Redis stream.

The events come from the outbox: each change an execution commits carries its lifecycle
events (``runtime.shell.lifecycle``, on when the sources file names a sink at start-up), so
an event exists exactly when its change is committed. One task reads the outbox of this
process in commit order, publishes each event to every sink, and only then marks it
published; after a crash, whatever was not marked is published again (at least once, each
event with its key ``<execution id>:<version>:<n>`` to drop repeats: NATS's ``Nats-Msg-Id``,
which a JetStream stream deduplicates within its window, and the ``key`` field of a Redis
entry). A sink that cannot be reached holds the others back until it can (nothing is lost).

The message is JSON: ``{key, executionId, tenantId, version, kind, status, stepId, at}``.
A NATS sink publishes through JetStream (a stream must capture its subject, and each
publish waits for the stream's ack); a Redis sink ``XADD``s ``{key, event}`` to its stream
(trimmed to about ``maxLength`` entries when set).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import MutableMapping
from typing import Any

import trio

from runtime.api.runtime import Runtime
from runtime.model.records import Change, Lifecycle
from runtime.model.wire import to_json
from runtime.sources.asyncio_thread import shared_loop
from runtime.sources.config import Sink

logger = logging.getLogger("runbooks.sources")
BATCH = 256
IDLE_POLL_S = 1.0
BACKOFF_MAX_S = 30.0


def message_of(event: Lifecycle) -> dict[str, Any]:
    data: dict[str, Any] = dict(to_json(event))
    data.pop("origin", None)
    return data


class _Target:
    """One sink's connection."""

    def __init__(self, sink: Sink, url: str) -> None:
        self.sink, self.url = sink, url
        self._client: Any = None

    def wants(self, event: Lifecycle) -> bool:
        return self.sink.tenant is None or self.sink.tenant == event.tenant_id

    async def open(self) -> None:
        if self._client is not None:
            return
        if self.sink.kind == "redis-stream":
            import coredis

            client = coredis.Redis.from_url(self.url, decode_responses=True)
            await client.__aenter__()
            self._client = client
        else:
            import nats

            self._client = await shared_loop().call(nats.connect(self.url, connect_timeout=5))

    async def publish(self, events: list[Lifecycle]) -> None:
        events = [event for event in events if self.wants(event)]
        if not events:
            return
        await self.open()
        if self.sink.kind == "redis-stream":
            for event in events:
                await self._client.xadd(self.sink.stream, {"key": event.key, "event": json.dumps(message_of(event))},
                                        trim_strategy=_maxlen() if self.sink.max_length else None,
                                        threshold=self.sink.max_length, trim_operator=_approx()
                                        if self.sink.max_length else None)
        else:
            await shared_loop().call(self._nats_publish(events))

    async def _nats_publish(self, events: list[Lifecycle]) -> None:
        js = self._client.jetstream()
        for event in events:
            await js.publish(self.sink.subject, json.dumps(message_of(event)).encode(),
                             headers={"Nats-Msg-Id": event.key})

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        with trio.CancelScope(shield=True), contextlib.suppress(Exception):
            if self.sink.kind == "redis-stream":
                await client.__aexit__(None, None, None)
            else:
                await shared_loop().call(client.close())


async def run_sinks(sinks: tuple[Sink, ...], urls: dict[str, str], runtime: Runtime,
                    status: MutableMapping[str, str]) -> None:
    """Publish this process's outbox to every sink, in commit order, until cancelled."""
    if not runtime.settings.lifecycle_outbox:
        for sink in sinks:
            status[sink.id] = "not started: sinks added after start-up need a restart"
        logger.error("sinks %s need a restart: lifecycle events are recorded only when the sources file "
                     "names a sink at start-up", ", ".join(s.id for s in sinks))
        return
    targets = [_Target(sink, urls[sink.id]) for sink in sinks]
    bell = [trio.Event()]  # rung by every committed change the runtime's observers hear of

    def wake(what: str, data: Any) -> None:
        bell[0].set()

    runtime.observers.append(wake)
    try:
        await _drain(targets, runtime, status, bell)
    finally:
        runtime.observers.remove(wake)
        for target in targets:
            await target.close()


async def _drain(targets: list[_Target], runtime: Runtime, status: MutableMapping[str, str],
                 bell: list[trio.Event]) -> None:
    origin, delay = runtime.settings.instance_id or "", 0.5
    while True:
        batch = await runtime.read(runtime.store.lifecycle_after, origin, 0, BATCH)
        if not batch:
            with trio.move_on_after(IDLE_POLL_S):
                await bell[0].wait()
            bell[0] = trio.Event()
            continue
        try:
            for target in targets:
                await target.publish([event for _, event in batch])
                status[target.sink.id] = "running"
        except Exception as exc:  # the sink is down: the same batch again, later
            for target in targets:
                await target.close()
                status[target.sink.id] = f"retrying: {type(exc).__name__}: {exc}"[:300]
            logger.warning("sinks: publishing lifecycle events failed, again in %.1f s: %s", delay, exc)
            await trio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)
            continue
        delay = 0.5
        await runtime.commit(Change(lifecycle_done=(origin, batch[-1][0])))


def _maxlen() -> Any:
    from coredis.tokens import PureToken

    return PureToken.MAXLEN


def _approx() -> Any:
    from coredis.tokens import PureToken

    return PureToken.APPROXIMATELY
