"""``Runtime``: the engine's embedded API (build it with ``open_runtime``).

Its methods are the whole public API; each checks its arguments and hands the request to
the part that owns it, changing nothing itself. They are grouped by concern: reads of
executions (``ExecutionReads``), changes to executions (``ExecutionControl``), signed
decision links (``DecisionLinks``), and here the
runbooks, step types, triggers, the audit ledger and the runtime's own state. ``runtime.api.assembly`` wires
the parts and runs the runtime's life; every method is safe to call concurrently.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from runtime.api import arguments
from runtime.api.audit_export import AuditRange, Files, bundle_files, read_export
from runtime.api.control import ExecutionControl
from runtime.api.links import DecisionLinks
from runtime.api.reading import CommandStatus, ExecutionReads, Page
from runtime.documents.validate import validate_document
from runtime.model import AuditEntry, Runbook
from runtime.model.errors import (
    NotFound,
    Problem,
    StoreUnavailable,
    ValidationError,
    erased_already,
)
from runtime.model.records import Change
from runtime.model.types import StartResult
from runtime.model.wire import load_document
from runtime.security.audit_verify import Verdict, verify_files
from runtime.shell.step_types import StepTypes
from runtime.shell.watch import Observer
from runtime.triggers.scheduler import TriggerInfo, audit_key

__all__ = ["CommandStatus", "Page", "Runtime", "StartResult", "source_audit_key"]


def source_audit_key(tenant_id: str, source_id: str) -> str:
    """Where the audit entries of a tenant's event source are kept."""
    return f"source:{tenant_id}:{source_id}"


class Runtime(ExecutionControl, ExecutionReads, DecisionLinks):
    """The engine. Build it with ``open_runtime``; every method is safe to call concurrently."""

    # ------------------------------------------------------------------ the runtime itself
    @property
    def observers(self) -> list[Observer]:
        """Callables ``(what, data)`` told of ``execution.started``, ``step.finished``,
        ``execution.finished``, ``runbook.registered`` and ``execution.taken_over``."""
        return self.hub.observers

    @property
    def types(self) -> StepTypes:
        return self.catalog.types

    @property
    def open_executions(self) -> int:
        """Unfinished executions this runtime runs (live or parked)."""
        return self.directory.count

    @property
    def waiting_for_owner(self) -> int:
        """With several processes: unfinished executions that no process runs and this one
        cannot take, since their runbook needs a step type it has not registered."""
        return self.cluster.waiting_for_owner if self.cluster is not None else 0

    def now(self) -> datetime:
        """Wall-clock time that advances with Trio's clock (so MockClock drives it in tests)."""
        return self.clock.now()

    def owns(self, execution_id: str) -> bool:
        """Whether this runtime runs the execution now (with PostgreSQL: holds its lease)."""
        return self.routing.owns(execution_id)

    async def ready(self) -> None:
        """Raise ``ConnectionError`` naming the cause unless the last commit succeeded and the
        store answers (failing commits are known at once, without a round trip)."""
        if not self.persistence.stats.healthy:
            raise ConnectionError(f"commits are failing: {self.persistence.stats.last_error or 'unknown error'}")
        if self.cluster is not None and (cause := self.cluster.not_ready()) is not None:
            raise ConnectionError(cause)
        try:
            await self.read(self.store.ping)
        except StoreUnavailable as exc:
            raise ConnectionError(f"the store does not answer: {exc}") from exc

    # ------------------------------------------------------------------ runbooks
    def register_executor(self, type_name: str, executor: Any) -> None:
        """Register a custom step type: ``async def executor(ctx)`` or an object with ``execute``.
        Executions waiting for this type go on at once (with several processes, those nobody
        could run are taken over now)."""
        arguments.check_ids(type_name=type_name)
        self.catalog.register_executor(type_name, executor)
        if self.cluster is not None:
            self.cluster.types_changed()

    def validate_runbook(self, document: Any) -> list[Problem]:
        """Every problem of a document (nothing is registered)."""
        try:
            doc = load_document(document)
        except ValidationError as exc:
            return exc.problems
        return validate_document(doc, self.types, self.settings.trigger_limits)

    async def register_runbook(self, document: Any, *, tenant_id: str | None = None) -> Runbook:
        """Validate and register a new version; ``tenant_id`` None: shared by every tenant. A
        document equal to the latest version's registers nothing and returns that version."""
        arguments.check_tenant(tenant_id)
        runbook, new = await self.catalog.register(document, tenant_id)
        if new:
            self.scheduler.replace(runbook)  # only the latest version has live triggers
            self.hub.notify("runbook.registered", runbook)
        return runbook

    async def get_runbook(self, runbook_id: str, version: int | None = None, *,
                          tenant_id: str | None = None) -> Runbook:
        arguments.check_runbook_lookup(runbook_id, version, tenant_id)
        return await self.catalog.get(runbook_id, version, tenant_id=tenant_id)

    async def list_runbooks(self, *, tenant_id: str | None = None) -> list[Runbook]:
        arguments.check_tenant(tenant_id)
        return await self.catalog.list(tenant_id)

    # ------------------------------------------------------------------ event sources
    async def record_source_audit(self, tenant_id: str, source_id: str, action: str, data: Any = None) -> None:
        """An entry in the audit log of an event source of the tenant (a refused delivery, say)."""
        entry = AuditEntry(source_audit_key(tenant_id, source_id), self.now(), f"source:{source_id}", action,
                           data=data, tenant_id=tenant_id)
        await self.commit(Change(audit=(entry,)))

    async def source_audit(self, tenant_id: str, source_id: str) -> list[AuditEntry]:
        """The audit log of an event source of the tenant, oldest first."""
        return await self.read(self.store.audit, source_audit_key(tenant_id, source_id))

    # ------------------------------------------------------------------ the audit ledger
    async def export_audit(self, tenant_id: str, bounds: AuditRange | None = None) -> Files:
        """The tenant's audit ledger as the files of a bundle (``runtime/api/audit_export.py``)."""
        arguments.check_tenant(tenant_id)
        piece, evidence, open_ended = await self.read(read_export, self.store, tenant_id, bounds or AuditRange())
        return bundle_files(piece, evidence, open_ended=open_ended, signer=self.store.audit_policy.signer,
                            now=self.now())

    async def verify_audit(self, tenant_id: str) -> Verdict:
        """Export the tenant's whole ledger and check it as an auditor's verifier would."""
        files = await self.export_audit(tenant_id)
        return verify_files(dict(files))

    async def erase_audit_data(self, tenant_id: str, seq: int, *, actor: str,
                               reason: str | None = None) -> AuditEntry:
        """Erase the payload of the tenant's audit entry ``seq`` (a person's data); the entry,
        its payload's hash and the chain stay, and the erasure is itself an audit entry
        (``audit.payload_erased``). Returns the entry as it is now. A payload is erased once:
        ``Conflict`` the second time."""
        arguments.check_erasure(tenant_id, seq, actor, reason)
        found = await self.read(self.store.audit_slice, tenant_id, seq, seq)
        if not found.entries:
            raise NotFound(f"tenant '{tenant_id}' has no audit entry {seq}")
        if found.entries[0].erased:
            raise erased_already(seq)
        entry = AuditEntry(f"audit:{tenant_id}", self.now(), actor, "audit.payload_erased", reason=reason,
                           data={"seq": seq, "dataSha256": found.entries[0].data_sha256}, tenant_id=tenant_id)
        await self.commit(Change(erase=((tenant_id, seq),), audit=(entry,)))
        [erased] = (await self.read(self.store.audit_slice, tenant_id, seq, seq)).entries
        return erased

    def audit_public_key(self) -> str | None:
        """The PEM public key that checks the ledger's checkpoints (None: they are unsigned)."""
        signer = self.store.audit_policy.signer
        return signer.public_pem() if signer is not None else None

    # ------------------------------------------------------------------ triggers
    async def list_triggers(self, *, tenant_id: str = "default") -> list[TriggerInfo]:
        """The triggers of the latest version of every runbook the tenant sees."""
        return await self.scheduler.list(tenant_id)

    async def enable_trigger(self, runbook_id: str, trigger_id: str, *, tenant_id: str = "default",
                             actor: str = "system", reason: str | None = None) -> TriggerInfo:
        return await self.scheduler.switch(runbook_id, trigger_id, True, tenant_id=tenant_id, actor=actor,
                                           reason=reason)

    async def disable_trigger(self, runbook_id: str, trigger_id: str, *, tenant_id: str = "default",
                              actor: str = "system", reason: str | None = None) -> TriggerInfo:
        return await self.scheduler.switch(runbook_id, trigger_id, False, tenant_id=tenant_id, actor=actor,
                                           reason=reason)

    async def trigger_audit(self, runbook_id: str, trigger_id: str, *, tenant_id: str = "default") -> list[AuditEntry]:
        """Who switched the trigger on or off, and when (oldest first)."""
        runbook = await self.catalog.get(runbook_id, tenant_id=tenant_id)
        return await self.read(self.store.audit, audit_key(tenant_id, runbook.tenant_id, runbook_id, trigger_id))
