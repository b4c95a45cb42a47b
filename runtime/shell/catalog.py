"""``Catalog``: runbook versions — registering, finding, and the plan the core runs of each.

Registered versions never change, so each one is parsed and planned once. The latest
version of each runbook is cached; with a store shared by several processes, only while
registrations elsewhere are announced to this process (``cache_latest``), and each
announcement drops the cached version (``forget_latest``).
An execution whose runbook needs a custom step type that is not registered yet waits for
it in ``plan_for`` (and goes on the moment the embedding program registers it).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from runtime.core.plan import Plan, UnknownStepType
from runtime.documents.validate import build_runbook
from runtime.model import Execution, Runbook
from runtime.model.errors import NotFound, Problem, ValidationError
from runtime.model.records import Change, ChangeResult
from runtime.model.wire import load_document
from runtime.shell.clock import Clock
from runtime.shell.settings import Settings
from runtime.shell.step_types import StepTypes
from runtime.store.base import Store

logger = logging.getLogger("runbooks.runtime")
Read = Callable[..., Awaitable[Any]]
_Version = tuple[str | None, str, int]


class Catalog:
    def __init__(self, store: Store, read: Read, commit: Callable[[Change], Awaitable[ChangeResult]],
                 types: StepTypes, settings: Settings, clock: Clock) -> None:
        self._store = store
        self._read = read
        self._commit = commit
        self.types = types
        self._settings = settings
        self._clock = clock
        self._versions: dict[_Version, Runbook] = {}
        self._plans: dict[_Version, Plan] = {}
        self._latest: dict[tuple[str | None, str], Runbook] = {}
        self.cache_latest: Callable[[], bool] = lambda: True
        self._types_changed = trio.Event()
        self.waiting_for_types = 0  # executions waiting for a step type to be registered

    # ------------------------------------------------------------------ step types
    def register_executor(self, type_name: str, executor: Any) -> None:
        self.types.register(type_name, executor)
        self._types_changed.set()
        self._types_changed = trio.Event()

    # ------------------------------------------------------------------ runbooks
    async def register(self, document: Any, tenant_id: str | None) -> tuple[Runbook, bool]:
        """The runbook as registered, and whether it is a new version (the same document as
        the latest version registers nothing and answers that version)."""
        doc = load_document(document)
        runbook = build_runbook(doc, self.types, self._settings.default_max_retries, self._settings.trigger_limits)
        runbook = attrs.evolve(runbook, tenant_id=tenant_id, created_at=self._clock.now())
        await self._check_tenant_triggers(runbook)
        result = await self._commit(Change(runbook=runbook))
        assert result.runbook_version is not None
        if result.runbook_unchanged:  # the latest version says the same: it is the answer
            return await self.get(runbook.id, result.runbook_version, tenant_id=tenant_id), False
        runbook = attrs.evolve(runbook, version=result.runbook_version)
        self._versions[(tenant_id, runbook.id, runbook.version)] = runbook
        self.forget_latest(runbook.id)
        return runbook, True

    async def _check_tenant_triggers(self, runbook: Runbook) -> None:
        """A tenant's own runbooks have at most ``max_triggers_per_tenant`` live triggers (those
        of their latest versions); a new version that adds none to its runbook always passes."""
        tenant, adding = runbook.tenant_id, _trigger_count(runbook)
        if tenant is None or not adding:
            return
        own = [r for r in await self.list(tenant) if r.tenant_id == tenant]
        current = sum(_trigger_count(r) for r in own if r.id == runbook.id)
        total = sum(_trigger_count(r) for r in own if r.id != runbook.id) + adding
        cap = self._settings.max_triggers_per_tenant
        if total > cap and adding > current:
            raise ValidationError([Problem("triggers", f"tenant '{tenant}' would have {total} live triggers; at most "
                                                       f"{cap} (MAX_TRIGGERS_PER_TENANT)")], title="too many triggers")

    def forget_latest(self, runbook_id: str | None) -> None:
        """A new version was registered (``None``: maybe any): read the latest again next time."""
        if runbook_id is None:
            self._latest.clear()
            return
        for key in [k for k in self._latest if k[1] == runbook_id]:
            del self._latest[key]

    async def get(self, runbook_id: str, version: int | None = None, *, tenant_id: str | None = None) -> Runbook:
        caching = version is None and self.cache_latest()
        if caching:
            cached = self._latest.get((tenant_id, runbook_id))
            if cached is not None:
                return cached
        runbook: Runbook | None = await self._read(self._store.get_runbook, tenant_id, runbook_id, version)
        if runbook is None:
            which = f"version {version} of runbook" if version else "runbook"
            raise NotFound(f"{which} '{runbook_id}' not found")
        self._versions.setdefault((runbook.tenant_id, runbook.id, runbook.version), runbook)
        if caching:
            self._latest[(tenant_id, runbook_id)] = runbook
        return runbook

    async def list(self, tenant_id: str | None) -> list[Runbook]:
        found: list[Runbook] = await self._read(self._store.list_runbooks, tenant_id)
        return found

    async def pinned(self, execution: Execution) -> Runbook:
        """The version the execution runs (its own tenant's, else the shared one)."""
        for key in ((execution.tenant_id, execution.runbook_id, execution.runbook_version),
                    (None, execution.runbook_id, execution.runbook_version)):
            found = self._versions.get(key)
            if found is not None:
                return found
        return await self.get(execution.runbook_id, execution.runbook_version, tenant_id=execution.tenant_id)

    # ------------------------------------------------------------------ plans
    def plan(self, runbook: Runbook) -> Plan:
        """Raises ``UnknownStepType`` while a type of the runbook is not registered."""
        key = (runbook.tenant_id, runbook.id, runbook.version)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = Plan.build(runbook, self.types.kind_of, self._settings.max_concurrent_steps)
        return plan

    async def plan_for(self, execution: Execution) -> Plan:
        runbook = await self.pinned(execution)
        try:
            return self.plan(runbook)
        except UnknownStepType as exc:
            logger.warning("execution %s waits for step type '%s' to be registered", execution.id, exc.type_name)
        self.waiting_for_types += 1
        try:
            while True:
                await self._types_changed.wait()
                try:
                    return self.plan(runbook)
                except UnknownStepType:
                    continue
        finally:
            self.waiting_for_types -= 1


def _trigger_count(runbook: Runbook) -> int:
    return len(runbook.document.get("triggers") or ())
