"""The lease of one incarnation (``runtime/cluster/lease.py``) against a scripted renewer:
what the process does when its heartbeat lapses, fails, or comes back, on a virtual clock."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest
import trio
import trio.testing

from runtime.cluster import lease as lease_module
from runtime.cluster.lease import Lease

TTL_S = 4.0


class ScriptedRenewer:
    """Answers each call with the next item of its script (an exception is raised)."""

    def __init__(self, renewals: list[Any], rejoins: list[Any]) -> None:
        self.renewals = renewals
        self.rejoins = rejoins
        self.closed = False

    @staticmethod
    def _next(script: list[Any], last: Any) -> Any:
        item = script.pop(0) if script else last
        if isinstance(item, BaseException):
            raise item
        return item

    def renew(self, owner: str, ttl_s: float, ping: str) -> Any:
        return self._next(self.renewals, "renewed")

    def rejoin(self, owner: str, ttl_s: float) -> Any:
        return self._next(self.rejoins, True)

    def abandon(self) -> None:
        """Nothing hangs here: every call answers at once."""

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def inline_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """The renewer's calls run inline: on a virtual clock a real thread would let the clock
    jump past the call's deadline while the thread works."""
    async def run_inline(job: Callable[..., Any], *args: Any, **_: Any) -> Any:
        await trio.lowlevel.checkpoint()
        return job(*args)
    monkeypatch.setattr(lease_module.trio.to_thread, "run_sync", run_inline)


def make_lease(renewer: ScriptedRenewer, events: list[str]) -> Lease:
    async def on_back() -> None:
        events.append("back")
    lease = Lease(renewer, "p1@1", TTL_S, lambda beat: f"ping {beat}",
                  on_lost=lambda: events.append("lost"), on_back=on_back,
                  on_replaced=lambda: events.append("replaced"))
    lease.registered(trio.current_time())
    return lease


async def test_a_rejoin_that_fails_after_a_lapse_is_tried_again_and_the_process_stays_up(
        inline_threads: None, autojump_clock: trio.testing.MockClock) -> None:
    # A lapse (the process stalled past its TTL), then the database connection breaks during
    # the rejoin: the process must not end; the next beat finds the lapse again and rejoins.
    renewer = ScriptedRenewer(renewals=["lapsed", "lapsed"],
                              rejoins=[psycopg.OperationalError("the connection is closed"), True])
    events: list[str] = []
    lease = make_lease(renewer, events)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lease.run)
        await trio.sleep(TTL_S * 3)
        assert events == ["lost", "back"]
        assert lease.holds()
        nursery.cancel_scope.cancel()
    assert renewer.closed


async def test_a_renewal_that_keeps_failing_fences_the_process_before_the_ttl(
        inline_threads: None, autojump_clock: trio.testing.MockClock) -> None:
    renewer = ScriptedRenewer(renewals=[psycopg.OperationalError("server closed the connection")] * 100,
                              rejoins=[])
    events: list[str] = []
    lease = make_lease(renewer, events)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lease.run)
        await trio.sleep(TTL_S * (1 - lease_module.MARGIN) - 0.01)
        assert lease.holds() and events == []
        await trio.sleep(0.02)
        assert not lease.holds() and events == ["lost"]
        nursery.cancel_scope.cancel()
