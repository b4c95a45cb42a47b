"""The local Redis and NATS JetStream servers, as the bus tests use them: whether they run,
a JetStream stream of the test's own (deleted after), and reading what a consumer holds."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from runtime.sources.asyncio_thread import shared_loop

REDIS_URL = "redis://127.0.0.1:6379/0"
NATS_URL = "nats://127.0.0.1:4222"
DUPLICATE_WINDOW_S = 0.1  # the test streams forget a Nats-Msg-Id this fast (the least NATS allows)


def _listening(port: int) -> bool:
    """Whether a server listens (under CI=true always yes: .ci/run starts them, so a test
    that cannot reach one fails instead of being skipped)."""
    if os.environ.get("CI") == "true":
        return True
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def redis_available() -> bool:
    return _listening(6379)


def nats_available() -> bool:
    return _listening(4222)


@attrs.define
class TestStream:
    url: str
    stream: str
    subject: str
    _nc: Any

    async def publish(self, subject: str, body: bytes, *, msg_id: str | None = None,
                      bypass_window: bool = False) -> int:
        """Publish into the stream; its stream sequence. ``bypass_window``: wait out the
        duplicate window first, so a repeated ``msg_id`` is stored again."""
        if bypass_window:
            await trio.sleep(DUPLICATE_WINDOW_S * 1.5)
        headers = {"Nats-Msg-Id": msg_id} if msg_id else None
        ack = await shared_loop().call(self._nc.jetstream().publish(subject, body, headers=headers))
        return int(ack.seq)

    async def pending(self, durable: str) -> int:
        """Messages delivered to the consumer and not yet acknowledged, plus those not delivered."""
        info = await shared_loop().call(self._nc.jetstream().consumer_info(self.stream, durable))
        return int(info.num_ack_pending) + int(info.num_pending)


@asynccontextmanager
async def jetstream(url: str = NATS_URL) -> AsyncIterator[TestStream]:
    import nats

    name = f"T{uuid.uuid4().hex[:10]}"
    nc = await shared_loop().call(nats.connect(url))
    created = False
    try:
        await shared_loop().call(nc.jetstream().add_stream(name=name, subjects=[f"{name.lower()}.>"],
                                                           duplicate_window=DUPLICATE_WINDOW_S))
        created = True
        yield TestStream(url, name, name.lower(), nc)
    finally:
        with trio.CancelScope(shield=True):
            try:
                if created:
                    await shared_loop().call(nc.jetstream().delete_stream(name))
            finally:
                await shared_loop().call(nc.close())
