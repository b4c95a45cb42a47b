"""PostgreSQL: a batch whose ``COMMIT`` reply was lost (the connection broke after the
server committed) is not written a second time when the persistence actor retries it; a
batch that broke before it was committed is written by the retry. Either way every log and
audit entry is there once, and the caller gets the batch's own answer."""

from __future__ import annotations

from collections import Counter
from typing import Any

import psycopg
import pytest

from runtime import open_runtime
from runtime.store.postgres import PostgresStore
from tests.conftest import DSN

pytestmark = [pytest.mark.postgres]

RUNBOOK = {"id": "two", "steps": [{"id": "a", "type": "probe"}, {"id": "b", "type": "probe"}]}


async def probe(ctx: Any) -> Any:
    return {"ran": ctx.step_id}


class BreakingStore(PostgresStore):
    """The next ``after`` commits land and then lose their reply; the next ``before`` break
    before anything is sent."""

    after = 0
    before = 0
    lost = 0
    unseen = 0  # the next lookups of a lost batch's row find nothing (its COMMIT still in progress)

    def _write_batch(self, attempt: Any) -> None:
        if self.before:
            self.before -= 1
            raise psycopg.OperationalError("server closed the connection unexpectedly (before)")
        super()._write_batch(attempt)
        if self.after:
            self.after -= 1
            self.lost += 1
            raise psycopg.OperationalError("server closed the connection unexpectedly (during COMMIT)")

    def _batch_committed(self, marker: str) -> bool:
        if self.unseen:
            self.unseen -= 1
            return False
        return super()._batch_committed(marker)


@pytest.mark.parametrize("where", ["after", "before", "in_progress"])
async def test_a_retried_batch_is_written_once(schema: str, where: str) -> None:
    store = BreakingStore(DSN, pool_max=2, schema=schema)
    if where == "in_progress":  # the retry's lookup comes while the server still commits the first try
        where, store.unseen = "after", 1_000
    async with open_runtime(store, executors={"probe": probe}) as rt:
        await rt.register_runbook(RUNBOOK)
        setattr(store, where, 1)  # the start's batch breaks
        execution = await rt.start("two", {"n": 1})
        setattr(store, where, 2)  # and the next two batches too
        final = await rt.wait(execution.id)
        assert final.status == "completed" and final.steps["b"].output == {"ran": "b"}
        if where == "after":
            assert store.lost == 3  # three commits landed whose reply never came

        audit = Counter((entry.action, entry.step_id) for entry in await rt.audit(execution.id))
        assert audit[("execution.started", None)] == 1
        assert audit[("step.started", "a")] == 1 and audit[("step.succeeded", "a")] == 1
        assert audit[("step.started", "b")] == 1 and audit[("step.succeeded", "b")] == 1
        assert max(audit.values()) == 1
        logs = Counter(entry.message for entry in await rt.logs(execution.id))
        assert logs["execution created"] == 1
        assert len((await rt.list_executions()).items) == 1
