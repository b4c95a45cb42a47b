"""The embedded API's reads of executions: states, listings, records, and watching.

Each method checks its arguments, then reads what was committed: the latest state from
memory when this process has it (``Routing.in_memory``), else from the store, so ``get``
finds every execution of the tenant wherever it is; listings and records from the store.
An execution of another tenant is ``NotFound``, as one that does not exist.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import attrs

from runtime.api import arguments
from runtime.api.parts import Parts
from runtime.kinds.approval_inbox import ApprovalPage, pending_for
from runtime.model import AuditEntry, Evidence, Execution, ExecutionStatus, LogEntry
from runtime.model.errors import Problem, ValidationError


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
