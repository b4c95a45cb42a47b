"""Fairness: a tenant flooding the engine does not hold back another tenant's execution."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing

from actors import Address, Reply, open_mailbox
from runtime import Settings, open_runtime
from runtime.model.records import Change, ChangeResult, Wait
from runtime.shell.fairness import FairGate
from runtime.shell.persistence import Commit, PersistenceActor, PersistenceMessage
from runtime.store.memory import MemoryStore

CHAIN = {"id": "chain", "steps": [{"id": f"s{i}", "type": "note"} for i in range(12)]}
FLOOD = 100
TURNS = 4


async def test_one_execution_of_a_quiet_tenant_starts_before_the_flood_of_another_drains(tmp_path: Any) -> None:
    started: list[tuple[str, str]] = []  # (tenant, step) in the order steps began

    async def note(ctx: Any) -> Any:
        started.append((ctx.tenant_id, ctx.step_id))
        await trio.lowlevel.checkpoint()
        return None

    async with open_runtime(f"sqlite:///{tmp_path}/fair.db", settings=Settings(fair_turns=TURNS)) as rt:
        rt.register_executor("note", note)
        await rt.register_runbook(CHAIN)
        flood = [(await rt.start("chain", {"n": n}, {"tenantId": "a"})).id for n in range(FLOOD)]
        started.append(("b", "start"))
        quiet = (await rt.start("chain", {}, {"tenantId": "b"})).id
        await rt.wait(quiet)
        assert len(flood) == FLOOD  # (a's flood is left to the runtime's shutdown)
    asked, first_of_b = started.index(("b", "start")), started.index(("b", "s0"))
    backlog = FLOOD * len(CHAIN["steps"]) - asked  # a's steps still to begin then
    ahead = sum(1 for tenant, _ in started[asked:first_of_b] if tenant == "a")
    assert backlog > 8 * FLOOD  # a's flood had most of its work ahead of it
    # b's first step began after a few of a's steps (a couple per turn), not after a step of each of
    # a's executions, as without turns (about 50 here), nor after a's backlog
    assert ahead < 6 * TURNS, f"{ahead} of a's {backlog} remaining steps began before b's first"


async def test_turns_go_round_robin_across_tenants_and_each_tenant_in_arrival_order() -> None:
    gate = FairGate(1)
    order: list[str] = []

    async def work(tenant: str, name: str, ready: trio.Event | None = None) -> None:
        async with gate.turn(tenant):
            if ready is not None:
                ready.set()
            order.append(name)
            await trio.lowlevel.checkpoint()

    held = trio.Event()
    release = trio.Event()

    async def holder() -> None:
        async with gate.turn("x"):
            held.set()
            await release.wait()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(holder)
        await held.wait()
        for n in range(3):
            nursery.start_soon(work, "a", f"a{n}")
            await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(work, "b", "b0")
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(work, "c", "c0")
        await trio.testing.wait_all_tasks_blocked()
        assert gate.waiting == 5
        release.set()
    assert order == ["a0", "b0", "c0", "a1", "a2"]


async def test_a_waiter_cancelled_in_line_gives_up_its_place() -> None:
    gate = FairGate(1)
    order: list[str] = []
    scope = trio.CancelScope()
    async with trio.open_nursery() as nursery:
        async with gate.turn("x"):
            nursery.start_soon(_enter, gate, "a", order, scope)
            await trio.testing.wait_all_tasks_blocked()
            assert gate.waiting == 1
            scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert gate.waiting == 0
            nursery.start_soon(_enter, gate, "b", order, None)
            await trio.testing.wait_all_tasks_blocked()
    assert order == ["b"]


async def _enter(gate: FairGate, tenant: str, order: list[str], scope: trio.CancelScope | None) -> None:
    with scope or trio.CancelScope():
        async with gate.turn(tenant):
            order.append(tenant)


def test_a_gate_needs_a_turn() -> None:
    with pytest.raises(ValueError):
        FairGate(0)


class Turns:
    """Work that takes a turn of ``gate`` for its tenant, records its name when it gets it, and
    holds the turn until its ``release`` event is set (work not named there ends at once)."""

    def __init__(self, gate: FairGate, held: Sequence[str]) -> None:
        self.gate = gate
        self.order: list[str] = []
        self.release = {name: trio.Event() for name in held}

    async def work(self, tenant: str, name: str) -> None:
        async with self.gate.turn(tenant):
            self.order.append(name)
            if name in self.release:
                await self.release[name].wait()


async def test_a_turn_that_ends_goes_to_the_waiting_tenant_holding_the_fewest() -> None:
    gate = FairGate(4)
    turns = Turns(gate, ("a0", "a1", "b0", "b1", "b2"))
    order, release, work = turns.order, turns.release, turns.work
    async with trio.open_nursery() as nursery:
        for name in ("a0", "a1", "b0", "b1", "a2", "b2"):  # two turns each, then a2 in line before b2
            nursery.start_soon(work, name[0], name)
            await trio.testing.wait_all_tasks_blocked()
        assert order == ["a0", "a1", "b0", "b1"] and gate.waiting == 2
        release["b0"].set()
        await trio.testing.wait_all_tasks_blocked()
        assert order[4:] == ["b2"]  # a2 came first, but b held fewer turns then
        release["a0"].set()
        await trio.testing.wait_all_tasks_blocked()
        assert order[4:] == ["b2", "a2"]
        for event in release.values():
            event.set()


async def test_a_tenant_below_its_share_borrows_a_turn_at_once_and_the_next_turn_to_end_repays_it() -> None:
    gate = FairGate(2)
    turns = Turns(gate, ("a0", "a1", "b0"))
    order, release, work = turns.order, turns.release, turns.work
    async with trio.open_nursery() as nursery:
        for name in ("a0", "a1", "a2"):  # a holds both turns, a2 waits in line
            nursery.start_soon(work, "a", name)
            await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(work, "b", "b0")
        await trio.testing.wait_all_tasks_blocked()
        assert order == ["a0", "a1", "b0"] and gate.waiting == 1  # b ran at once, beyond the capacity
        release["b0"].set()
        await trio.testing.wait_all_tasks_blocked()
        assert order == ["a0", "a1", "b0"]  # its end repaid the borrowed turn: a2 still waits
        release["a0"].set()
        await trio.testing.wait_all_tasks_blocked()
        assert order == ["a0", "a1", "b0", "a2"]
        release["a1"].set()


class RecordingStore(MemoryStore):
    """Commits nothing; records each batch as the tenants of its changes, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[str]] = []
        self.order: list[str] = []  # the executions of the changes, in the order committed

    def commit(self, changes: Sequence[Change]) -> list[ChangeResult]:
        self.batches.append([change.waits[0].tenant_id for change in changes])
        self.order += [change.waits[0].execution_id for change in changes]
        return [ChangeResult() for _ in changes]


def _send(address: Address[PersistenceMessage], tenant: str, n: int) -> Reply[ChangeResult]:
    reply: Reply[ChangeResult] = Reply()
    wait = Wait(f"{tenant}{n}", "s", tenant, "deploy", str(n), None)
    address.send_nowait(Commit(Change(waits=(wait,)), reply))
    return reply


async def test_a_quiet_tenants_change_commits_in_the_next_batch_not_behind_a_floods_backlog(
        autojump_clock: trio.testing.MockClock) -> None:
    store = RecordingStore()
    actor = PersistenceActor(store, fair_batch=8)
    address, mailbox = open_mailbox("persistence", 256)
    async with trio.open_nursery() as nursery:
        flood = [_send(address, "a", n) for n in range(40)]
        quiet = _send(address, "b", 0)
        nursery.start_soon(actor.run, mailbox)
        await trio.testing.wait_all_tasks_blocked()
        # b's change rode in the first batch, with 8 of a's: not in one batch of all 41 (each
        # batch a long commit cycle under a flood); a's changes kept the order they were sent in
        assert store.batches == [["a"] * 8 + ["b"], ["a"] * 8, ["a"] * 8, ["a"] * 8, ["a"] * 8]
        assert quiet.done and all(reply.done for reply in flood)
        assert store.order == (
            [f"a{n}" for n in range(8)] + ["b0"] + [f"a{n}" for n in range(8, 40)])

        await trio.sleep(2)  # b has not committed for a while: a's batches are whole again
        del store.batches[:]
        more = [_send(address, "a", n) for n in range(40, 80)]
        await trio.testing.wait_all_tasks_blocked()
        assert store.batches == [["a"] * 40]
        assert all(reply.done for reply in more)
        nursery.cancel_scope.cancel()
