"""Mailboxes, addresses, replies and ask, driven by hand (no supervisor)."""

from __future__ import annotations

from functools import partial

import attrs
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from actors import ActorCrashed, ActorGone, Address, Mailbox, Reply, ask, open_mailbox


@attrs.frozen
class Double:
    n: int
    reply: Reply[int]


@attrs.frozen
class Note:
    text: str


@attrs.frozen
class Misfiled:
    answer_to: Reply[int]


async def doubler(mailbox: Mailbox[Double]) -> None:
    async for message in mailbox:
        message.reply.send(2 * message.n)


async def test_ask_round_trip_and_iteration_ends_on_close(
    autojump_clock: trio.testing.MockClock,
) -> None:
    address: Address[Double]
    mailbox: Mailbox[Double]
    address, mailbox = open_mailbox("doubler")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(doubler, mailbox)
        with trio.fail_after(1):
            answers = [await ask(address, partial(Double, n)) for n in range(3)]
        assert answers == [0, 2, 4]
        mailbox.close()  # the doubler's `async for` ends, so the nursery can exit
    assert address.closed and mailbox.closed
    assert trio.current_time() == 0


async def test_reply_fail_reraises_the_same_exception_in_the_asker() -> None:
    address: Address[Double]
    mailbox: Mailbox[Double]
    address, mailbox = open_mailbox("refuser")
    problem = LookupError("no such thing")

    async def refuser(mailbox: Mailbox[Double]) -> None:
        (await mailbox.receive()).reply.fail(problem)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(refuser, mailbox)
        with pytest.raises(LookupError) as caught:
            await ask(address, lambda r: Double(1, r))
    assert caught.value is problem


async def test_reply_answers_once() -> None:
    reply: Reply[int] = Reply()
    assert not reply.done
    reply.send(1)
    assert reply.done
    with pytest.raises(RuntimeError):
        reply.send(2)
    with pytest.raises(RuntimeError):
        reply.fail(ValueError())


async def test_ask_rejects_a_message_without_its_reply_attribute(
    autojump_clock: trio.testing.MockClock,
) -> None:
    address: Address[Misfiled]
    _mailbox: Mailbox[Misfiled]
    address, _mailbox = open_mailbox("misfiled")
    with trio.fail_after(1), pytest.raises(TypeError, match="'reply' attribute"):
        await ask(address, Misfiled)
    assert _mailbox.statistics().current_buffer_used == 0  # nothing was sent


async def test_sending_to_a_closed_mailbox_raises_actor_gone() -> None:
    address: Address[Note]
    mailbox: Mailbox[Note]
    address, mailbox = open_mailbox("execution e1")
    mailbox.close()
    with pytest.raises(ActorGone, match="actor 'execution e1' is gone") as caught:
        await address.send(Note("hi"))
    assert caught.value.name == "execution e1"
    with pytest.raises(ActorGone):
        address.send_nowait(Note("hi"))
    with pytest.raises(trio.EndOfChannel):
        await mailbox.receive()
    with pytest.raises(trio.EndOfChannel):
        mailbox.receive_nowait()
    assert [message async for message in mailbox] == []


async def test_receive_nowait_and_send_nowait_on_empty_and_full() -> None:
    address: Address[Note]
    mailbox: Mailbox[Note]
    address, mailbox = open_mailbox("tiny", size=1)
    with pytest.raises(trio.WouldBlock):
        mailbox.receive_nowait()
    address.send_nowait(Note("a"))
    with pytest.raises(trio.WouldBlock):
        address.send_nowait(Note("b"))
    assert mailbox.statistics().current_buffer_used == 1
    assert mailbox.receive_nowait() == Note("a")


async def test_close_fails_queued_asks_and_wakes_a_blocked_sender(
    autojump_clock: trio.testing.MockClock,
) -> None:
    address: Address[Double]
    mailbox: Mailbox[Double]
    address, mailbox = open_mailbox("doomed", size=1)
    outcomes: list[str] = []

    async def asker(n: int) -> None:
        try:
            await ask(address, lambda r: Double(n, r))
        except ActorGone as exc:
            outcomes.append(f"{type(exc).__name__} {n}")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(asker, 1)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(asker, 2)  # the mailbox is full: this one waits in send
        await trio.testing.wait_all_tasks_blocked()
        assert mailbox.statistics().tasks_waiting_send == 1
        mailbox.close()
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(outcomes) == ["ActorGone 1", "ActorGone 2"]  # inside: fails, never hangs
    assert trio.current_time() == 0


async def test_fail_held_fails_only_unanswered_handed_out_replies() -> None:
    address: Address[Double]
    mailbox: Mailbox[Double]
    address, mailbox = open_mailbox("holder")
    results: dict[int, object] = {}

    async def asker(n: int) -> None:
        try:
            answer = await ask(address, partial(Double, n))
            results[n] = answer
        except ActorGone as exc:
            results[n] = type(exc)

    async with trio.open_nursery() as nursery:
        for n in range(3):
            nursery.start_soon(asker, n)
        await trio.testing.wait_all_tasks_blocked()
        first, second = mailbox.receive_nowait(), await mailbox.receive()
        first.reply.send(10)
        mailbox.fail_held(ActorCrashed)  # `second` is in hand; a third message is still queued
        assert second.reply.done
        third = mailbox.receive_nowait()  # not held: closing the mailbox now fails nothing
        mailbox.close()
        assert not third.reply.done
        third.reply.send(30)
    assert results == {first.n: 10, second.n: ActorCrashed, third.n: 30}


@given(plan=st.lists(st.sampled_from(["now", "later", "never"]), max_size=80))
async def test_held_replies_survive_pruning(plan: list[str]) -> None:
    """Whatever the answer order, exactly the unanswered in-hand asks fail on a crash."""
    address: Address[Double]
    mailbox: Mailbox[Double]
    address, mailbox = open_mailbox("prop", size=len(plan) + 1)
    results: dict[int, object] = {}

    async def asker(n: int) -> None:
        try:
            answer = await ask(address, partial(Double, n))
            results[n] = answer
        except ActorCrashed:
            results[n] = "crashed"

    async with trio.open_nursery() as nursery:
        for n in range(len(plan)):
            nursery.start_soon(asker, n)
        await trio.testing.wait_all_tasks_blocked()
        received, later, expected = [], [], {}
        for decision in plan:
            message = mailbox.receive_nowait()
            received.append(message)
            expected[message.n] = "crashed" if decision == "never" else message.n
            if decision == "now":
                message.reply.send(message.n)
            elif decision == "later":
                later.append(message)
        for message in reversed(later):  # answer out of order
            message.reply.send(message.n)
        mailbox.fail_held(ActorCrashed)
        assert all(message.reply.done for message in received)  # inside: fails, never hangs
    assert results == expected
