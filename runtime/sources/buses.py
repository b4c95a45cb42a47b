"""The two buses a source may read, behind one small shape: open, fetch a batch, ack.

- ``RedisStream`` (coredis, which runs on Trio through anyio): a consumer group on a
  stream key; this process reads as consumer ``<instance id>``. On connecting it first
  takes back what it held unacknowledged before (its own pending entries: a restart after
  a crash re-reads them at once), then every ``claimIdleMs`` it claims entries another
  consumer left pending that long (``XAUTOCLAIM``: a dead process's messages), then it
  reads new entries. A new group starts at the beginning of the stream. The message id is
  the entry id; the body is the entry's ``field`` (default ``body``), the headers are all
  its fields.
- ``JetStream`` (nats-py on its own asyncio thread, ``asyncio_thread``): a durable pull
  consumer on a stream and subject filter, shared by every process that names it, with
  ``ackWaitMs`` as its ack wait (an unacknowledged message is delivered again after it).
  The message id is its ``Nats-Msg-Id`` header, else ``<stream>:<stream sequence>``.

A ``Message`` is acknowledged (``ack``) only after its event is committed; ``retry``
gives it back for a later delivery.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any, Protocol

import attrs
import trio

from runtime.sources.asyncio_thread import shared_loop
from runtime.sources.config import Source

FETCH_WAIT_S = 1.0  # a fetch waits this long for a message before it comes back empty


@attrs.frozen
class Message:
    delivery_id: str
    body: bytes
    headers: Mapping[str, str]
    meta: Mapping[str, Any]
    handle: Any = attrs.field(eq=False, repr=False, default=None)  # the client's own message


class Bus(Protocol):
    async def open(self) -> None: ...

    async def fetch(self, most: int) -> list[Message]: ...

    async def ack(self, messages: list[Message]) -> None: ...

    async def retry(self, messages: list[Message]) -> None: ...

    async def close(self) -> None: ...


def bus_for(source: Source, consumer: str, url: str) -> Bus:
    if source.kind == "redis-stream":
        return RedisStream(source, consumer, url)
    return JetStream(source, url)


class RedisStream:
    def __init__(self, source: Source, consumer: str, url: str) -> None:
        self._source, self._consumer, self._url = source, consumer, url
        self._client: Any = None
        self._own_pending: str | None = "0"  # read what this consumer held before first, from this id on
        self._next_claim = 0.0

    async def open(self) -> None:
        import coredis
        from coredis.exceptions import StreamDuplicateConsumerGroupError

        self._client = coredis.Redis.from_url(self._url, decode_responses=True)
        await self._client.__aenter__()
        with contextlib.suppress(StreamDuplicateConsumerGroupError):  # (another process, or an earlier run, made it)
            await self._client.xgroup_create(self._source.stream, self._source.group, identifier="0", mkstream=True)
        self._own_pending = "0"

    async def fetch(self, most: int) -> list[Message]:
        source, client = self._source, self._client
        if self._own_pending is not None:
            entries = await self._read(self._own_pending, most, block=None)
            self._own_pending = entries[-1].delivery_id if entries else None
            if entries:
                return entries
        if trio.current_time() >= self._next_claim:
            self._next_claim = trio.current_time() + source.ack_wait_ms / 2000
            _, claimed, *_ = await client.xautoclaim(source.stream, source.group, self._consumer,
                                                     source.ack_wait_ms, "0-0", count=most)
            if claimed:
                return [self._message(entry) for entry in claimed if entry is not None]
        return await self._read(">", most, block=int(FETCH_WAIT_S * 1000))

    async def _read(self, start: str, most: int, block: int | None) -> list[Message]:
        found = await self._client.xreadgroup(self._source.group, self._consumer, {self._source.stream: start},
                                              count=most, block=block)
        entries = next(iter(found.values()), ()) if found else ()
        return [self._message(entry) for entry in entries if entry.field_values]

    def _message(self, entry: Any) -> Message:
        fields = {str(k): str(v) for k, v in entry.field_values.items()}
        body = fields.get(self._source.field)
        data = body.encode() if body is not None else _json(fields)
        return Message(str(entry.identifier), data, fields,
                       {"id": str(entry.identifier), "stream": self._source.stream})

    async def ack(self, messages: list[Message]) -> None:
        if messages:
            await self._client.xack(self._source.stream, self._source.group, [m.delivery_id for m in messages])

    async def retry(self, messages: list[Message]) -> None:
        if messages:  # they stay pending in the group: read them again
            self._own_pending = "0"

    async def close(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.__aexit__(None, None, None)
            self._client = None


class JetStream:
    def __init__(self, source: Source, url: str) -> None:
        self._source, self._url = source, url
        self._loop = shared_loop()
        self._nc: Any = None
        self._sub: Any = None

    async def open(self) -> None:
        self._nc, self._sub = await self._loop.call(self._open())

    async def _open(self) -> tuple[Any, Any]:
        import nats
        from nats.js.api import AckPolicy, ConsumerConfig

        source = self._source
        nc = await nats.connect(self._url, allow_reconnect=True, max_reconnect_attempts=-1, connect_timeout=5)
        try:
            config = ConsumerConfig(durable_name=source.durable, ack_policy=AckPolicy.EXPLICIT,
                                    ack_wait=source.ack_wait_ms / 1000, filter_subject=source.subject,
                                    max_ack_pending=max(1000, source.max_in_flight * 4))
            sub = await nc.jetstream().pull_subscribe(source.subject, durable=source.durable, stream=source.stream,
                                                      config=config)
        except BaseException:
            await nc.close()
            raise
        return nc, sub

    async def fetch(self, most: int) -> list[Message]:
        return await self._loop.call(self._fetch(most))

    async def _fetch(self, most: int) -> list[Message]:
        import nats.errors

        try:
            found = await self._sub.fetch(batch=most, timeout=FETCH_WAIT_S)
        except (nats.errors.TimeoutError, TimeoutError):
            return []
        return [self._message(msg) for msg in found]

    def _message(self, msg: Any) -> Message:
        headers = {str(k).lower(): str(v) for k, v in (msg.headers or {}).items()}
        meta = msg.metadata
        sequence = meta.sequence.stream
        ident = headers.get("nats-msg-id") or f"{meta.stream}:{sequence}"
        return Message(ident, bytes(msg.data), headers,
                       {"id": ident, "subject": msg.subject, "stream": meta.stream, "sequence": sequence,
                        "delivered": meta.num_delivered}, msg)

    async def ack(self, messages: list[Message]) -> None:
        if messages:
            await self._loop.call(self._each(messages, "ack"))

    async def retry(self, messages: list[Message]) -> None:
        if messages:
            await self._loop.call(self._each(messages, "nak"))

    @staticmethod
    async def _each(messages: list[Message], what: str) -> None:
        for message in messages:
            await getattr(message.handle, what)()

    async def close(self) -> None:
        if self._nc is not None:
            nc, self._nc = self._nc, None
            with trio.CancelScope(shield=True), contextlib.suppress(Exception):
                await self._loop.call(nc.close())


def _json(fields: Mapping[str, str]) -> bytes:
    import json

    return json.dumps(dict(fields)).encode()
