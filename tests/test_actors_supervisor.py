"""Supervision: ask against live, ended and crashing children, restarts, escalation, cancellation."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial

import attrs
import pytest
import trio
import trio.testing

from actors import (
    ActorCrashed,
    ActorGone,
    Address,
    Mailbox,
    Reply,
    RestartLimitExceeded,
    RestartPolicy,
    ask,
    open_supervisor,
)

Clock = trio.testing.MockClock


@attrs.frozen
class Double:
    n: int
    reply: Reply[int]


@attrs.frozen
class Crash:
    reply: Reply[int]


Msg = Double | Crash


class Fatal(BaseException):
    """Stands in for KeyboardInterrupt and friends."""


async def doubler(mailbox: Mailbox[Msg]) -> None:
    async for message in mailbox:
        match message:
            case Double(n=n, reply=reply):
                reply.send(2 * n)
            case Crash():
                raise ValueError("asked to crash")


async def returns_at_once(mailbox: Mailbox[Msg]) -> None:
    return


def crashes_every(
    seconds: float, incarnations: list[float]
) -> Callable[[Mailbox[Msg]], Awaitable[None]]:
    """An actor that records when each incarnation starts, then crashes after ``seconds``."""

    async def actor(mailbox: Mailbox[Msg]) -> None:
        incarnations.append(trio.current_time())
        await trio.sleep(seconds)
        raise ValueError(f"crash {len(incarnations)}")

    return actor


def task_names() -> set[str]:
    """Names of every task in this trio run, found by walking the task tree."""
    names: set[str] = set()
    root = trio.lowlevel.current_root_task()
    assert root is not None
    tasks = [root]
    while tasks:
        task = tasks.pop()
        names.add(task.name)
        tasks.extend(child for nursery in task.child_nurseries for child in nursery.child_tasks)
    return names


async def test_ask_round_trip_with_messages_sent_before_the_child_runs(
    autojump_clock: Clock,
) -> None:
    async with open_supervisor() as supervisor:
        address: Address[Msg] = supervisor.spawn(doubler, name="doubler")
        early: Reply[int] = Reply()
        address.send_nowait(Double(5, early))  # buffered: the child has not started yet
        with trio.fail_after(1):
            assert await ask(address, lambda r: Double(21, r)) == 42
        assert early.done
        assert supervisor.children == 1
        supervisor.cancel()
    assert supervisor.children == 0
    assert trio.current_time() == 0


async def test_ask_to_an_actor_that_returned_raises_actor_gone(autojump_clock: Clock) -> None:
    async with open_supervisor() as supervisor:
        address: Address[Msg] = supervisor.spawn(returns_at_once, name="execution e1")
        await trio.testing.wait_all_tasks_blocked()
        assert address.closed and supervisor.children == 0
        with trio.fail_after(1), pytest.raises(ActorGone, match="'execution e1' is gone"):
            await ask(address, lambda r: Double(1, r))
    assert trio.current_time() == 0


async def test_ask_to_an_actor_that_returns_holding_the_message_raises_actor_gone(
    autojump_clock: Clock,
) -> None:
    async def takes_one_and_leaves(mailbox: Mailbox[Msg]) -> None:
        await mailbox.receive()

    async with open_supervisor() as supervisor:
        address: Address[Msg] = supervisor.spawn(takes_one_and_leaves, name="leaver")
        with trio.fail_after(1), pytest.raises(ActorGone) as caught:
            await ask(address, lambda r: Double(1, r))
    assert type(caught.value) is ActorGone
    assert trio.current_time() == 0


async def test_ask_to_an_actor_that_crashes_holding_the_message_raises_actor_crashed(
    autojump_clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_supervisor() as supervisor:
        address: Address[Msg] = supervisor.spawn(doubler, name="crasher")
        with trio.fail_after(1), pytest.raises(ActorCrashed, match="'crasher' crashed"):
            await ask(address, Crash)
        with trio.fail_after(1):  # restarted: the same address works
            assert await ask(address, lambda r: Double(2, r)) == 4
        supervisor.cancel()
    assert trio.current_time() == 0
    [record] = caplog.records
    assert (record.name, record.levelno, record.message) == (
        "actors",
        logging.WARNING,
        "actor 'crasher' crashed; restarting",
    )
    assert record.exc_info is not None and isinstance(record.exc_info[1], ValueError)


async def test_queued_messages_survive_a_restart(autojump_clock: Clock) -> None:
    handled: list[tuple[int, int]] = []  # (incarnation, n)
    incarnation = 0

    async def fragile(mailbox: Mailbox[Msg]) -> None:
        nonlocal incarnation
        incarnation += 1
        async for message in mailbox:
            if isinstance(message, Crash):
                async with trio.open_nursery() as inner:  # crash as an ExceptionGroup
                    inner.start_soon(trio.sleep, 1)
                    raise ValueError("crash")
            handled.append((incarnation, message.n))
            message.reply.send(message.n)

    results: dict[str, object] = {}

    async def asker(key: str, make: Callable[[Reply[int]], Msg]) -> None:
        try:
            answer = await ask(address, make)
            results[key] = answer
        except ActorGone as exc:
            results[key] = type(exc)

    async with open_supervisor() as supervisor:
        address: Address[Msg] = supervisor.spawn(fragile, name="fragile")
        async with trio.open_nursery() as askers:
            askers.start_soon(asker, "crash", Crash)
            await trio.testing.wait_all_tasks_blocked()  # the crash message is queued first
            for n in range(3):
                askers.start_soon(asker, f"n{n}", partial(Double, n))
                await trio.testing.wait_all_tasks_blocked()
        supervisor.cancel()
    assert results == {"crash": ActorCrashed, "n0": 0, "n1": 1, "n2": 2}
    assert handled == [(2, 0), (2, 1), (2, 2)]


@attrs.frozen
class Item:
    n: int


async def test_full_mailbox_makes_the_sender_wait_and_drops_nothing(autojump_clock: Clock) -> None:
    gate = trio.Event()
    received: list[int] = []

    async def slow(mailbox: Mailbox[Item]) -> None:
        await gate.wait()
        async for item in mailbox:
            received.append(item.n)

    sent: list[int] = []

    async def sender(address: Address[Item]) -> None:
        for n in range(5):
            await address.send(Item(n))
            sent.append(n)

    async with open_supervisor() as supervisor:
        address: Address[Item] = supervisor.spawn(slow, name="slow", mailbox_size=1)
        async with trio.open_nursery() as senders:
            senders.start_soon(sender, address)
            await trio.testing.wait_all_tasks_blocked()
            assert sent == [0]  # item 1 waits: the mailbox holds one message
            with pytest.raises(trio.WouldBlock):
                address.send_nowait(Item(99))
            gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert received == sent == [0, 1, 2, 3, 4]
        supervisor.cancel()
    assert trio.current_time() == 0


@pytest.mark.parametrize(
    "every",
    [6.0, 5.0],  # 5.0: a restart exactly within_s ago no longer counts
)
async def test_crashes_spread_out_beyond_the_window_keep_restarting(
    autojump_clock: Clock, every: float
) -> None:
    crashes = 10  # far more than max_restarts=2, then the 11th incarnation returns
    starts: list[float] = []
    crash = crashes_every(every, starts)

    async def crash_until_enough(mailbox: Mailbox[Msg]) -> None:
        if len(starts) == crashes:
            return
        await crash(mailbox)

    async with open_supervisor() as supervisor:
        supervisor.spawn(crash_until_enough, name="flaky", policy=RestartPolicy(2, within_s=10))
    assert starts == [every * i for i in range(crashes)]
    assert trio.current_time() == every * crashes


async def test_one_crash_too_many_within_the_window_escalates(autojump_clock: Clock) -> None:
    starts: list[float] = []
    sibling_finally_ran = trio.Event()

    async def sibling(mailbox: Mailbox[Msg]) -> None:
        try:
            await trio.sleep_forever()
        finally:
            sibling_finally_ran.set()

    with pytest.RaisesGroup(
        pytest.RaisesExc(RestartLimitExceeded, check=lambda e: e.name == "flaky")
    ) as caught:
        async with open_supervisor() as supervisor:
            supervisor.spawn(sibling, name="sibling")
            supervisor.spawn(
                crashes_every(4, starts),
                name="flaky",
                policy=RestartPolicy(max_restarts=2, within_s=10),
            )
            await trio.sleep(100)  # escalation cancels the body too
            pytest.fail("no escalation")
    assert starts == [0, 4, 8]  # two restarts allowed, the third crash (t=12) escalates
    assert trio.current_time() == 12
    assert sibling_finally_ran.is_set()
    [error] = caught.value.exceptions
    assert isinstance(error.__cause__, ValueError) and str(error.__cause__) == "crash 3"


async def test_on_give_up_is_called_and_siblings_keep_running(autojump_clock: Clock) -> None:
    starts: list[float] = []
    given_up: list[tuple[float, BaseException]] = []

    async def on_give_up(exc: BaseException) -> None:
        given_up.append((trio.current_time(), exc))

    async with open_supervisor() as supervisor:
        doubling: Address[Msg] = supervisor.spawn(doubler, name="doubler")
        flaky: Address[Msg] = supervisor.spawn(
            crashes_every(1, starts),
            name="flaky",
            policy=RestartPolicy(max_restarts=1),
            on_give_up=on_give_up,
        )
        await trio.sleep(5)
        assert flaky.closed and supervisor.children == 1
        with pytest.raises(ActorGone):
            await ask(flaky, lambda r: Double(1, r))
        assert await ask(doubling, lambda r: Double(4, r)) == 8
        supervisor.cancel()
    assert starts == [0, 1]
    [(when, exc)] = given_up
    assert when == 2 and str(exc) == "crash 2"


async def test_policy_none_never_restarts(autojump_clock: Clock) -> None:
    starts: list[float] = []
    given_up: list[BaseException] = []

    async def record(exc: BaseException) -> None:
        given_up.append(exc)

    async with open_supervisor() as supervisor:
        actor = crashes_every(1, starts)
        supervisor.spawn(actor, name="once", policy=None, on_give_up=record)
    assert starts == [0]
    assert [str(exc) for exc in given_up] == ["crash 1"]


async def test_base_exceptions_pass_through_without_restart(autojump_clock: Clock) -> None:
    starts: list[float] = []

    async def fatal(mailbox: Mailbox[Msg]) -> None:
        starts.append(trio.current_time())
        raise Fatal

    with pytest.RaisesGroup(Fatal):
        async with open_supervisor() as supervisor:
            address: Address[Msg] = supervisor.spawn(fatal, name="fatal")
    assert starts == [0]
    assert address.closed


@pytest.mark.parametrize("how", ["supervisor.cancel", "enclosing scope"])
async def test_cancellation_reaches_every_descendant_and_leaves_no_task(
    autojump_clock: Clock, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    before = task_names()
    cleaned_up: list[str] = []

    async def sleeper(label: str) -> None:
        try:
            await trio.sleep_forever()
        finally:
            cleaned_up.append(label)

    async def parent(mailbox: Mailbox[Msg]) -> None:
        async with trio.open_nursery() as workers:
            workers.start_soon(sleeper, f"{mailbox.name}/worker", name=f"{mailbox.name}/worker")
            await sleeper(mailbox.name)

    outside_ask: list[type[BaseException]] = []

    async def ask_from_outside(address: Address[Msg]) -> None:
        with trio.fail_after(100):
            try:
                await ask(address, lambda r: Double(1, r))
            except ActorGone as exc:
                outside_ask.append(type(exc))

    async with trio.open_nursery() as outside:
        with trio.CancelScope() as enclosing:
            async with open_supervisor() as supervisor:
                first: Address[Msg] = supervisor.spawn(parent, name="a")
                supervisor.spawn(parent, name="b")
                outside.start_soon(ask_from_outside, first)  # held by "a", never answered
                await trio.sleep(1)
                assert {"a", "a/worker", "b", "b/worker"} <= task_names()
                if how == "supervisor.cancel":
                    supervisor.cancel()
                else:
                    enclosing.cancel()
                await trio.sleep(100)
                pytest.fail("not cancelled")
    assert sorted(cleaned_up) == ["a", "a/worker", "b", "b/worker"]
    assert outside_ask == [ActorGone]
    assert supervisor.children == 0
    assert task_names() == before
    assert caplog.records == []  # cancellation is not a crash
    assert trio.current_time() == 1
