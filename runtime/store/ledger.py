"""``ClusterLedger``: what several processes sharing one store need of it.

A store that other processes may write too has a ``ledger`` (``Store.ledger``; None for a
store of one process); the runtime runs as a member of a cluster exactly when it has one
(``runtime/cluster/node.py``). The ledger keeps: each *incarnation* (one start of a process:
its instance id plus a random part) and its heartbeat; which incarnation *owns* each
unfinished execution, under an epoch that grows at
every claim (the store refuses the writes of an owner whose epoch is stale); *commands* for
an execution that another process owns, with their outcomes; and the *notifications* that
announce commands, outcomes, committed states, released executions and registered runbooks
(payloads ``kind:argument``, see ``pg_cluster.py``). PostgreSQL's is ``pg_ledger.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Literal, Protocol

import trio

from runtime.model import Execution

#: (id, epoch, tenant, runbook id, runbook version) of an execution nobody alive owns
Orphan = tuple[str, int, str, str, int]


class Notifications(Protocol):
    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Deliver notifications until cancelled; ``started`` once they are listened to."""


#: what a renewal found: the incarnation's heartbeat is extended; it had run out (nothing is
#: renewed: the executions may have been taken over); or a later start of its instance id
#: replaced it
Renewal = Literal["renewed", "lapsed", "replaced"]


class Renewer(Protocol):
    """The heartbeat of one incarnation, on a connection of its own (never behind reads).
    Blocking: called from a worker thread."""

    def renew(self, owner: str, ttl_s: float, ping: str) -> Renewal:
        """Extend the heartbeat if it has not run out; then announce ``ping`` to every listener."""

    def rejoin(self, owner: str, ttl_s: float) -> bool:
        """After a lapse: the incarnation is alive again, unless a later start replaced it."""

    def abandon(self) -> None:
        """A call hangs (the connection went silent): the next one uses a new connection."""

    def close(self) -> None: ...


class ClusterLedger(Protocol):
    @property
    def nonce(self) -> str:
        """Tags the announcements of commands this process hands over itself (a publish's
        events), and its listener's pings: its own listener need not read them back."""

    def notifications(self, on_notice: Callable[[str], None], on_connected: Callable[[bool], None],
                      silence_s: float) -> Notifications:
        """The announcements of every process, each payload to ``on_notice`` in order;
        ``on_connected(False)`` when some may have been missed (the connection broke, or this
        process's own ping was not heard back within ``silence_s``), ``(True)`` when they flow
        again."""

    def ping_of(self, beat: int) -> str:
        """The payload of this process's ``beat``-th ping (sent with each renewal)."""

    def renewer(self) -> Renewer:
        """A renewer with a connection of its own."""

    # -- incarnations
    def register_instance(self, instance_id: str, owner: str, ttl_s: float) -> bool:
        """Start the incarnation ``owner`` of the instance id (the ones before are replaced);
        whether one of them was still alive."""

    def stop_instance(self, owner: str) -> list[str]:
        """Graceful shutdown: give up every unfinished execution of this incarnation (and no
        other's), end it, and let the others know."""

    def database_now(self) -> datetime:
        """The database's clock (every process's clock is set to it)."""

    def others_alive(self, instance_id: str) -> int:
        """How many other instances are alive now (their heartbeat has not run out)."""

    # -- ownership
    def claim_own(self, instance_id: str, owner: str) -> list[str]:
        """Every unfinished execution of an earlier incarnation of the instance id, and of
        this one, owned by ``owner`` under a new epoch."""

    def orphans(self, owner: str, skip: Sequence[str] = (), limit: int = 100) -> list[Orphan]:
        """At most ``limit`` unfinished executions nobody alive owns (released, or their
        incarnation is dead), oldest first, but none of the runbooks in ``skip``
        (``tenant/runbook/version``: this process cannot run them)."""

    def skipped_orphans(self, owner: str, skip: Sequence[str]) -> int:
        """How many executions nobody alive owns are of the runbooks in ``skip``."""

    def claim(self, execution_id: str, owner: str, epoch: int) -> int | None:
        """Own the execution if its epoch is still ``epoch``; the new epoch, or None."""

    def claim_all(self, owner: str, seen: Sequence[tuple[str, int]]) -> list[str]:
        """``claim`` of each (execution id, epoch as seen), in one statement; the ids claimed."""

    def claim_finished(self, execution_id: str, owner: str) -> int | None:
        """Own a finished execution to run it again; the new epoch, or None if it is unfinished."""

    def get_execution(self, execution_id: str) -> Execution | None:
        """The committed state of an execution (to run one taken over, or follow one run elsewhere)."""

    # -- commands
    def insert_command(self, command_id: str, execution_id: str, kind: str, body: Any, origin: str) -> None:
        """Queue a command for the execution's owner and announce it (one transaction)."""

    def pending_commands(self, execution_id: str) -> list[tuple[str, str, Any]]:
        """(id, kind, body) of the execution's commands not applied yet, in order."""

    def command_outcome(self, command_id: str) -> tuple[bool, Any] | None:
        """(applied, outcome) of a command, None if there is no such command."""

    def command(self, command_id: str) -> tuple[str, bool, Any] | None:
        """(execution id, applied, outcome) of a command, None if there is no such command."""

    def leftovers(self, instance_id: str, limit: int = 100) -> list[tuple[str, int, str | None, str]]:
        """(id, epoch, owner, status) of finished executions with commands not applied, owned
        by ``instance_id`` or by a process that is gone (nobody else resolves them)."""

    def abandoned_children(self, instance_id: str, limit: int = 100) -> list[tuple[str, str, str]]:
        """(child id, parent id, parent status) of unfinished children owned by ``instance_id``
        whose parent has ended."""

    def overdue_commands(self, instance_id: str, age_s: float, limit: int = 100) -> list[str]:
        """The unfinished executions owned by ``instance_id`` with a command not applied
        ``age_s`` after it was queued."""

    def sweep_commands(self, older_than_s: float) -> None:
        """Delete the commands applied more than ``older_than_s`` ago (and forget dead
        incarnations that own nothing)."""

    # -- what the listener misses while it is down
    def commands_after(self, seq: int) -> list[tuple[int, str, str]]:
        """(seq, execution id, command id) of the unapplied commands queued after ``seq``."""

    def versions(self, execution_ids: Sequence[str]) -> dict[str, int]:
        """The committed version of each execution."""
