"""A parent's cancel of its child (``runtime/io/children.py``) when the store cannot be
reached: it is tried again until it lands, and it never ends the process (a chaos round saw
a process exit on a cut database connection during that cancel)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import trio
import trio.testing

from runtime.core.effects import CancelChild
from runtime.io import children as children_module
from runtime.io.children import Children, ChildrenHost
from runtime.model.errors import Conflict, Fenced, StoreUnavailable


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
        children_module.CANCEL_RETRY_S, 2 * children_module.CANCEL_RETRY_S, 4 * children_module.CANCEL_RETRY_S]


@pytest.mark.parametrize("answer", [Conflict("it has ended"), Fenced(["child"])])
async def test_a_cancel_that_cannot_apply_here_is_not_tried_again(answer: Exception,
                                                                 autojump_clock: trio.testing.MockClock) -> None:
    host = await cancelled([answer])
    assert len(host.calls) == 1
