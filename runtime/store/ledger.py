"""``ClusterLedger``: what several processes sharing one store need of it.

A store that other processes may write too has a ``ledger`` (``Store.ledger``; None for a
store of one process); the runtime runs as a member of a cluster exactly when it has one
(``runtime/cluster/node.py``). The ledger keeps: each process's *instance* row and its
heartbeat; which instance *owns* each unfinished execution, under an epoch that grows at
every claim (the store refuses the writes of an owner whose epoch is stale); *commands* for
an execution that another process owns, with their outcomes; and the *notifications* that
announce commands, outcomes, committed states, released executions and registered runbooks
(payloads ``kind:argument``, see ``pg_cluster.py``). PostgreSQL's is ``pg_ledger.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import trio

from runtime.model import Execution

#: (id, epoch, tenant, runbook id, runbook version) of an execution nobody alive owns
Orphan = tuple[str, int, str, str, int]


class Notifications(Protocol):
    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Deliver notifications until cancelled; ``started`` once they are listened to."""


class ClusterLedger(Protocol):
    @property
    def nonce(self) -> str:
        """Tags the announcements of commands this process hands over itself (a publish's
        events): its own listener need not read them back."""

    def notifications(self, on_notice: Callable[[str], None],
                      on_connected: Callable[[bool], None]) -> Notifications:
        """The announcements of every process, each payload to ``on_notice`` in order;
        ``on_connected(False)`` when some may have been missed, ``(True)`` when they flow again."""

    # -- instances
    def register_instance(self, instance_id: str, incarnation: str, ttl_s: float) -> bool:
        """Take the instance id for this process; whether a process using it was still alive."""

    def renew_instance(self, instance_id: str, incarnation: str, ttl_s: float) -> bool:
        """Extend this process's heartbeat; False: another process took the instance id."""

    def stop_instance(self, instance_id: str, incarnation: str) -> list[str]:
        """Graceful shutdown: give every unfinished execution up and let the others know."""

    def others_alive(self, instance_id: str) -> int:
        """How many other instances are alive now (their heartbeat has not run out)."""

    # -- ownership
    def claim_own(self, instance_id: str) -> list[str]:
        """Every unfinished execution this instance id owns, each under a new epoch."""

    def orphans(self, instance_id: str, limit: int = 1000) -> list[Orphan]:
        """Unfinished executions nobody alive owns (released, or their owner's heartbeat ran out)."""

    def claim(self, execution_id: str, instance_id: str, epoch: int) -> int | None:
        """Own the execution if its epoch is still ``epoch``; the new epoch, or None."""

    def claim_finished(self, execution_id: str, instance_id: str) -> int | None:
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

    def sweep_commands(self, older_than_s: float) -> None:
        """Delete the commands applied more than ``older_than_s`` ago."""
