"""The embedded API's reads of executions: states, listings, records, and watching.

Each method checks its arguments, then reads what was committed: the latest state from
memory when this process has it (``Routing.in_memory``), else from the store, so ``get``
finds every execution of the tenant wherever it is; listings and records from the store.
An execution of another tenant is ``NotFound``, as one that does not exist.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import attrs

from runtime.api import arguments
from runtime.api.parts import Parts
from runtime.core.explain import Explanation, explain
from runtime.kinds.approval_inbox import ApprovalPage, pending_for
from runtime.model import AuditEntry, Evidence, Execution, ExecutionStatus, LogEntry
from runtime.model.errors import NotFound, Problem, ValidationError
from runtime.model.wire import from_json


@attrs.frozen
class CommandStatus:
    """A command queued for an execution's owner: ``queued``, ``applied`` (with the execution as
    it committed then, or the value answered: whether an event was taken) or ``refused`` (with
    ``error``: the class of the refusal and its message, as the owner would have answered)."""

    command_id: str
    execution_id: str
    status: str
    execution: Execution | None = None
    value: Any = None
    error: tuple[str, str] | None = None


@attrs.frozen
class Page:
    items: list[Execution]
    next_cursor: str | None


class ExecutionReads(Parts):
    async def get(self, execution_id: str, *, tenant_id: str | None = None) -> Execution:
        """The execution's latest committed state, wherever it is: from memory without a store
        read when this process has it (one it runs, or one it committed recently), else read
        from the store (off the event loop; with several processes, from the database
        whichever process owns it). ``NotFound`` only when the tenant has no such execution."""
        arguments.check_lookup(execution_id, tenant_id)
        return await self.routing.fetch(execution_id, tenant_id)

    async def fetch(self, execution_id: str, *, tenant_id: str | None = None) -> Execution:
        """The same as ``get`` (its earlier name)."""
        return await self.get(execution_id, tenant_id=tenant_id)

    async def list_executions(self, *, tenant_id: str | None = None, runbook_id: str | None = None,
                              status: str | None = None, limit: int = 50, cursor: str | None = None) -> Page:
        arguments.check_listing(tenant_id, runbook_id, status, limit, cursor)
        if status is not None and status not in {s.value for s in ExecutionStatus}:
            raise ValidationError([Problem("status", f"unknown status '{status}'")])
        if not 1 <= limit <= 1000:
            raise ValidationError([Problem("limit", "must be between 1 and 1000")])
        items, next_cursor = await self.read(self.store.list_executions, tenant_id, runbook_id=runbook_id,
                                             status=status, limit=limit, cursor=cursor)
        return Page(items, next_cursor)

    async def pending_approvals(self, user: str, *, tenant_id: str | None = None, roles: Sequence[str] = (),
                                limit: int = 50, cursor: str | None = None) -> ApprovalPage:
        """Approval steps waiting for ``user``'s decision across the tenant's unfinished executions
        (``roles``: the user's, for ``role:NAME`` approver entries, as ``submit_approval`` takes them)."""
        arguments.check_pending_approvals(user, tenant_id, roles, limit, cursor)

        async def read_page(size: int, after: str | None) -> tuple[list[Execution], str | None]:
            return await self.read(self.store.awaiting_approval, tenant_id, limit=size, cursor=after)

        return await pending_for(user, read_page, self.catalog.pinned, roles=tuple(roles), limit=limit, cursor=cursor,
                                 required_separation=self.settings.require_separation_of_duties)

    async def logs(self, execution_id: str, *, step_id: str | None = None, level: str | None = None,
                   after: int | None = None, limit: int = 1000, tenant_id: str | None = None) -> list[LogEntry]:
        arguments.check_logs(execution_id, step_id, level, after, limit, tenant_id)
        await self.routing.fetch(execution_id, tenant_id)
        return await self.read(self.store.logs, execution_id, step_id=step_id, level=level, after=after,
                               limit=limit)

    async def evidence(self, execution_id: str, *, tenant_id: str | None = None) -> list[Evidence]:
        arguments.check_lookup(execution_id, tenant_id)
        await self.routing.fetch(execution_id, tenant_id)
        return await self.read(self.store.evidence, execution_id)

    async def audit(self, execution_id: str, *, tenant_id: str | None = None) -> list[AuditEntry]:
        arguments.check_lookup(execution_id, tenant_id)
        await self.routing.fetch(execution_id, tenant_id)
        return await self.read(self.store.audit, execution_id)

    async def explain(self, execution_id: str, *, step_id: str | None = None,
                      tenant_id: str | None = None) -> list[Explanation]:
        """Why the execution and each step (or only ``step_id``) are as they are: sentences and
        the decision records they come from (``runtime.core.explain``), through the secrets
        redactor. An unknown step is ``NotFound``."""
        arguments.check_control(execution_id, None, None, tenant_id, step_id=step_id)
        execution = await self.routing.fetch(execution_id, tenant_id)
        if step_id is not None and step_id not in execution.steps:
            raise NotFound(f"execution {execution_id} has no step '{step_id}'")
        runbook = await self.catalog.pinned(execution)
        depends_on = {step.id: tuple(step.depends_on or ()) for step in runbook.steps}
        secrets = self.secrets
        return [attrs.evolve(item, reasons=tuple(secrets.redact_text(r) for r in item.reasons),
                             data=secrets.redact(item.data))
                for item in explain(execution, step_id, depends_on)]

    async def command_status(self, execution_id: str, command_id: str, *,
                             tenant_id: str | None = None) -> CommandStatus:
        """What became of a command a process accepted for the execution without its outcome
        (``CommandQueued``: its owner did not answer in time). ``NotFound`` for a command of
        another execution, or with a single process (its commands are never queued)."""
        arguments.check_lookup(execution_id, tenant_id)
        await self.routing.fetch(execution_id, tenant_id)
        found = await self.read(self.cluster.store.command, command_id) if self.cluster is not None else None
        if found is None or found[0] != execution_id:
            raise NotFound(f"execution {execution_id} has no command {command_id}")
        _, applied, outcome = found
        if not applied:
            return CommandStatus(command_id, execution_id, "queued")
        if not outcome.get("ok"):
            error = outcome.get("error") or {}
            return CommandStatus(command_id, execution_id, "refused",
                                 error=(str(error.get("class") or "RunbookError"), str(error.get("message") or "")))
        execution = outcome.get("execution")
        return CommandStatus(command_id, execution_id, "applied", from_json(execution, Execution)
                             if execution is not None else None, outcome.get("value"))

    async def wait(self, execution_id: str, *, tenant_id: str | None = None) -> Execution:
        """The execution once it has finished (completed, failed, cancelled or timed out)."""
        arguments.check_lookup(execution_id, tenant_id)
        async for execution in self.watch(execution_id, tenant_id=tenant_id):
            if execution.status.finished:
                return execution
        return await self.routing.fetch(execution_id, tenant_id)

    async def watch(self, execution_id: str, *, tenant_id: str | None = None) -> AsyncIterator[Execution]:
        """Every committed state of the execution, live, from now until it finishes.

        The first state is the current one; none is lost however slowly the consumer reads
        (up to 1,024 states behind, then its stream ends).
        """
        arguments.check_lookup(execution_id, tenant_id)

        async def current() -> Execution:
            return await self.routing.fetch(execution_id, tenant_id)

        async for execution in self.hub.watch(execution_id, current):
            yield execution
