"""A parent's start and cancel of its child (``runtime/io/children.py``) when the store
cannot be reached: each is tried again until it lands, and neither ends the process (a chaos
round saw a process exit on a cut database connection during a cancel), nor fails the
parent's step for an outage."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import trio
import trio.testing

from runtime.core.effects import CancelChild, StartChild
from runtime.core.messages import ChildFinished
from runtime.io import children as children_module
from runtime.io.children import Children, ChildrenHost
from runtime.model.errors import Conflict, Fenced, NotFound, StoreUnavailable


class ScriptedCancels:
    """Answers each cancel with the next item of its script (an exception is raised)."""

    def __init__(self, script: list[Any]) -> None:
        self.script = script
        self.calls: list[tuple[str, float]] = []

    async def cancel(self, execution_id: str, reason: str, actor: str) -> Any:
        self.calls.append((execution_id, trio.current_time()))
        item = self.script.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item


async def cancelled(script: list[Any]) -> ScriptedCancels:
    host = ScriptedCancels(script)

    async def no_start(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("nothing starts here")

    async with trio.open_nursery() as nursery:
        children = Children(ChildrenHost(no_start, host.cancel, lambda *args: None), nursery)
        children.cancel("parent", CancelChild("child", "parent execution parent ended"))
    return host


async def test_a_cancel_while_the_store_is_away_is_tried_again_with_backoff_until_it_lands(
        autojump_clock: trio.testing.MockClock) -> None:
    away = StoreUnavailable("postgres store: write failed: server closed the connection unexpectedly")
    host = await cancelled([away, away, away, "cancelled"])
    times = [at for _, at in host.calls]
    assert [execution for execution, _ in host.calls] == ["child"] * 4
    assert [round(b - a, 3) for a, b in itertools.pairwise(times)] == [
        children_module.RETRY_S, 2 * children_module.RETRY_S, 4 * children_module.RETRY_S]


@pytest.mark.parametrize("answer", [Conflict("it has ended"), Fenced(["child"])])
async def test_a_cancel_that_cannot_apply_here_is_not_tried_again(answer: Exception,
                                                                 autojump_clock: trio.testing.MockClock) -> None:
    host = await cancelled([answer])
    assert len(host.calls) == 1


async def test_a_start_while_the_store_is_away_is_tried_again_and_the_parent_hears_nothing_of_it(
        autojump_clock: trio.testing.MockClock) -> None:
    away = StoreUnavailable("postgres store: read failed: server closed the connection unexpectedly")
    answers: list[Any] = [away, away, NotFound("runbook 'gone' not found")]
    keys: list[str] = []
    told: list[ChildFinished] = []

    async def start(*args: Any, idempotency_key: str, **kwargs: Any) -> Any:
        keys.append(idempotency_key)
        item = answers.pop(0)
        raise item

    async def no_cancel(*args: Any) -> Any:
        raise AssertionError("nothing is cancelled here")

    async with trio.open_nursery() as nursery:
        children = Children(ChildrenHost(start, no_cancel, lambda parent, message: told.append(message)), nursery)
        children.start("parent", StartChild("run", 1, "child", "gone", None, {}, {}, 1, "parent"))
    assert keys == ["child:parent:run:1"] * 3  # the same start each time: it is idempotent
    [finished] = told  # only the refusal that is an answer reaches the parent
    assert finished.error is not None and finished.error.code == "child_failed" and "not found" in finished.error.message
