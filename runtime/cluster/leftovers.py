"""``Leftovers``: commands queued for executions that have finished.

A control that raced the end of its execution, the end of a child after its parent was
cancelled, an event for a step of an execution that has ended: no actor runs those
executions any more, so no delivery applies their commands. Every third of
``LEASE_TTL_MS`` the process resolves those of the finished executions it owned (or whose
owner is gone, after claiming them): each command is refused with the answer its owner
would have given (``Conflict``: the execution has ended), recorded as its outcome (the
caller waiting on it, or reading it later, gets it); an event it carried is offered again,
as if just published (to another waiting step, or retained). Each resolution is one commit
guarded by the execution's epoch, so one process resolves a command, once.

The same round cancels the children this process runs whose parent has ended (the parent's
cancel of them was lost when the process that committed the parent's end stopped first), and
delivers again the commands that have waited longer than the TTL for an owner that is this
process (the announcement, or the hand-over to an actor, was lost): a ``202 queued`` is
applied within a bound whatever went missing on its way.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from runtime.cluster.node import Cluster
from runtime.core.messages import Command, DeliverEvent, command_of
from runtime.io.children import Children
from runtime.model.errors import Conflict, Fenced
from runtime.model.records import Change, ChangeResult
from runtime.shell import commands
from runtime.shell.directory import Directory
from runtime.shell.execution import REOFFER_CAP

logger = logging.getLogger("runbooks.cluster")

Read = Callable[..., Awaitable[Any]]


class Leftovers:
    def __init__(self, cluster: Cluster, read: Read, commit: Callable[[Change], Awaitable[ChangeResult]],
                 directory: Directory, children: Children) -> None:
        self._cluster = cluster
        self._read = read
        self._commit = commit
        self._directory = directory
        self._children = children

    async def run(self) -> None:
        while True:
            await trio.sleep(self._cluster.ttl_s / 3)
            try:
                await self.resolve()
                await self.abandoned_children()
                await self.overdue_commands()
            except Exception as exc:  # the database is away: the next round tries again
                logger.warning("resolving the commands of finished executions failed: %s", exc)

    async def overdue_commands(self) -> None:
        """Deliver again the commands that waited past the TTL for this process."""
        if self._cluster.acting():
            for execution_id in await self._read(self._cluster.store.overdue_commands, self._cluster.owner,
                                                 self._cluster.ttl_s):
                await self._cluster.redeliver(execution_id)

    async def abandoned_children(self) -> None:
        """Cancel the children this process runs whose parent has ended."""
        if self._cluster.acting():
            for child_id, parent_id, _ in await self._read(self._cluster.store.abandoned_children,
                                                           self._cluster.owner):
                self._children.abandoned(child_id, parent_id)

    async def resolve(self) -> int:
        """Resolve every command of a finished execution this process may; how many."""
        me, ledger, resolved = self._cluster.owner, self._cluster.store, 0  # (this incarnation)
        if not self._cluster.acting():
            return 0  # its lease does not hold: it owns nothing now
        for execution_id, epoch, owner, status in await self._read(ledger.leftovers, me):
            if self._directory.knows(execution_id):
                continue  # (its actor here is finishing: it applies what it has)
            if owner != me:  # its owner is gone: take it, so that nobody else resolves the same
                claimed: int | None = await self._read(ledger.claim, execution_id, me, epoch)
                if claimed is None:
                    continue
                epoch = claimed
            for command_id, kind, body in await self._read(ledger.pending_commands, execution_id):
                if command_id in self._directory.applied:
                    continue
                if not await self._refuse(execution_id, epoch, status, command_id, _command(kind, body)):
                    break
                resolved += 1
        return resolved

    async def _refuse(self, execution_id: str, epoch: int, status: str, command_id: str,
                      command: Command | None) -> bool:
        ended = Conflict(f"execution {execution_id} is {status}")
        change = Change(outcomes=((command_id, commands.outcome_of_error(ended)),),
                        fence=(execution_id, epoch, self._cluster.owner))
        if isinstance(command, DeliverEvent):  # refused as a step that no longer waits refuses it
            change = Change(outcomes=((command_id, commands.outcome_of_value(False)),), fence=change.fence,
                            publish=command.event, retain_cap=REOFFER_CAP)
        try:
            result = await self._commit(change)
        except Fenced:
            return False  # another process owns it now (a step retry): its commands are its own
        self._directory.applied.add((command_id,))
        self._cluster.hand(result.commands)
        return True


def _command(kind: str, body: Any) -> Command | None:
    try:
        return command_of(kind, body)
    except ValueError:  # a kind this version does not know: refused all the same
        return None
