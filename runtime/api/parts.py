"""``Parts``: the parts of an open runtime, as ``runtime.api.assembly`` wired them.

``Runtime`` is built from them (its methods are spread over a few classes by concern, each
deriving from ``Parts``), so every method reaches the same parts, and an embedding program
or a test can look at them (``rt.store``, ``rt.directory``, ``rt.persistence.stats``...).
Nothing here decides anything.
"""

from __future__ import annotations

import attrs

from runtime.api.access import CommitChange, Read
from runtime.api.receipts import OncePublisher
from runtime.api.routing import Routing
from runtime.api.starting import Starter
from runtime.cluster.node import Cluster
from runtime.io.children import Children
from runtime.io.context import Services
from runtime.io.notify import Notifier
from runtime.security.secrets import Secrets
from runtime.shell.catalog import Catalog
from runtime.shell.clock import Clock
from runtime.shell.directory import Directory
from runtime.shell.events import EventRouter
from runtime.shell.persistence import PersistenceActor
from runtime.shell.settings import Settings
from runtime.shell.watch import WatchHub
from runtime.store.base import Store
from runtime.triggers.scheduler import Scheduler


@attrs.define(slots=False, eq=False, repr=False, kw_only=True)
class Parts:
    store: Store
    read: Read
    commit: CommitChange  # through the persistence actor: returns once durable
    settings: Settings
    clock: Clock
    persistence: PersistenceActor  # its ``stats`` say whether commits succeed
    directory: Directory  # the executions this process runs
    hub: WatchHub  # committed states: recent ones, watchers, observers
    catalog: Catalog  # runbooks and step types
    router: EventRouter  # events for waiting steps, and the retained ones
    routing: Routing  # where a request for an execution is applied
    once: OncePublisher  # events of sources' messages, each published once
    starter: Starter  # the one start of an execution
    scheduler: Scheduler  # triggers
    children: Children  # the child executions of run-runbook steps
    notifier: Notifier  # approval notifications
    secrets: Secrets
    services: Services  # what executors use: the HTTP client, gRPC channels, secrets
    cluster: Cluster | None  # None unless several processes may share the store
