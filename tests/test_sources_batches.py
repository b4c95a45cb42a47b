"""A bus's fetched batch, published together (one process): a message repeated inside the
batch, or taken in an earlier batch, has no second effect and is acknowledged; an event for
one waiting step commits its receipt with the step taking it (one commit, nothing left
pending); a batch whose commits fail is given back, never acknowledged."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import trio

from runtime import Runtime, open_runtime
from runtime.model.records import Change, ChangeResult, Delivery
from runtime.sources.buses import Message
from runtime.sources.config import parse_sources
from runtime.sources.consumer import consume
from runtime.sources.intake import Intake
from runtime.store import MemoryStore
from tests.sources_helpers import WAIT

SOURCE = parse_sources({"sources": [{"id": "bus", "kind": "redis-stream", "url": "redis://127.0.0.1:1",
                                     "stream": "s", "group": "g", "maxInFlight": 8,
                                     "event": {"type": "${body.type}", "key": "${body.key}"}}]}).sources[0]


class ListBus:
    """A bus whose messages are handed out in the batches given, recording acks and retries."""

    def __init__(self, batches: Sequence[Sequence[Message]]) -> None:
        self.batches = [list(batch) for batch in batches]
        self.acked: list[str] = []
        self.retried: list[str] = []
        self.settled = trio.Event()

    async def open(self) -> None:
        """Nothing to connect to: the batches are in memory."""

    async def fetch(self, most: int) -> list[Message]:
        if not self.batches:
            await trio.sleep_forever()
        assert len(self.batches[0]) <= most
        return self.batches.pop(0)

    async def ack(self, messages: list[Message]) -> None:
        self.acked += [m.delivery_id for m in messages]
        self._check()

    async def retry(self, messages: list[Message]) -> None:
        self.retried += [m.delivery_id for m in messages]
        self._check()

    def _check(self) -> None:
        if not self.batches and len(self.acked) + len(self.retried) >= self.expected:
            self.settled.set()

    async def close(self) -> None:
        """Nothing to close."""

    expected = 0


def message(delivery_id: str, key: str) -> Message:
    body = json.dumps({"type": "go", "key": key}).encode()
    return Message(delivery_id, body, {}, {"id": delivery_id})


async def waiting(rt: Runtime, key: str) -> str:
    execution = await rt.start("wait", {"type": "go", "key": key}, force=True)
    with trio.fail_after(5):
        while (await rt.fetch(execution.id)).steps["ev"].status.value != "waiting":  # noqa: ASYNC110 (a committed state)
            await trio.sleep(0.01)
    return execution.id


@asynccontextmanager
async def consuming(rt: Runtime, bus: ListBus, expected: int) -> AsyncIterator[Intake]:
    bus.expected = expected
    async with trio.open_nursery() as nursery:
        intake = Intake(rt, nursery)
        nursery.start_soon(consume, SOURCE, bus, intake, {}, lambda: None)
        with trio.fail_after(10):
            await bus.settled.wait()
        yield intake
        nursery.cancel_scope.cancel()


async def test_a_message_repeated_in_its_batch_or_taken_in_an_earlier_one_is_one_event_and_acknowledged(
        tmp_path: Path) -> None:
    async with open_runtime(f"sqlite:///{tmp_path / 'b.db'}") as rt:
        await rt.register_runbook(WAIT)
        first, second = await waiting(rt, "k1"), await waiting(rt, "k2")
        bus = ListBus([[message("m1", "k1"), message("m2", "k2"), message("m1", "k1")],
                       [message("m2", "k2"), message("m3", "none")]])
        async with consuming(rt, bus, expected=5) as intake:
            assert sorted(bus.acked) == ["m1", "m1", "m2", "m2", "m3"] and bus.retried == []
            assert intake.count("bus").as_json() == {"received": 5, "refused": 0, "duplicate": 2}
        for execution_id in (first, second):
            assert (await rt.wait(execution_id)).status.value == "completed"
        again = await waiting(rt, "k1")  # the repeats left nothing retained for a later waiter
        retained = await rt.read(rt.store.retained_events, datetime.now(UTC))
        assert [event.correlation_key for event in retained] == ["none"]  # (m3: nobody waited for it)
        assert (await rt.fetch(again)).steps["ev"].status.value == "waiting"
        assert [r.event_id for r in await rt.read(rt.store.pending_receipts)] == []
        assert rt.store.receipts_known("bus", ["m1", "m2", "m3", "m4"]) == {"m1", "m2", "m3"}


async def test_an_event_for_one_waiting_step_is_one_commit_with_its_receipt(tmp_path: Path) -> None:
    async with open_runtime(f"sqlite:///{tmp_path / 'c.db'}") as rt:
        await rt.register_runbook(WAIT)
        execution_id = await waiting(rt, "k1")
        changes: list[Change] = []
        rt.persistence.observer = lambda count, seconds: None
        original = rt.store.commit

        def recording(batch: Sequence[Change]) -> list[ChangeResult]:
            changes.extend(batch)
            return original(batch)

        rt.store.commit = recording  # type: ignore[method-assign]
        bus = ListBus([[message("m1", "k1")]])
        async with consuming(rt, bus, expected=1):
            assert bus.acked == ["m1"]
        with_receipt = [c for c in changes if c.taken or c.receipt or c.settle]
        assert len(with_receipt) == 1 and with_receipt[0].steps  # the receipt rode with the step taking it
        assert (await rt.wait(execution_id)).steps["ev"].output["payload"] == {"type": "go", "key": "k1"}


class FailingStore(MemoryStore):
    """A memory store whose commits of a message's receipt fail while ``failing``."""

    failing = True

    def commit(self, changes: Sequence[Change]) -> list[ChangeResult]:
        if self.failing and any(change.taken or change.receipt for change in changes):
            raise RuntimeError("the disk is on fire")
        return super().commit(changes)


async def test_a_batch_whose_commits_fail_is_given_back_and_never_acknowledged() -> None:
    store = FailingStore()
    async with open_runtime(store) as rt:
        await rt.register_runbook(WAIT)
        execution_id = await waiting(rt, "k1")
        bus = ListBus([[message("m1", "k1"), message("m2", "nobody")]])
        async with consuming(rt, bus, expected=2):
            assert bus.acked == [] and sorted(bus.retried) == ["m1", "m2"]
        assert not rt.store.receipts_known("bus", ["m1", "m2"])
        store.failing = False
        bus = ListBus([[message("m1", "k1"), message("m2", "nobody")]])  # delivered again
        async with consuming(rt, bus, expected=2):
            assert sorted(bus.acked) == ["m1", "m2"]
        with trio.fail_after(5):
            assert (await rt.wait(execution_id)).status.value == "completed"


async def test_a_message_the_lookup_missed_is_still_taken_once(tmp_path: Path) -> None:
    """The receipt rides in the commit of the step taking the event: were the lookup wrong, the
    store refuses that commit whole and the step keeps waiting."""
    async with open_runtime(f"sqlite:///{tmp_path / 'm.db'}") as rt:
        await rt.register_runbook(WAIT)
        first = await waiting(rt, "k1")
        delivery = Delivery("bus", "m1")
        assert not (await rt.publish_event("go", "k1", {}, delivery=delivery)).duplicate
        assert (await rt.wait(first)).status.value == "completed"
        second = await waiting(rt, "k1")
        rt.store.receipts_known = lambda source_id, ids: set()  # type: ignore[method-assign]
        assert (await rt.publish_event("go", "k1", {}, delivery=delivery)).duplicate
        # refused whole: no command to the waiting step, and nothing retained for it to take later
        assert await rt.read(rt.store.retained_events, datetime.now(UTC)) == []
        assert (await rt.fetch(second)).steps["ev"].status.value == "waiting"
