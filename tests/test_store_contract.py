"""One contract suite for every store: memory (the reference), SQLite and PostgreSQL.

The PostgreSQL cases use RUNBOOKS_TEST_DSN (default: the local test server), each in a fresh
schema that is dropped afterwards. They skip when the server cannot be reached, unless
CI=true: then they fail.
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import attrs
import psycopg
import pytest
from psycopg import sql

from runtime.model import (
    NOT_DEDUPED,
    Approval,
    AuditEntry,
    Event,
    Evidence,
    Execution,
    ExecutionStatus,
    LogEntry,
    RetryPolicy,
    Runbook,
    Step,
    StepError,
    StepSlot,
    StepState,
    StepStatus,
    TriggerState,
)
from runtime.model.errors import Conflict, StoreInUse, StoreUnavailable, ValidationError
from runtime.model.records import Change, ChangeResult, Lifecycle, Receipt, SlotClaim
from runtime.store import MemoryStore, PostgresStore, SqliteStore, Store, open_store_from_url
from runtime.store.schema import NOT_DEDUPED_SQL, UNFINISHED_SQL
from tests.conftest import drop_schema

ES = ExecutionStatus
T0 = datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# ---------------------------------------------------------------- backends


@attrs.define
class Backend:
    kind: str
    factory: Callable[[bool], Store]  # light: a store that holds as few connections as it can
    opened: list[Store] = attrs.Factory(list)
    versions: Callable[[], list[tuple[Any, ...]]] = lambda: []

    def open(self, *, light: bool = False) -> Store:
        store = self.factory(light)
        store.open()
        self.opened.append(store)
        return store


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    kind: str = request.param
    if kind == "memory":
        yield Backend(kind, lambda light: MemoryStore())
    elif kind == "sqlite":
        path = tmp_path / "nested" / "runbooks.db"  # the store creates the directory
        backend = Backend(kind, lambda light: SqliteStore(path), versions=lambda: _sqlite_versions(path))
        yield backend
        _close_all(backend)
    else:
        dsn = request.getfixturevalue("postgres_dsn")
        schema = f"test_{uuid.uuid4().hex[:16]}"

        def make(light: bool) -> Store:
            return PostgresStore(dsn, pool_max=2 if light else 4, schema=schema, pool_min=0 if light else 1)

        backend = Backend(kind, make, versions=lambda: _postgres_versions(dsn, schema))
        try:
            yield backend
        finally:
            _close_all(backend)
            drop_schema(dsn, schema)


@pytest.fixture
def store(backend: Backend) -> Store:
    return backend.open()


def _close_all(backend: Backend) -> None:
    for opened in backend.opened:
        opened.close()


def _sqlite_versions(path: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT version, applied_at FROM schema_version ORDER BY version").fetchall()


def _postgres_versions(dsn: str, schema: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        query = sql.SQL("SELECT version, applied_at FROM {}.schema_version ORDER BY version")
        return conn.execute(query.format(sql.Identifier(schema))).fetchall()


#: for tests of what only the SQL stores promise (transactions, a file or schema to reopen)
durable = pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
postgres_only = pytest.mark.parametrize("backend", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)


# ---------------------------------------------------------------- sample values


def make_runbook(runbook_id: str, *, tenant: str | None = None, name: str | None = None) -> Runbook:
    steps = (
        Step("fetch", "call-service", {"url": "https://svc.test/a"}, retry_policy=RetryPolicy(max_retries=2)),
        Step("check", "echo", {"value": 1}, depends_on=("fetch",), when={"path": "steps.fetch.output.ok"}),
    )
    document = {"id": runbook_id, "name": name, "steps": [{"id": "fetch"}, {"id": "check"}]}
    return Runbook(runbook_id, steps, name=name, tenant_id=tenant, created_at=T0, document=document,
                   input_schema={"type": "object"}, output={"result": "${steps.check.output}"})


def make_execution(
    execution_id: str,
    *,
    tenant: str = "t1",
    runbook: str = "rb",
    version: int = 1,
    input_hash: str = "hash-1",
    status: ExecutionStatus = ES.PENDING,
    key: str | None = None,
    deduplicated: bool = True,
    steps: tuple[str, ...] = ("a", "b", "c"),
) -> Execution:
    return Execution(
        id=execution_id, runbook_id=runbook, runbook_version=version, tenant_id=tenant, status=status,
        created_at=T0, steps={sid: StepState(StepStatus.PENDING, "echo") for sid in steps},
        input={"n": 1}, context={"tenantId": tenant}, input_hash=input_hash, idempotency_key=key,
        deduplicated=deduplicated,
    )


def start(new: Execution, /, *, dedup: bool = True, **parts: Any) -> Change:
    return Change(new_execution=new, dedup=dedup, **parts)


def update(execution: Execution, **changes: Any) -> Change:
    return Change(execution=attrs.evolve(execution, **changes))


def ids(executions: list[Execution]) -> list[str]:
    return [execution.id for execution in executions]


# ---------------------------------------------------------------- runbooks


def test_runbook_versions(store: Store) -> None:
    first, second = make_runbook("deploy", name="one"), make_runbook("deploy", name="two")
    assert store.commit([Change(runbook=first)]) == [ChangeResult(runbook_version=1)]
    assert store.commit([Change(runbook=second)]) == [ChangeResult(runbook_version=2)]

    assert store.get_runbook(None, "deploy") == attrs.evolve(second, version=2)
    assert store.get_runbook(None, "deploy", 1) == attrs.evolve(first, version=1)
    assert store.get_runbook(None, "deploy", 3) is None
    assert store.get_runbook(None, "deploy", 0) is None
    assert store.get_runbook(None, "unknown") is None

    third = make_runbook("deploy", name="three")
    batch = [Change(runbook=third), Change(runbook=make_runbook("deploy"))]
    assert store.commit(batch) == [ChangeResult(runbook_version=3), ChangeResult(runbook_version=4)]
    assert store.get_runbook(None, "deploy", 3) == attrs.evolve(third, version=3)


def test_runbook_visibility_own_shadows_shared(store: Store) -> None:
    shared_a1, shared_a2 = make_runbook("a", name="shared a1"), make_runbook("a", name="shared a2")
    shared_c = make_runbook("c", name="shared c")
    own_a, own_b = make_runbook("a", tenant="t1", name="t1 a"), make_runbook("b", tenant="t1", name="t1 b")
    store.commit([Change(runbook=rb) for rb in (shared_a1, shared_a2, shared_c, own_a, own_b)])

    assert store.list_runbooks("t1") == [
        attrs.evolve(own_a, version=1), attrs.evolve(own_b, version=1), attrs.evolve(shared_c, version=1),
    ]
    assert store.list_runbooks("t2") == [attrs.evolve(shared_a2, version=2), attrs.evolve(shared_c, version=1)]
    assert store.list_runbooks(None) == store.list_runbooks("t2")

    assert store.get_runbook("t1", "a") == attrs.evolve(own_a, version=1)
    assert store.get_runbook("t1", "a", 2) is None  # the tenant's own "a" has no version 2: no fallback
    assert store.get_runbook("t1", "c") == attrs.evolve(shared_c, version=1)  # falls back to shared
    assert store.get_runbook("t2", "a", 1) == attrs.evolve(shared_a1, version=1)
    assert store.get_runbook("t2", "b") is None
    assert store.get_runbook(None, "b") is None


def test_all_latest_runbooks_of_every_owner(store: Store) -> None:
    triggers = ({"id": "cron", "schedule": "0 * * * *"},)
    shared1, shared2 = make_runbook("a"), attrs.evolve(make_runbook("a", name="two"), triggers=triggers)
    own = make_runbook("a", tenant="t1")
    store.commit([Change(runbook=rb) for rb in (shared1, shared2, own)])
    found = sorted(store.all_latest_runbooks(), key=lambda rb: str(rb.tenant_id))
    assert found == [attrs.evolve(shared2, version=2), attrs.evolve(own, version=1)]
    assert found[0].triggers == triggers


def test_trigger_state_switches_and_keeps_the_newest_run_per_tenant(store: Store) -> None:
    assert store.trigger_states() == []
    store.set_trigger_enabled("t1", None, "rb", "cron", False)
    store.record_trigger_run("t1", None, "rb", "cron", at(60), "e2")
    store.record_trigger_run("t1", None, "rb", "cron", at(30), "e1")  # older: kept out
    store.record_trigger_run("t2", None, "rb", "cron", at(20), "e4")  # the same shared trigger in another tenant
    store.record_trigger_run("t1", "t1", "rb", "cron", at(10), "e3")  # the tenant's own runbook of that name
    store.set_trigger_enabled("t1", "t1", "rb", "cron", True)
    states = sorted(store.trigger_states(), key=lambda s: (s.tenant_id, str(s.owner)))
    assert states == [TriggerState("t1", None, "rb", "cron", False, at(60), "e2"),
                      TriggerState("t1", "t1", "rb", "cron", True, at(10), "e3"),
                      TriggerState("t2", None, "rb", "cron", True, at(20), "e4")]
    store.set_trigger_enabled("t1", None, "rb", "cron", True)  # switching keeps the last run
    assert TriggerState("t1", None, "rb", "cron", True, at(60), "e2") in store.trigger_states()


def test_a_decision_link_is_claimed_once_by_the_first_claimant(store: Store) -> None:
    assert store.link_used("L1") is None
    assert store.claim_link("L1", "me", "e1", "approve", "alice", at(10)) is None  # the first use
    assert store.claim_link("L1", "other", "e1", "approve", "alice", at(20)) == at(10)  # refused: when it was used
    assert store.link_used("L1") == at(10)
    assert store.claim_link("L2", "other", "e1", "approve", "bob", at(40)) is None


# ---------------------------------------------------------------- executions


def test_new_execution_round_trips_every_field(store: Store) -> None:
    cest = timezone(timedelta(hours=2))
    when = datetime(2025, 6, 1, 14, 30, 0, 123456, tzinfo=cest)
    output = {"nested": [1, 2.5, -3e-7, None, True, "ünïcode ✓", "nul\u0000byte"], "big": 2**70, "e": {}}
    steps = {
        "zeta": StepState(StepStatus.SUCCEEDED, "call-service", attempts=2, started_at=when, completed_at=when,
                          output=output, progress={"done": 3, "of": 4}),
        "alpha": StepState(StepStatus.REJECTED, "human-approval", attempts=1, started_at=when, deadline_at=when,
                           error=StepError("rejected", "no", retryable=False),
                           approvals=(Approval("ann", "reject", "not today", when), Approval("bob", "approve", None, when))),
        "mid": StepState(StepStatus.PENDING, "echo"),
    }
    execution = Execution(
        id="ex-1", runbook_id="rb", runbook_version=3, tenant_id="t1", status=ES.FAILED, created_at=when,
        steps=steps, input=[{"x": 1}, "y"], context={"tenantId": "t1", "userId": "u"}, output="text output",
        error=StepError("rejected", "step alpha rejected", step_id="alpha"), started_at=when,
        completed_at=when + timedelta(minutes=1), paused_duration_ms=1500, replay_of="ex-0",
        input_hash="abc", idempotency_key="key-1", deduplicated=False, paused_at=when, deadline_at=when,
    )
    assert store.commit([start(execution, dedup=False)]) == [ChangeResult()]

    found = store.get_execution("ex-1")
    assert found == execution
    assert found is not None
    assert list(found.steps) == ["zeta", "alpha", "mid"]  # document order, not alphabetical
    assert found.created_at.tzinfo is not None
    assert found.created_at.utcoffset() is not None
    assert found.steps["zeta"].output == output
    assert store.get_execution("nope") is None


def test_duplicate_start_returns_existing_and_writes_nothing_else(store: Store) -> None:
    first = make_execution("first")
    assert store.commit([start(first)]) == [ChangeResult()]

    duplicate = make_execution("dup")
    change = start(
        duplicate,
        runbook=make_runbook("never"),
        execution=attrs.evolve(duplicate, status=ES.RUNNING),
        steps=(("dup", "a", 0, StepState(StepStatus.RUNNING, "echo")),),
        logs=(LogEntry("dup", T0, "info", "created"),),
        audit=(AuditEntry("dup", T0, "u", "execution.started"),),
        evidence=(Evidence("ev-dup", "dup", None, "note", "0" * 64, {"x": 1}, T0),),
        retain_events=(Event("event-dup", "t1", "x", "k", {}, T0),),
    )
    assert store.commit([change]) == [ChangeResult(existing_id="first")]
    assert store.get_execution("dup") is None
    assert store.logs("dup") == []
    assert store.audit("dup") == []
    assert store.evidence("dup") == []
    assert store.retained_events(T0) == []
    assert store.get_runbook(None, "never") is None
    assert store.get_execution("first") == first
    active = store.find_active("t1", "rb", 1, "hash-1")
    assert active is not None
    assert active.id == "first"

    # within one batch, the second start of the same input is the duplicate of the first
    one, two = make_execution("one", input_hash="h2"), make_execution("two", input_hash="h2")
    assert store.commit([start(one), start(two)]) == [ChangeResult(), ChangeResult(existing_id="one")]

    # another tenant, runbook or version is another slot
    others = [
        make_execution("other-tenant", tenant="t2"),
        make_execution("other-runbook", runbook="rb2"),
        make_execution("other-version", version=2),
    ]
    assert store.commit([start(e) for e in others]) == [ChangeResult()] * 3


@pytest.mark.parametrize("status", [ES.FAILED, ES.CANCELLED, ES.TIMED_OUT])
def test_failed_cancelled_timed_out_release_the_input_hash(store: Store, status: ExecutionStatus) -> None:
    first = make_execution("first")
    store.commit([start(first)])
    store.commit([update(first, status=status)])
    assert store.find_active("t1", "rb", 1, "hash-1") is None

    assert store.commit([start(make_execution("second"))]) == [ChangeResult()]
    active = store.find_active("t1", "rb", 1, "hash-1")
    assert active is not None
    assert active.id == "second"


def test_completed_execution_still_blocks_its_input_hash(store: Store) -> None:
    first = make_execution("first")
    store.commit([start(first), update(first, status=ES.COMPLETED)])
    assert store.commit([start(make_execution("second"))]) == [ChangeResult(existing_id="first")]


def test_release_and_start_in_one_batch_apply_in_order(store: Store) -> None:
    first = make_execution("first")
    store.commit([start(first)])
    # the duplicate comes before the failure: still a duplicate
    assert store.commit([start(make_execution("early")), update(first, status=ES.FAILED)]) == [
        ChangeResult(existing_id="first"), ChangeResult(),
    ]
    store.commit([update(first, status=ES.RUNNING)])
    # the failure comes first: the start takes the free slot
    assert store.commit([update(first, status=ES.FAILED), start(make_execution("late"))]) == [
        ChangeResult(), ChangeResult(),
    ]
    active = store.find_active("t1", "rb", 1, "hash-1")
    assert active is not None
    assert active.id == "late"


def test_retried_execution_may_run_beside_a_newer_duplicate(store: Store) -> None:
    first = make_execution("first")
    store.commit([start(first), update(first, status=ES.FAILED)])
    store.commit([start(make_execution("second"))])
    # retrying the failed one makes two active executions of one input: the commit must not fail
    assert store.commit([update(first, status=ES.RUNNING)]) == [ChangeResult()]
    found = store.get_execution("first")
    assert found is not None
    assert found.status is ES.RUNNING
    [result] = store.commit([start(make_execution("third"))])
    assert result.existing_id in {"first", "second"}


def test_dedup_false_bypasses_the_input_hash(store: Store) -> None:
    first = make_execution("first")
    store.commit([start(first)])
    forced = make_execution("forced", deduplicated=False)
    assert store.commit([start(forced, dedup=False)]) == [ChangeResult()]
    assert store.get_execution("forced") == forced
    active = store.find_active("t1", "rb", 1, "hash-1")
    assert active is not None
    assert active.id == "first"

    store.commit([update(first, status=ES.CANCELLED)])
    assert store.find_active("t1", "rb", 1, "hash-1") is None  # a forced start is never "active"
    assert store.commit([start(make_execution("third"))]) == [ChangeResult()]


def test_idempotency_key(store: Store) -> None:
    first = make_execution("first", key="k1")
    store.commit([start(first)])
    again = make_execution("again", key="k1", input_hash="another input")
    assert store.commit([start(again)]) == [ChangeResult(existing_id="first")]
    assert store.get_execution("again") is None

    found = store.find_by_idempotency_key("t1", "k1")
    assert found == first
    assert store.find_by_idempotency_key("t1", "k2") is None
    assert store.find_by_idempotency_key("t2", "k1") is None

    assert store.commit([start(make_execution("other-tenant", tenant="t2", key="k1"))]) == [ChangeResult()]
    # a key stays taken whatever becomes of its execution, and with dedup off
    store.commit([update(first, status=ES.FAILED)])
    forced = make_execution("forced", key="k1", input_hash="h9", deduplicated=False)
    assert store.commit([start(make_execution("late", key="k1", input_hash="h9")), start(forced, dedup=False)]) == [
        ChangeResult(existing_id="first"), ChangeResult(existing_id="first"),
    ]


def test_header_and_step_upserts_last_wins(store: Store) -> None:
    execution = make_execution("ex")
    running = StepState(StepStatus.RUNNING, "echo", attempts=1, started_at=at(1))
    done = StepState(StepStatus.SUCCEEDED, "echo", attempts=1, started_at=at(1), completed_at=at(2), output={"v": 1})
    b_first, b_last = StepState(StepStatus.RUNNING, "echo"), StepState(StepStatus.FAILED, "echo", attempts=3)
    batch = [
        start(execution, execution=attrs.evolve(execution, status=ES.RUNNING, started_at=at(1)),
              steps=(("ex", "a", 0, running),)),
        Change(execution=attrs.evolve(execution, status=ES.RUNNING, started_at=at(1), output=1),
               steps=(("ex", "a", 0, done), ("ex", "b", 1, b_first))),
        Change(execution=attrs.evolve(execution, status=ES.COMPLETED, started_at=at(1), output={"all": "done"}),
               steps=(("ex", "b", 1, b_first), ("ex", "b", 1, b_last))),
    ]
    assert store.commit(batch) == [ChangeResult()] * 3
    found = store.get_execution("ex")
    assert found is not None
    assert found.status is ES.COMPLETED
    assert found.output == {"all": "done"}
    assert found.steps == {"a": done, "b": b_last, "c": StepState(StepStatus.PENDING, "echo")}
    assert list(found.steps) == ["a", "b", "c"]

    # the header's steps are not written by a header upsert; a step's position is its order
    store.commit([Change(execution=attrs.evolve(found, steps={}), steps=(("ex", "c", -1, b_first),))])
    found = store.get_execution("ex")
    assert found is not None
    assert list(found.steps) == ["c", "a", "b"]
    assert found.steps["c"] == b_first


def test_list_executions_filters_and_pages_newest_first(store: Store) -> None:
    specs = [
        ("e1", "t1", "rb", ES.RUNNING), ("e2", "t1", "rb", ES.COMPLETED), ("e3", "t2", "rb", ES.RUNNING),
        ("e4", "t1", "other", ES.RUNNING), ("e5", "t1", "rb", ES.RUNNING), ("e6", "t1", "rb", ES.FAILED),
        ("e7", "t1", "rb", ES.RUNNING),
    ]
    made = {eid: make_execution(eid, tenant=t, runbook=rb, status=status, input_hash=eid) for eid, t, rb, status in specs}
    store.commit([start(made["e1"]), start(made["e2"])])
    store.commit([start(made[eid]) for eid in ("e3", "e4", "e5", "e6", "e7")])

    page, cursor = store.list_executions("t1")
    assert (ids(page), cursor) == (["e7", "e6", "e5", "e4", "e2", "e1"], None)
    assert page[0] == made["e7"]  # with its steps
    assert ids(store.list_executions(None)[0]) == ["e7", "e6", "e5", "e4", "e3", "e2", "e1"]
    assert ids(store.list_executions("t1", runbook_id="rb", status="running")[0]) == ["e7", "e5", "e1"]
    assert ids(store.list_executions(None, status="running")[0]) == ["e7", "e5", "e4", "e3", "e1"]
    assert store.list_executions("t3") == ([], None)

    pages: list[list[str]] = []
    cursor = None
    while True:
        page, cursor = store.list_executions("t1", limit=2, cursor=cursor)
        pages.append(ids(page))
        if cursor is None:
            break
    assert pages == [["e7", "e6"], ["e5", "e4"], ["e2", "e1"]]

    first, cursor = store.list_executions("t1", runbook_id="rb", limit=3)
    assert ids(first) == ["e7", "e6", "e5"]
    assert cursor is not None
    rest, end = store.list_executions("t1", runbook_id="rb", limit=3, cursor=cursor)
    assert (ids(rest), end) == (["e2", "e1"], None)

    store.commit([update(made["e1"], status=ES.COMPLETED)])  # the indexed status follows the header
    assert ids(store.list_executions("t1", status="running")[0]) == ["e7", "e5", "e4"]
    assert ids(store.list_executions("t1", status="completed")[0]) == ["e2", "e1"]

    with pytest.raises(ValidationError):
        store.list_executions("t1", cursor="not-a-cursor")


def test_awaiting_approval_finds_unfinished_executions_with_a_step_awaiting(store: Store) -> None:
    waiting = StepState(StepStatus.AWAITING_APPROVAL, "human-approval", attempts=1, started_at=at(1))
    made = {eid: make_execution(eid, tenant=tenant, status=status, input_hash=eid)
            for eid, tenant, status in (("e1", "t1", ES.AWAITING_APPROVAL), ("e2", "t1", ES.RUNNING),
                                        ("e3", "t2", ES.AWAITING_APPROVAL), ("e4", "t1", ES.PAUSED),
                                        ("e5", "t1", ES.RUNNING), ("e6", "t1", ES.AWAITING_APPROVAL))}
    store.commit([start(execution) for execution in made.values()])
    store.commit([Change(steps=((eid, "b", 1, waiting),)) for eid in ("e1", "e2", "e3", "e4", "e6")])
    # e5 has no step awaiting; e6 finished while its step still shows awaiting (never listed)
    store.commit([update(made["e6"], status=ES.CANCELLED)])

    page, cursor = store.awaiting_approval("t1")
    assert (ids(page), cursor) == (["e4", "e2", "e1"], None)
    assert page[0].steps["b"] == waiting  # with its steps
    assert ids(store.awaiting_approval(None)[0]) == ["e4", "e3", "e2", "e1"]
    assert store.awaiting_approval("t3") == ([], None)
    first, cursor = store.awaiting_approval("t1", limit=2)
    assert ids(first) == ["e4", "e2"] and cursor is not None
    assert ids(store.awaiting_approval("t1", limit=2, cursor=cursor)[0]) == ["e1"]

    decided = StepState(StepStatus.SUCCEEDED, "human-approval", attempts=1, started_at=at(1), completed_at=at(2))
    store.commit([Change(steps=(("e2", "b", 1, decided),))])
    assert ids(store.awaiting_approval("t1")[0]) == ["e4", "e1"]


def test_load_unfinished_oldest_first(store: Store) -> None:
    executions = [make_execution(f"e-{status.value}", status=status, input_hash=status.value) for status in ES]
    store.commit([start(execution) for execution in executions])
    unfinished = ["e-queued", "e-pending", "e-running", "e-awaiting_approval", "e-pausing", "e-paused"]
    loaded = store.load_unfinished()
    assert ids(loaded) == unfinished
    assert loaded[0] == executions[0]

    store.commit([update(executions[1], status=ES.COMPLETED)])
    assert ids(store.load_unfinished()) == [eid for eid in unfinished if eid != executions[1].id]


# ---------------------------------------------------------------- records


def test_logs_filters_and_sequence(store: Store) -> None:
    store.commit([start(make_execution("ex")), start(make_execution("other", input_hash="o"))])
    specs = [(None, "info"), ("s1", "debug"), ("s1", "warning"), ("s2", "error"), ("s1", "info"), (None, "error")]
    entries = [LogEntry("ex", at(i), level, f"m{i}", step, {"i": i}) for i, (step, level) in enumerate(specs)]
    noise = LogEntry("other", T0, "error", "other execution")
    store.commit([Change(logs=tuple(entries[:3])), Change(logs=(noise,))])
    store.commit([Change(logs=tuple(entries[3:]))])

    logged = store.logs("ex")
    assert [entry.message for entry in logged] == [f"m{i}" for i in range(6)]
    seqs = [entry.seq for entry in logged]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 6
    assert seqs[0] > 0
    assert logged == [attrs.evolve(entry, seq=seq) for entry, seq in zip(entries, seqs, strict=True)]

    def messages(**filters: Any) -> list[str]:
        return [entry.message for entry in store.logs("ex", **filters)]

    assert messages(step_id="s1") == ["m1", "m2", "m4"]
    assert messages(level="warning") == ["m2", "m3", "m5"]
    assert messages(level="debug") == [f"m{i}" for i in range(6)]
    assert messages(level="info", step_id="s1") == ["m2", "m4"]
    assert messages(after=seqs[2]) == ["m3", "m4", "m5"]
    assert messages(after=seqs[2], level="error") == ["m3", "m5"]
    assert messages(limit=2) == ["m0", "m1"]
    assert messages(after=seqs[0], limit=1) == ["m1"]
    assert messages(after=seqs[-1]) == []
    assert store.logs("nobody") == []


def test_audit_and_evidence_keep_their_order(store: Store) -> None:
    store.commit([start(make_execution("ex"))])
    audit = [
        AuditEntry("ex", at(i), f"user{i}", "execution.paused", f"s{i}", "contract", f"reason {i}", {"i": [i]})
        for i in range(3)
    ]
    evidence = [Evidence(f"ev{i}", "ex", "s1" if i else None, "http", f"{i:064x}", {"body": i}, at(i)) for i in range(3)]
    other = AuditEntry("other", T0, "u", "x")
    store.commit([Change(audit=(audit[0], other), evidence=(evidence[0],)), Change(audit=(audit[1],))])
    store.commit([Change(audit=(audit[2],), evidence=(evidence[1], evidence[2]))])
    assert [as_written(entry) for entry in store.audit("ex")] == audit
    assert [entry.seq for entry in store.audit("ex")] == [1, 3, 4]  # one chain for the tenant: "other" is 2
    assert store.evidence("ex") == evidence
    assert [as_written(entry) for entry in store.audit("other")] == [other]
    assert store.evidence("other") == []


def as_written(entry: AuditEntry) -> AuditEntry:
    """An entry without what the store adds when it chains it."""
    return attrs.evolve(entry, tenant_id=None, seq=None, prev_hash=None, hash=None, data_sha256=None)


def test_a_payload_is_erased_once_and_a_second_erasure_writes_nothing(store: Store) -> None:
    """Two erasures of one entry, checked at the same moment (two processes, or two changes
    of one batch): the second is refused whole, so one ``audit.payload_erased`` entry
    records the erasure."""
    store.commit([start(make_execution("ex"))])
    store.commit([Change(audit=tuple(AuditEntry("ex", at(i), "u", "execution.paused", data={"who": "jane"},
                                                tenant_id="t1") for i in range(2)))])
    first, second = (entry.seq for entry in store.audit("ex"))
    assert first is not None and second is not None

    def erasure(seq: int) -> Change:
        note = AuditEntry("audit:t1", T0, "dpo", "audit.payload_erased", data={"seq": seq}, tenant_id="t1")
        return Change(erase=(("t1", seq),), audit=(note,))

    store.commit([erasure(first)])
    with pytest.raises(Conflict, match=f"audit entry {first} was erased already"):
        store.commit([erasure(first)])
    with pytest.raises(Conflict, match=f"audit entry {second} was erased already"):
        store.commit([erasure(second), erasure(second)])  # (the batch is refused: nothing of it written)
    assert [entry.data for entry in store.audit("audit:t1")] == [{"seq": first}]
    assert [entry.erased for entry in store.audit("ex")] == [True, False]


def test_retained_events_retain_consume_expire(store: Store) -> None:
    forever = Event("ev1", "t1", "deploy.done", "k1", {"x": 1}, T0)
    soon = Event("ev2", "t1", "deploy.done", "k2", [1, "two"], T0, expires_at=at(60))
    gone = Event("ev3", "t2", "other", "k3", None, at(-120), expires_at=at(-1))
    store.commit([Change(retain_events=(forever, soon, gone))])
    assert store.retained_events(T0) == [forever, soon]
    assert store.retained_events(at(60)) == [forever]

    store.commit([Change(consume_events=("ev1", "never-retained"))])
    assert store.retained_events(T0) == [soon]

    newer = attrs.evolve(soon, payload={"replaced": True}, expires_at=at(90))
    store.commit([Change(retain_events=(newer,))])
    assert store.retained_events(at(61)) == [newer]

    # within a batch, in order: retain then consume leaves nothing; consume then retain keeps it
    late = Event("ev4", "t1", "x", "k", {}, T0)
    back = Event("ev5", "t1", "x", "k", {"back": True}, T0)
    store.commit([Change(retain_events=(late,)), Change(consume_events=("ev4", "ev2"))])
    store.commit([Change(consume_events=("ev5",)), Change(retain_events=(back,))])
    assert store.retained_events(T0) == [back]


def test_expired_retained_events_are_deleted(store: Store) -> None:
    forever = Event("ev1", "t1", "x", "k", {}, T0)
    due = Event("ev2", "t1", "x", "k", {}, T0, expires_at=at(60))
    later = Event("ev3", "t2", "y", "k", {}, T0, expires_at=at(61))
    store.commit([Change(retain_events=(forever, due, later))])
    store.commit([Change(expire_events_at=at(60))])  # expired at 60 s: gone; the others stay
    assert store.retained_events(at(-3600)) == [forever, later]
    store.commit([Change(expire_events_at=at(3600))])
    assert store.retained_events(at(-3600)) == [forever]


# ---------------------------------------------------------------- durability


@durable  # the memory store is not transactional: the changes before a failing one stay
def test_failing_batch_writes_nothing(store: Store) -> None:
    bad = Change(steps=(("no-such-execution", "a", 0, StepState(StepStatus.RUNNING, "echo")),))
    batch = [
        start(make_execution("ex"), logs=(LogEntry("ex", T0, "info", "created"),)),
        Change(runbook=make_runbook("rb")),
        Change(retain_events=(Event("ev", "t1", "x", "k", {}, T0),)),
        bad,
    ]
    with pytest.raises((sqlite3.IntegrityError, psycopg.IntegrityError)):
        store.commit(batch)
    assert store.get_execution("ex") is None
    assert store.logs("ex") == []
    assert store.get_runbook(None, "rb") is None
    assert store.retained_events(T0) == []
    assert store.commit(batch[:3]) == [ChangeResult(), ChangeResult(runbook_version=1), ChangeResult()]


@durable  # (the memory store never has to replay: its commits cannot be lost on the way)
def test_replayed_batch_is_not_a_duplicate_of_itself(store: Store) -> None:
    # a commit whose outcome was lost with the connection is sent again by the persistence actor
    execution = make_execution("ex", key="k")
    evidence = Evidence("ev", "ex", "a", "http", "0" * 64, {"status": 200}, T0)
    event = Event("event", "t1", "x", "k", {}, T0)
    batch = [start(execution), Change(evidence=(evidence,), retain_events=(event,))]
    assert store.commit(batch) == [ChangeResult(), ChangeResult()]
    assert store.commit(batch) == [ChangeResult(), ChangeResult()]
    assert store.list_executions(None) == ([execution], None)
    assert store.evidence("ex") == [evidence]
    assert store.retained_events(T0) == [event]


@durable
def test_reopen_keeps_everything_and_does_not_migrate_again(backend: Backend) -> None:
    store = backend.open()
    execution = make_execution("ex", key="k")
    event = Event("ev", "t1", "x", "k", {"p": 1}, T0)
    store.commit([
        Change(runbook=make_runbook("rb")),
        start(execution, logs=(LogEntry("ex", T0, "info", "hello", "a", {"d": 1}),),
              audit=(AuditEntry("ex", T0, "u", "execution.started"),), retain_events=(event,)),
    ])
    versions = backend.versions()
    assert [row[0] for row in versions] == list(range(1, len(versions) + 1))  # every migration, once
    store.close()

    again = backend.open()
    assert backend.versions() == versions
    assert again.get_runbook(None, "rb") == attrs.evolve(make_runbook("rb"), version=1)
    assert again.get_execution("ex") == execution
    assert again.find_by_idempotency_key("t1", "k") == execution
    assert [entry.message for entry in again.logs("ex")] == ["hello"]
    assert len(again.audit("ex")) == 1
    assert again.retained_events(T0) == [event]
    assert again.commit([start(make_execution("dup"))]) == [ChangeResult(existing_id="ex")]


@postgres_only  # (a SQLite file has one process: one store at a time, see below)
def test_concurrent_duplicate_starts_insert_exactly_one(backend: Backend) -> None:
    backend.open()  # creates the schema
    count = 50
    ready = threading.Barrier(count, timeout=60)

    def start_one(i: int) -> ChangeResult:
        store = backend.open(light=True)  # its own store, as another process would have
        ready.wait()
        [result] = store.commit([start(make_execution(f"ex{i:02d}"))])
        return result

    with ThreadPoolExecutor(count) as pool:
        results = list(pool.map(start_one, range(count)))
    winners = [f"ex{i:02d}" for i, result in enumerate(results) if result.existing_id is None]
    assert len(winners) == 1
    assert [result.existing_id for result in results].count(winners[0]) == count - 1
    assert ids(backend.opened[0].list_executions(None)[0]) == winners


def test_a_sqlite_file_is_one_process_s_a_second_store_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "one.db"
    first = SqliteStore(path)
    first.open()
    second = SqliteStore(path)
    with pytest.raises(StoreInUse, match=rf"^sqlite store {re.escape(str(path))} is in use by another process "
                                         rf"\(pid {os.getpid()}\); one process per SQLite file$"):
        second.open()
    first.close()
    second.open()  # free again once the first is closed
    second.close()


@postgres_only
def test_postgres_write_connection_is_replaced_after_it_was_lost(backend: Backend, postgres_dsn: str) -> None:
    store = backend.open()
    assert isinstance(store, PostgresStore)
    store.commit([start(make_execution("first", input_hash="1"))])
    conn = store._conn  # the write connection, killed from outside as a server restart would
    assert conn is not None
    with psycopg.connect(postgres_dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
    with pytest.raises(StoreUnavailable):
        store.commit([start(make_execution("second", input_hash="2"))])
    assert store.commit([start(make_execution("second", input_hash="2"))]) == [ChangeResult()]
    assert ids(store.list_executions(None)[0]) == ["second", "first"]


def test_ping(backend: Backend, store: Store) -> None:
    store.ping()
    if backend.kind != "memory":
        store.close()
        with pytest.raises(StoreUnavailable):
            store.ping()
        with pytest.raises(StoreUnavailable):
            store.commit([start(make_execution("late"))])


# ---------------------------------------------------------------- not parametrized


def test_unreachable_databases_raise_store_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(StoreUnavailable):
        SqliteStore(blocker / "sub" / "x.db").open()  # its directory cannot be created
    with pytest.raises(StoreUnavailable):
        PostgresStore("postgresql://postgres@127.0.0.1:1/test", timeout=2).open()


def test_open_store_from_url() -> None:
    assert isinstance(open_store_from_url("memory"), MemoryStore)
    relative = open_store_from_url("sqlite:///data/rel.db")
    assert isinstance(relative, SqliteStore)
    assert relative.path == "data/rel.db"
    absolute = open_store_from_url("sqlite:////var/lib/runbooks/abs.db")
    assert isinstance(absolute, SqliteStore)
    assert absolute.path == "/var/lib/runbooks/abs.db"
    bare = open_store_from_url("./runbooks.db")
    assert isinstance(bare, SqliteStore)
    assert bare.path == "./runbooks.db"
    for url in ("postgresql://u@db:5432/runbooks?sslmode=require", "postgres://u@db/runbooks"):
        postgres = open_store_from_url(url)
        assert isinstance(postgres, PostgresStore)
        assert (postgres.dsn, postgres.pool_max) == (url, 20)
    assert open_store_from_url("postgresql://u@db/runbooks?schema=s1", pool_max=7).pool_max == 7
    for bad in ("mysql://db/x", "", "runbooks.sqlite", "sqlite://rel.db", "sqlite:///", "sqlite:///:memory:"):
        with pytest.raises(ValueError, match="store URL"):
            open_store_from_url(bad)


def test_sql_status_lists_match_the_model() -> None:
    def values(sql_list: str) -> set[str]:
        return {part.strip(" '") for part in sql_list.strip("()").split(",")}

    assert values(NOT_DEDUPED_SQL) == {status.value for status in NOT_DEDUPED}
    assert values(UNFINISHED_SQL) == {status.value for status in ES if not status.finished}


# -- receipts of event sources, and the lifecycle outbox


def _receipt(delivery: str, *, received: float = 0, keep_s: float = 60, pending: Any = None) -> Receipt:
    event = Event(f"ev-{delivery}", "t1", "go", "k", {"n": 1}, at(received)) if pending else None
    return Receipt("src", delivery, "t1", f"ev-{delivery}", at(received), at(received + keep_s), pending, event)


def test_a_held_receipt_refuses_its_whole_change_in_one_batch_and_the_next(store: Store) -> None:
    retained = Event("ev-1", "t1", "go", "k", {"n": 1}, at(0), at(600))
    first = Change(receipt=_receipt("d1"), retain_events=(retained,))
    again = Change(receipt=_receipt("d1"), retain_events=(attrs.evolve(retained, id="ev-2"),))
    assert [r.duplicate for r in store.commit([first, again])] == [False, True]
    assert [r.duplicate for r in store.commit([again])] == [True]
    assert [e.id for e in store.retained_events(at(1))] == ["ev-1"]
    assert store.receipt_known("src", "d1") and not store.receipt_known("src", "d2")


def test_a_change_taking_a_message_held_already_is_refused_whole_and_the_others_are_found(store: Store) -> None:
    retained = Event("ev-1", "t1", "go", "k", {"n": 1}, at(0), at(600))
    store.commit([Change(receipt=_receipt("d1")), Change(taken=(_receipt("d2"),))])
    assert store.receipts_known("src", ["d1", "d2", "d3"]) == {"d1", "d2"}
    with pytest.raises(Conflict, match="d2"):
        store.commit([Change(taken=(_receipt("d3"), _receipt("d2")), retain_events=(retained,))])
    assert store.retained_events(at(1)) == [] and store.receipts_known("src", ["d3"]) == set()
    assert store.pending_receipts() == []  # (taken with its change: nothing left to hand on)
    # a batch with such a change is refused whole: the changes before it are not written either
    # (the persistence actor then commits each change alone, so none may be written twice)
    other = attrs.evolve(retained, id="ev-other")
    with pytest.raises(Conflict, match="d2"):
        store.commit([Change(retain_events=(other,)), Change(taken=(_receipt("d4"), _receipt("d2")))])
    assert store.retained_events(at(1)) == [] and store.receipts_known("src", ["d4"]) == set()


def test_a_pending_receipt_is_found_until_settled_and_swept_only_once_settled(store: Store) -> None:
    store.commit([Change(receipt=_receipt("p1", pending=(("e1", "s1"), ("e2", "s2")))),
                  Change(receipt=_receipt("p2", keep_s=10))])
    [pending] = store.pending_receipts()
    assert (pending.delivery_id, pending.pending) == ("p1", (("e1", "s1"), ("e2", "s2")))
    assert pending.event is not None and pending.event.payload == {"n": 1}
    store.commit([Change(expire_receipts_at=at(3600))])  # p1 is pending: kept; p2 expired: gone
    assert store.receipt_known("src", "p1") and not store.receipt_known("src", "p2")
    store.commit([Change(settle=(("src", "p1"),))])
    assert store.pending_receipts() == []
    store.commit([Change(expire_receipts_at=at(3600))])
    assert not store.receipt_known("src", "p1")


def test_the_lifecycle_outbox_keeps_commit_order_per_origin_until_published(store: Store) -> None:
    def event(n: int, origin: str) -> Lifecycle:
        return Lifecycle(f"x:{n}:0", "x", "t1", n, "step.finished", "succeeded", at(n), "s", origin)

    store.commit([Change(lifecycle=(event(1, "a"), event(2, "b"))), Change(lifecycle=(event(3, "a"),))])
    found = store.lifecycle_after("a", 0, 10)
    assert [e.version for _, e in found] == [1, 3]
    assert [e.version for _, e in store.lifecycle_after("a", found[0][0], 10)] == [3]
    store.commit([Change(lifecycle_done=("a", found[0][0]))])
    assert [e.version for _, e in store.lifecycle_after("a", 0, 10)] == [3]
    assert [e.version for _, e in store.lifecycle_after("b", 0, 10)] == [2]


# ---------------------------------------------------------------- queues of concurrency keys (SlotClaim)


def queued(execution_id: str, key: str = "web", tenant: str = "t1") -> Execution:
    return attrs.evolve(make_execution(execution_id, tenant=tenant, input_hash=execution_id), status=ES.QUEUED,
                        concurrency_key=key)


def claim(execution: Execution, limit: int = 1) -> Change:
    return Change(new_execution=execution, slot=SlotClaim(execution.tenant_id, execution.concurrency_key or "", limit))


def ended(execution: Execution, status: ExecutionStatus = ES.COMPLETED) -> Change:
    return Change(execution=attrs.evolve(execution, status=status, version=2))


def test_slots_go_to_the_oldest_waiting_per_key_and_come_back_at_the_end(store: Store) -> None:
    a, b, c, other, elsewhere = (queued("a"), queued("b"), queued("c"), queued("x", key="db"),
                                 queued("y", tenant="t2"))
    results = store.commit([claim(a), claim(b), claim(other), claim(elsewhere)])
    # each key and tenant has a queue of its own
    assert [r.admitted for r in results] == [(("a", ""),), (), (("x", ""),), (("y", ""),)]
    assert [r.admitted for r in store.commit([claim(c)])] == [()]
    assert store.admitted() == [("a", ""), ("x", ""), ("y", "")]  # given a slot, still queued in the store
    assert [r.admitted for r in store.commit([ended(a, ES.CANCELLED)])] == [(("b", ""),)]
    assert [r.admitted for r in store.commit([ended(b, ES.FAILED)])] == [(("c", ""),)]
    assert [r.admitted for r in store.commit([ended(c, ES.TIMED_OUT)])] == [()]


def test_a_start_admitted_in_the_batch_that_frees_the_slot_is_named_in_its_own_result(store: Store) -> None:
    a, b = queued("a"), queued("b")
    store.commit([claim(a)])
    results = store.commit([ended(a), claim(b)])
    assert [r.admitted for r in results] == [(), (("b", ""),)]


def test_a_limit_of_two_gives_two_slots(store: Store) -> None:
    results = store.commit([claim(queued(n), limit=2) for n in "abc"])
    assert [r.admitted for r in results] == [(("a", ""),), (("b", ""),), ()]


def waiting_step(execution: Execution, step_id: str, key: str = "host-1", **state: Any) -> Change:
    """The change of a step that waits for (or, with ``held``/a status, holds or ends) a slot."""
    slot = StepSlot(key, 1, held=state.pop("held", False))
    step = StepState(state.pop("status", StepStatus.PENDING), "echo", slot=slot)
    changed = attrs.evolve(execution, status=ES.RUNNING, steps={**execution.steps, step_id: step})
    return Change(execution=changed, steps=((execution.id, step_id, 0, step),))


def test_steps_queue_for_a_key_and_an_execution_end_gives_back_its_steps_slots(store: Store) -> None:
    one, two, three = (make_execution(n, input_hash=n) for n in ("one", "two", "three"))
    store.commit([start(one), start(two), start(three)])
    assert [r.admitted for r in store.commit([waiting_step(one, "a")])] == [(("one", "a"),)]
    assert [r.admitted for r in store.commit([waiting_step(two, "a"), waiting_step(three, "b")])] == [(), ()]
    assert store.admitted() == [("one", "a")]  # given a slot, the step is still pending
    store.commit([waiting_step(one, "a", held=True, status=StepStatus.RUNNING)])
    assert store.admitted() == []
    ended_step = waiting_step(one, "a", status=StepStatus.SUCCEEDED)
    assert [r.admitted for r in store.commit([ended_step])] == [(("two", "a"),)]
    cancelled = attrs.evolve(waiting_step(two, "a").execution, status=ES.CANCELLED, version=3)
    assert [r.admitted for r in store.commit([Change(execution=cancelled)])] == [(("three", "b"),)]
