"""Commands as rows of the commands table: the core's own messages, tagged with their class
name, and the rows a previous version queued still applied after an upgrade."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import attrs
import psycopg
import pytest
import trio
from psycopg import sql

from runtime import Settings, open_runtime
from runtime.core.messages import (
    Cancel,
    ChildFinished,
    Command,
    DecideApproval,
    DeliverEvent,
    Pause,
    Resume,
    RetryStep,
    command_of,
    command_row,
)
from runtime.model import Event, StepError
from runtime.store.postgres import PostgresStore
from tests.conftest import DSN

NOW = datetime(2026, 5, 1, 12, 30, tzinfo=UTC)
COMMANDS: list[Command] = [
    Pause("ops", "hold"),
    Resume("ops", None),
    Cancel("ops", "wrong change"),
    RetryStep("deploy", "ops", "flaky"),
    DecideApproval("ok", "boss", "approve", "go", roles=frozenset({"sre", "admin"})),
    DeliverEvent("ev", Event("e1", "t1", "go", "k1", {"n": 1}, NOW)),
    ChildFinished("child", "c1", "failed", None, StepError("boom", "it broke", True)),
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: type(c).__name__)
def test_every_command_crosses_as_its_class_name_and_its_fields(command: Command) -> None:
    tag, body = command_row(with_reply(command, object()))  # a live reply token stays behind
    stored = json.loads(json.dumps(body))  # what the JSON column gives back
    assert tag == type(command).__name__ and "reply" not in stored
    assert command_of(tag, stored) == command


def test_a_command_read_back_is_answered_through_the_reply_it_is_given() -> None:
    tag, body = command_row(DecideApproval("ok", "boss", "reject", None, roles=frozenset({"b", "a"})))
    assert body["roles"] == ["a", "b"]  # one JSON text per set of roles
    assert command_of(tag, body, "token").reply == "token"
    assert command_of(*command_row(ChildFinished("s", "c", "completed")), "token") == ChildFinished("s", "c", "completed")


def test_a_row_of_an_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown tag 'approve'"):
        command_of("approve", {"stepId": "ok"})


def with_reply(command: Command, reply: Any) -> Command:
    return command if isinstance(command, ChildFinished) else attrs.evolve(command, reply=reply)


GATE = {"id": "gate", "steps": [{"id": "ok", "type": "human-approval", "config": {"approvers": ["boss"]}}]}


@pytest.mark.postgres
async def test_a_decision_queued_by_the_previous_version_is_applied_after_the_upgrade(schema: str) -> None:
    settings = {"lease_ttl_ms": 900, "forward_wait_ms": 3000}
    async with open_runtime(PostgresStore(DSN, pool_max=3, schema=schema),
                            settings=Settings(instance_id="a", **settings)) as a:
        await a.register_runbook(GATE)
        execution = await a.start("gate")
        with trio.fail_after(10):
            async for state in a.watch(execution.id):
                if state.status == "awaiting_approval":
                    break
    old_body = {"stepId": "ok", "approver": "boss", "decision": "approve", "comment": "queued before", "roles": []}
    with psycopg.connect(DSN, autocommit=True) as conn:  # as the previous version left the database
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        conn.execute("INSERT INTO commands (id, execution_id, kind, body, origin) VALUES (%s, %s, 'approve', %s, 'a')",
                     (uuid.uuid4().hex, execution.id, json.dumps(old_body)))
        conn.execute("DELETE FROM schema_version WHERE version >= 7")  # (later migrations are re-run too)
    async with open_runtime(PostgresStore(DSN, pool_max=3, schema=schema),
                            settings=Settings(instance_id="b", **settings)) as b:
        final = await b.wait(execution.id)
    assert final.status == "completed" and final.steps["ok"].approvals[0].comment == "queued before"
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        rows = conn.execute("SELECT kind, applied_at IS NOT NULL FROM commands").fetchall()
    assert rows == [("DecideApproval", True)]
