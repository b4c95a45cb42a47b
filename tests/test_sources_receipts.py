"""A message's event across a restart (SQLite, one process): the receipt committed with the
steps the event is for is handed to those steps at the next start, once, and a repeat of
the message is still known."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import trio

from runtime import open_runtime
from runtime.api.receipts import event_id_of
from runtime.model import Event
from runtime.model.records import Change, Delivery, Receipt
from runtime.store import SqliteStore
from tests.sources_helpers import WAIT


async def test_a_receipt_left_pending_by_a_crash_is_handed_to_its_step_at_the_next_start(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    async with open_runtime(url) as rt:
        await rt.register_runbook(WAIT)
        execution = await rt.start("wait", {"type": "go", "key": "k"})
        with trio.fail_after(5):
            while (await rt.fetch(execution.id)).steps["ev"].status.value != "waiting":  # noqa: ASYNC110 (a committed state)
                await trio.sleep(0.01)
        now = rt.now()
    # what a crash right after the commit that took the message leaves behind
    delivery = Delivery("bus", "m-1")
    event = Event(event_id_of(delivery), "default", "go", "k", {"n": 1}, now)
    store = SqliteStore(str(tmp_path / "r.db"))
    store.open()
    store.commit([Change(receipt=Receipt("bus", "m-1", "default", event.id, now, now + timedelta(days=1),
                                         ((execution.id, "ev"),), event))])
    store.close()
    async with open_runtime(url) as rt:
        with trio.fail_after(5):
            done = await rt.wait(execution.id)
        assert done.steps["ev"].output["payload"] == {"n": 1}
        with trio.fail_after(5):
            while await rt.read(rt.store.pending_receipts):  # noqa: ASYNC110 (settled by a commit)
                await trio.sleep(0.01)
        again = await rt.publish_event("go", "k", {"n": 1}, delivery=delivery)
        assert again.duplicate and len(rt.router.retained) == 0
