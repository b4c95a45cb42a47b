"""``open_runtime``: every part of the engine wired together, and the runtime's life.

Opening: the store opens (created or migrated), the persistence actor, the timers and the
executions supervisor start, the parts are built and wired (each reaches only what its
host gives it: ``ExecutionHost``, ``ChildrenHost``, ``NotifierHost``, ``SchedulerHost``),
custom step types are registered, and then the runtime recovers: every unfinished
execution starts from its committed state (recovery is the start path), and those that
only wait park again at once. With a PostgreSQL store several processes may share, this
process first takes its instance row and its own executions, then those nobody runs.

Closing (leaving the ``async with``): triggers, children and notifications stop, every
actor is cancelled, the persistence actor flushes (with several processes, this one's
executions are then handed over at once), and the store closes; with a persistent store,
unfinished executions resume at the next open.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from functools import partial
from typing import Any

import attrs
import httpx
import trio

from actors import Address, open_mailbox, open_supervisor
from runtime.api import admission
from runtime.api.access import CommitChange, Read, committer, reader
from runtime.api.receipts import OncePublisher
from runtime.api.routing import Routing
from runtime.api.runtime import Runtime
from runtime.api.starting import Starter
from runtime.api.stores import audit_policy, store_for
from runtime.cluster.leftovers import Leftovers
from runtime.cluster.node import Cluster, default_instance_id
from runtime.core import Tick
from runtime.core.messages import Cancel
from runtime.io.children import Children, ChildrenHost
from runtime.io.context import Services
from runtime.io.grpc_descriptors import Descriptors
from runtime.io.notify import Notifier, NotifierHost
from runtime.io.stand_in import StandIn
from runtime.model import Execution
from runtime.model.records import Change
from runtime.security.outbound import HostAllowlist, checked_client
from runtime.security.secrets import Secrets, install_log_redaction, remove_log_redaction
from runtime.shell import audit_checkpoints, outage, retained, shutdown
from runtime.shell.catalog import Catalog
from runtime.shell.clock import Clock
from runtime.shell.directory import Directory
from runtime.shell.events import EventRouter
from runtime.shell.fairness import FairGate
from runtime.shell.host import ExecutionHost
from runtime.shell.lifecycle import lifecycle_of
from runtime.shell.persistence import BatchObserver, PersistenceActor, PersistenceMessage
from runtime.shell.quotas import quotas_from_env
from runtime.shell.settings import Settings
from runtime.shell.step_types import StepTypes
from runtime.shell.timers import Timers
from runtime.shell.watch import WatchHub
from runtime.store.base import Store
from runtime.triggers.scheduler import Scheduler, SchedulerHost


@asynccontextmanager
async def open_runtime(store: str | Store = "memory", *, settings: Settings | None = None,
                       http: httpx.AsyncClient | None = None, batch_observer: BatchObserver | None = None,
                       executors: Mapping[str, Any] | None = None, pool_max: int = 20,
                       stand_in: StandIn | None = None,
                       quotas: Mapping[str, Any] | None = None) -> AsyncIterator[Runtime]:
    """Open the engine on a store (``"memory"``, ``"sqlite:///file.db"``, ``"postgresql://..."``,
    or a ``Store`` object). ``pool_max``: the most connections a PostgreSQL URL's read pool holds.

    ``executors`` registers custom step types before recovery starts. ``stand_in`` answers
    every call-service request, gRPC call and approval notification instead of the network
    (``runtime.io.stand_in``; runbook tests). ``quotas``: per tenant, ``{maxActive,
    startsPerSecond, burst}`` (``runtime.shell.quotas``); without them (here or in
    ``settings.quotas``) those of the file ``RUNBOOKS_QUOTAS_FILE`` names, if it is set.
    """
    settings = settings or Settings()
    if quotas is not None:
        settings = attrs.evolve(settings, quotas=quotas)
    elif not settings.quotas:
        settings = attrs.evolve(settings, quotas=quotas_from_env())
    the_store = store_for(store, pool_max=pool_max)
    the_store.audit_policy = audit_policy(settings)
    if the_store.threaded:
        await trio.to_thread.run_sync(the_store.open)
    else:
        the_store.open()
    body_error: BaseException | None = None
    runtime: Runtime | None = None
    try:
        async with _client(http, settings.call_service_allowed_hosts) as client, trio.open_nursery() as services:
            persistence = PersistenceActor(the_store, max_batch=settings.persistence_max_batch,
                                           fair_batch=settings.persistence_fair_batch,
                                           observer=batch_observer)
            address: Address[PersistenceMessage]
            address, mailbox = open_mailbox("persistence", 4096)
            services.start_soon(persistence.run, mailbox, name="persistence")
            try:
                # children, notifications and triggers (background) reach the executions: they end before them
                async with open_supervisor("executions") as executions, trio.open_nursery() as background:
                    runtime = _assemble(the_store, settings, client, persistence, address,
                                        Directory(executions, services), services, background, stand_in)
                    install_log_redaction(runtime.secrets)
                    for name, executor in (executors or {}).items():
                        runtime.register_executor(name, executor)
                    persistence.admitted = partial(admission.tell_admitted, runtime.routing)
                    await _recover(runtime, services)
                    await runtime.scheduler.load()
                    background.start_soon(runtime.scheduler.run, name="triggers")
                    background.start_soon(admission.pump, runtime.routing, runtime.read, the_store,
                                          settings.queue_poll_ms / 1000, name="admission")
                    if runtime.cluster is not None:
                        services.start_soon(runtime.cluster.heartbeat, name="heartbeat")
                        services.start_soon(Leftovers(runtime.cluster, runtime.read, runtime.commit,
                                                      runtime.directory, runtime.children).run,
                                            name="commands of finished executions")
                    try:
                        yield runtime
                    except BaseException as exc:
                        body_error = exc
                        raise
                    finally:
                        background.cancel_scope.cancel()
                        executions.cancel()
                # flush, then let another process take over at once; bounded (store down)
                release = runtime.cluster.stop if runtime.cluster is not None else None
                await shutdown.hand_over(address, persistence, release, settings.shutdown_timeout_ms / 1000)
            finally:
                shutdown.stop_persistence(persistence)  # cancelled or failed: refuse what is pending
                services.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The caller's own exception comes back as itself, not wrapped by our nurseries;
        # any other failure (or several) stays a group.
        if body_error is not None and _only_leaf(group) is body_error:
            raise body_error from None
        raise
    finally:
        if runtime is not None:
            runtime.services.close()  # the gRPC channels, once no execution runs
            remove_log_redaction(runtime.secrets)
        await shutdown.close_store(the_store)


# ---------------------------------------------------------------------- wiring
def _assemble(store: Store, settings: Settings, http: httpx.AsyncClient, persistence: PersistenceActor,
              address: Address[PersistenceMessage], directory: Directory, services: trio.Nursery,
              background: trio.Nursery, stand_in: StandIn | None) -> Runtime:
    """Every part, each given what it reaches; the runtime's timers and sweep started."""
    clock, read = Clock(), reader(store)
    outbox = None
    if settings.lifecycle_outbox:
        origin = settings.instance_id or ""
        outbox = lambda change: lifecycle_of(change, origin, clock.now())  # noqa: E731
    commit = committer(store, persistence, address, outbox)
    hub = WatchHub(settings.finished_cache_size)
    catalog = Catalog(store, read, commit, StepTypes(settings.require_separation_of_duties), settings, clock)
    router = EventRouter(now=clock.now, retention_ms=settings.event_retention_ms, commit=commit, ask=directory.ask,
                         max_retained_per_tenant=settings.max_retained_events_per_tenant,
                         max_retained_bytes_per_tenant=settings.max_retained_event_bytes_per_tenant)
    cluster = _cluster(store, read, directory, catalog, hub, settings)
    routing = Routing(store, read, commit, settings, directory, hub, catalog, router, cluster)
    starter = Starter(store, read, commit, clock, catalog, directory, hub, routing.fetch, max_hops=settings.max_hops,
                      owner=cluster.owner if cluster is not None else None,
                      acting=cluster.acting if cluster is not None else None,
                      max_descendants=settings.max_descendants,
                      max_active_descendants=settings.max_active_descendants_per_tenant, quotas=settings.quotas)
    secrets = Secrets(settings.secrets_file, settings.secrets_env)
    executors = Services(http=http, now=clock.now, call_service_base_url=settings.call_service_base_url,
                         secrets=secrets, allowed_hosts=settings.call_service_allowed_hosts,
                         grpc_descriptors=Descriptors(settings.grpc_protoset_dir),
                         max_output_bytes=settings.max_output_bytes, stand_in=stand_in)
    children = Children(ChildrenHost(start=starter.start, cancel=partial(_cancel_child, routing), tell=routing.tell),
                        background)
    notifier = Notifier(NotifierHost(executors, secrets, settings.public_url, settings.default_retry_policy,
                                     directory.post, clock.now), background)
    once = OncePublisher(store, read, commit, clock, settings, router, routing)
    runtime = Runtime(store=store, read=read, commit=commit, settings=settings, clock=clock, persistence=persistence,
                      directory=directory, hub=hub, catalog=catalog, router=router, routing=routing, once=once,
                      starter=starter, scheduler=Scheduler(_scheduler_host(store, read, commit, clock, catalog, starter)),
                      children=children, notifier=notifier, secrets=secrets, services=executors, cluster=cluster)
    timers = Timers(clock)
    directory.host = _execution_host(runtime, commit, timers)
    _start_sweeps(runtime, timers, commit, services)
    return runtime


def _cluster(store: Store, read: Read, directory: Directory, catalog: Catalog, hub: WatchHub,
             settings: Settings) -> Cluster | None:
    """This process among the others sharing the store, if several may."""
    if store.ledger is None:  # one process per store
        return None
    cluster = Cluster(store.ledger, read, directory, catalog, hub, instance_id=settings.instance_id or default_instance_id(),
                      ttl_ms=settings.lease_ttl_ms, forward_wait_ms=settings.forward_wait_ms)
    catalog.cache_latest = cluster.caches_latest
    return cluster


async def _cancel_child(routing: Routing, execution_id: str, reason: str, actor: str) -> Execution:
    return await routing.apply(execution_id, None, Cancel(actor, reason))


def _scheduler_host(store: Store, read: Read, commit: CommitChange, clock: Clock, catalog: Catalog,
                    starter: Starter) -> SchedulerHost:
    return SchedulerHost(
        clock=clock, runbook=catalog.get, runbooks=catalog.list, latest_runbooks=partial(read, store.all_latest_runbooks),
        start=starter.start, states=partial(read, store.trigger_states),
        record_run=partial(read, store.record_trigger_run), set_enabled=partial(read, store.set_trigger_enabled),
        commit=commit)


def _execution_host(runtime: Runtime, commit: CommitChange, timers: Timers) -> ExecutionHost:
    """What an execution actor reaches; its reads wait for the store, as its commits do."""
    hub, directory, catalog, cluster = runtime.hub, runtime.directory, runtime.catalog, runtime.cluster

    async def load(execution_id: str) -> Execution | None:
        execution = await runtime.read(runtime.store.get_execution, execution_id)
        if execution is not None:
            hub.remember(execution)
        return execution

    def published(execution: Execution, change: Change | None = None) -> None:
        hub.published(execution, change)
        if execution.parent_execution_id is not None and execution.status.finished:
            runtime.children.finished(execution)  # the one place a child's end goes to its parent

    def left(execution_id: str, address: Any, final: Execution | None) -> None:
        if final is not None:
            hub.remember(final)  # parked or finished: get() still answers from memory
        directory.left(execution_id, address, final)

    return ExecutionHost(
        clock=runtime.clock, load=outage.waiting(load, "loading an execution"), recent=hub.recent,
        plan_for=outage.waiting(catalog.plan_for, "reading a runbook"), commit=commit, published=published,
        types=catalog.types, services=runtime.services, default_policy=runtime.settings.default_retry_policy,
        router=runtime.router, timers=timers, left=left, incarnation=directory.next_incarnation,
        start_child=runtime.children.start, cancel_child=runtime.children.cancel, notify=runtime.notifier.send,
        gate=FairGate(runtime.settings.fair_turns),
        owner=cluster.owner if cluster else None, pending_commands=cluster.pending if cluster else None,
        hand=cluster.hand if cluster else None, applied=directory.applied,
    )


def _start_sweeps(runtime: Runtime, timers: Timers, commit: CommitChange, services: trio.Nursery) -> None:
    """The runtime's own tasks: the timers of every execution, the sweeps of retained events, of
    receipts and of quiet audit chains' checkpoints."""
    def fire(execution_id: str, at: datetime) -> None:
        runtime.directory.post(execution_id, Tick(at))

    services.start_soon(timers.run, fire, name="timers")
    services.start_soon(partial(retained.sweep, runtime.router.retained, runtime.clock.now, commit,
                                retained.sweep_interval_s(runtime.settings.event_retention_ms),
                                periodic=runtime.cluster is not None), name="retained events sweep")
    services.start_soon(runtime.once.sweep, name="receipts sweep")
    written = None if runtime.cluster is not None else runtime.persistence.audit_written_since
    services.start_soon(audit_checkpoints.sweep, runtime.clock.now, commit, runtime.settings.audit_checkpoint_ms,
                        written, name="audit checkpoints")


async def _recover(runtime: Runtime, nursery: trio.Nursery) -> None:
    """Start every unfinished execution this process runs (recovery is the start path)."""
    read, store, directory = runtime.read, runtime.store, runtime.directory
    if runtime.cluster is not None:
        await runtime.cluster.set_clock(runtime.clock)  # before anything is armed
        for execution_id in await runtime.cluster.start(nursery):
            directory.start(execution_id, await read(store.get_execution, execution_id), taken_over=True)
        await runtime.cluster.take_over()
    else:
        unfinished = await read(store.load_unfinished)
        for execution in unfinished:
            directory.start(execution.id, execution)
        running = {execution.id for execution in unfinished}
        for execution in unfinished:  # a child whose parent ended before its cancel was committed
            parent_id = execution.parent_execution_id
            if parent_id is not None and parent_id not in running:
                parent = await read(store.get_execution, parent_id)
                if parent is None or parent.status.finished:
                    runtime.children.abandoned(execution.id, parent_id)
        runtime.router.load_retained(await read(store.retained_events, runtime.clock.now()))
        nursery.start_soon(runtime.once.resume, name="pending receipts")


# ---------------------------------------------------------------------- helpers
def _only_leaf(group: BaseExceptionGroup[Any]) -> BaseException | None:
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop()
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        elif not isinstance(exc, trio.Cancelled):
            leaves.append(exc)
    return leaves[0] if len(leaves) == 1 else None


@asynccontextmanager
async def _client(http: httpx.AsyncClient | None, allowed: HostAllowlist | None) -> AsyncIterator[httpx.AsyncClient]:
    if http is not None:
        yield http
        return
    client = httpx.AsyncClient(timeout=30.0, follow_redirects=False) if allowed is None else \
        checked_client(allowed, timeout=30.0, follow_redirects=False)  # every connection checked
    async with client:
        yield client
