"""What the persistence actor writes: a ``Change`` is the unit of acknowledgement.

An ExecutionActor (or the Runtime, for starts and registrations) sends one Change and waits
for its ``ChangeResult``; the PersistenceActor commits many Changes in one transaction
(group commit) and only then answers each sender.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import attrs

from runtime.model import AuditEntry, Event, Evidence, Execution, LogEntry, Runbook, StepState


@attrs.frozen
class Wait:
    """A step waiting for events of (tenant, type, key) that pass ``filter``."""

    execution_id: str
    step_id: str
    tenant_id: str
    type: str
    key: str
    filter: Any = None


@attrs.frozen
class FanoutCaps:
    """What a store checks in the transaction of a child's start (a ``new_execution`` with a
    ``root_execution_id``) before it admits the child: its root and its parent still run,
    fewer than ``per_root`` executions were started under the root, and its tenant has fewer
    than ``per_tenant`` unfinished children. Otherwise nothing of the Change is written and
    ``ChangeResult.refused`` says why."""

    per_root: int
    per_tenant: int


@attrs.frozen
class SlotClaim:
    """With a ``new_execution`` (``queued``): its place in the queue of its concurrency key.
    The store adds it behind the executions of (tenant, key) already queued, in the same
    transaction, and gives a slot to each head of the queue while fewer than ``limit`` hold
    one (``ChangeResult.admitted``). A slot is given back in the transaction that commits
    its execution's end. (A step's place is its committed ``StepState.slot``.)"""

    tenant_id: str
    key: str
    limit: int


@attrs.frozen
class QuotaCaps:
    """What a store checks in the transaction of a start (a ``new_execution``) of a tenant with
    a quota: fewer than ``max_active`` of its executions unfinished (queued ones count), and a
    token in its bucket, which fills at ``rate`` starts a second up to ``burst`` (``now_s``:
    the start's time in seconds, as the runtime's clock says). Otherwise nothing of the Change
    is written, ``ChangeResult.refused`` says why and ``retry_after_s`` when to try again."""

    max_active: int | None
    rate: float | None
    burst: float
    now_s: float


#: why a store refused a start (``ChangeResult.refused``): a child's (``FanoutCaps``), a quota's
ENDED, ROOT_FULL, TENANT_FULL = "ended", "root_full", "tenant_full"
QUOTA_ACTIVE, QUOTA_RATE = "quota_active", "quota_rate"


@attrs.frozen
class Delivery:
    """Where an event comes from: a source's id and the message's own id there (a webhook's
    delivery id, a bus message's id). ``keep_ms``: how long a repeat of it is recognised."""

    source_id: str
    delivery_id: str
    keep_ms: int = 86_400_000


@attrs.frozen
class Receipt:
    """A message taken from an event source (a webhook delivery, a bus message), kept until
    ``expires_at`` so that the same message arriving again is known (``Change.receipt``).

    ``pending`` (one-process stores): the (execution id, step id) the event is being handed
    to and ``event`` itself, from the commit that took the message until the commit that
    settles it, so that a restart in between hands it to the same steps and no others.
    """

    source_id: str
    delivery_id: str
    tenant_id: str
    event_id: str
    received_at: datetime
    expires_at: datetime
    pending: tuple[tuple[str, str], ...] | None = None
    event: Event | None = None


@attrs.frozen
class AuditCheckpoint:
    """The head of a tenant's audit chain at a moment: ``seq`` and its ``hash``, at ``at``;
    with a signing key, its key id and Ed25519 signature (base64)."""

    tenant_id: str
    seq: int
    hash: str
    at: datetime
    key_id: str | None = None
    signature: str | None = None


@attrs.frozen
class AuditSlice:
    """A run of a tenant's chained audit entries (by seq), the ``hash`` before the first,
    and the checkpoints from the first seq on."""

    tenant_id: str
    entries: tuple[AuditEntry, ...]
    prev_hash: str
    checkpoints: tuple[AuditCheckpoint, ...]


@attrs.frozen
class Lifecycle:
    """A lifecycle event of an execution, committed with the change it reports (the outbox
    that sinks publish from). ``key``: ``<execution id>:<version>:<n>``, the same however
    often it is published. ``origin``: the process that committed it."""

    key: str
    execution_id: str
    tenant_id: str
    version: int
    kind: str  # execution.started, step.finished, step.awaiting_approval, execution.finished
    status: str
    at: datetime
    step_id: str | None = None
    origin: str = ""


@attrs.frozen
class Change:
    """State changes that commit together, in this order.

    ``new_execution`` is inserted first; if the idempotent-start index (or the
    idempotency-key index) already holds an execution, nothing else of this Change is
    written and the result names the existing execution.
    """

    new_execution: Execution | None = None
    dedup: bool = True
    fanout: FanoutCaps | None = None  # with the new_execution of a child: what admits it
    slot: SlotClaim | None = None  # with a queued new_execution: the queue of its concurrency key
    quota: QuotaCaps | None = None  # with a new_execution: its tenant's quota
    runbook: Runbook | None = None
    execution: Execution | None = None  # header upsert (its steps are written via `steps`)
    steps: tuple[tuple[str, str, int, StepState], ...] = ()  # (execution_id, step_id, position, state)
    logs: tuple[LogEntry, ...] = ()
    audit: tuple[AuditEntry, ...] = ()
    evidence: tuple[Evidence, ...] = ()
    retain_events: tuple[Event, ...] = ()
    consume_events: tuple[str, ...] = ()
    expire_events_at: datetime | None = None  # delete every retained event expired at this time
    version: tuple[str, int] | None = None  # (execution id, its version after this change)
    # several processes on one database (PostgreSQL):
    owner: str | None = None  # with new_execution: the instance that owns it (epoch 1)
    fence: tuple[str, int, str] | None = None  # (execution id, epoch, owner) every write is guarded by
    waits: tuple[Wait, ...] = ()  # subscriptions of steps that start waiting
    unwaits: tuple[tuple[str, str], ...] = ()  # (execution id, step id) that stop waiting
    publish: Event | None = None  # an event to hand to every waiter, or to retain
    retain_cap: int = 0  # with publish: retained only below this many for the tenant (0: never)
    retain_bytes_cap: int = 2**62  # with publish: retained only if the tenant's payloads stay within it
    outcomes: tuple[tuple[str, Any], ...] = ()  # (command id, outcome) of commands applied
    # event sources: a message's receipt is written first; if the store holds it already,
    # nothing else of this Change is written and the result says ``duplicate``
    receipt: Receipt | None = None
    # one-process stores: receipts of messages whose events the steps of this change took (the
    # publisher found none of them held before); a receipt the store holds already fails the
    # whole change, so a repeat can never be taken twice
    taken: tuple[Receipt, ...] = ()
    settle: tuple[tuple[str, str], ...] = ()  # (source id, delivery id) whose pending delivery is done
    expire_receipts_at: datetime | None = None  # delete every settled receipt expired at this time
    lifecycle: tuple[Lifecycle, ...] = ()  # the outbox: lifecycle events of this change
    lifecycle_done: tuple[str, int] | None = None  # (origin, seq): outbox rows up to seq are published
    erase: tuple[tuple[str, int], ...] = ()  # (tenant, seq) of audit entries whose payload is erased
    checkpoint_idle: datetime | None = None  # checkpoint every audit chain whose last checkpoint is due by then
    tenant_id: str | None = None  # whose change (an execution's transition): batches are shared fairly by tenant

    @property
    def empty(self) -> bool:
        return not (
            self.new_execution or self.runbook or self.execution or self.steps or self.logs
            or self.audit or self.evidence or self.retain_events or self.consume_events or self.version
            or self.waits or self.unwaits or self.publish or self.outcomes or self.expire_events_at
            or self.receipt or self.taken or self.settle or self.expire_receipts_at or self.lifecycle
            or self.lifecycle_done or self.erase or self.checkpoint_idle
        )


QueuedCommand = tuple[str, str, str, Any]  # (command id, execution id, kind, body)


@attrs.frozen
class ChangeResult:
    """``existing_id`` set: the start was a duplicate. ``runbook_version``: the version assigned."""

    existing_id: str | None = None
    runbook_version: int | None = None
    runbook_unchanged: bool = False  # a registration: the latest version already said the same (its version)
    delivered: int = 0  # a publish: the waiters it was handed to
    retained: bool = False  # a publish: kept for a later waiter
    refused_by_filter: int = 0  # a publish: waiters on its type and key whose filter refused it
    commands: tuple[QueuedCommand, ...] = ()  # a shared store's publish: the command each waiter got
    refused: str | None = None  # a start not admitted: ENDED, ROOT_FULL, TENANT_FULL, QUOTA_ACTIVE, QUOTA_RATE
    retry_after_s: float | None = None  # with QUOTA_RATE: when the tenant's bucket has a token again
    duplicate: bool = False  # the Change's receipt was held already: nothing of it was written
    admitted: tuple[tuple[str, str], ...] = ()  # (execution id, step id or "") given a slot by this commit


def merged(first: Change, second: Change) -> Change:
    """One change with the records of ``first`` then ``second`` (later states win).

    Both are changes of one execution's transitions, never a start or a registration."""
    steps = {(eid, sid): (eid, sid, pos, state) for eid, sid, pos, state in first.steps}
    steps.update({(eid, sid): (eid, sid, pos, state) for eid, sid, pos, state in second.steps})
    return Change(
        execution=second.execution or first.execution,
        steps=tuple(steps.values()),
        logs=first.logs + second.logs,
        audit=first.audit + second.audit,
        evidence=first.evidence + second.evidence,
        retain_events=first.retain_events + second.retain_events,
        consume_events=first.consume_events + second.consume_events,
        version=second.version or first.version,
        fence=second.fence or first.fence,
        waits=first.waits + second.waits,
        unwaits=first.unwaits + second.unwaits,
        outcomes=first.outcomes + second.outcomes,
        lifecycle=first.lifecycle + second.lifecycle,
        slot=second.slot or first.slot,
        taken=first.taken + second.taken,
    )
