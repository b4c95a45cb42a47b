"""What a source's message becomes: counted, refused or published once, and audited.

``Intake`` is shared by the webhook route and the bus consumers. Each source has counters
(``received``: every message that arrived; ``refused``: a bad or stale signature, a body
that maps to no event; ``duplicate``: a message published before). A refusal writes an
entry to the source's audit log (``Runtime.source_audit``, kept per tenant under
``source:<tenant>:<id>``), at most ``AUDIT_BURST`` at once and then one a second per
source, so a flood of forged requests cannot flood the store: the next entry written says
how many were left out. Observers (the gateway's metrics) are told of every outcome.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import trio

from runtime.api.receipts import Item
from runtime.api.runtime import Runtime
from runtime.model.errors import RunbookError, ValidationError
from runtime.model.records import Delivery
from runtime.shell.events import PublishResult
from runtime.sources.config import Source
from runtime.sources.mapping import Unmappable, map_event

logger = logging.getLogger("runbooks.sources")
AUDIT_BURST = 20
AUDIT_PER_S = 1.0
Observer = Callable[[str, str, str], None]  # (source id, outcome, reason)
Incoming = tuple[Any, Mapping[str, str], Mapping[str, Any] | None, str | None]  # (body, headers, message, id)
_PUBLISHING = Exception("being published")  # (a place held in the results)


@attrs.define
class Counters:
    received: int = 0
    refused: int = 0
    duplicate: int = 0

    def as_json(self) -> dict[str, int]:
        return {"received": self.received, "refused": self.refused, "duplicate": self.duplicate}


@attrs.define
class _Bucket:
    tokens: float = AUDIT_BURST
    at: float = 0.0
    left_out: int = 0


class Intake:
    def __init__(self, runtime: Runtime, nursery: trio.Nursery) -> None:
        self.runtime = runtime
        self.counters: dict[str, Counters] = {}
        self.observers: list[Observer] = []
        self._nursery = nursery
        self._buckets: dict[str, _Bucket] = {}

    def count(self, source_id: str) -> Counters:
        return self.counters.setdefault(source_id, Counters())

    def arrived(self, source: Source) -> None:
        self.count(source.id).received += 1

    def tell(self, source: Source, outcome: str, reason: str = "") -> None:
        for observer in self.observers:
            try:
                observer(source.id, outcome, reason)
            except Exception:  # an observer never breaks a source
                logger.exception("source observer failed")

    async def publish(self, source: Source, body: Any, headers: Mapping[str, str],
                      message: Mapping[str, Any] | None = None, delivery_id: str | None = None) -> PublishResult:
        """The event of one message, published once (``Unmappable`` if it makes none)."""
        [result] = await self.publish_many(source, [(body, headers, message, delivery_id)])
        if isinstance(result, BaseException):
            raise result
        return result

    async def publish_many(self, source: Source, messages: Sequence[Incoming]) -> list[PublishResult | Exception]:
        """The events of many messages of one source (a bus's fetched batch), each published
        once; each one's result, or its error (``Unmappable``: it makes no event)."""
        items: list[Item] = []
        results: list[PublishResult | Exception] = []
        for body, headers, message, delivery_id in messages:
            try:
                mapped = map_event(source, body, headers, message)
            except Unmappable as exc:
                results.append(exc)
                continue
            ident = mapped.delivery_id or delivery_id or f"none:{uuid.uuid4().hex}"  # no id: no repeat is known
            items.append((mapped.type, mapped.key, mapped.payload, source.tenant,
                          Delivery(source.id, ident, source.keep_ms)))
            results.append(_PUBLISHING)
        published = iter(await self.runtime.publish_deliveries(items) if items else [])
        for index, result in enumerate(results):
            if result is not _PUBLISHING:
                continue
            outcome = next(published)
            if isinstance(outcome, ValidationError):
                outcome = Unmappable("; ".join(f"{p.path}: {p.message}" for p in outcome.problems))
            elif isinstance(outcome, PublishResult) and outcome.duplicate:
                self.count(source.id).duplicate += 1
                self.tell(source, "duplicate")
            elif isinstance(outcome, PublishResult):
                self.tell(source, "published")
            results[index] = outcome
        return results

    def refuse(self, source: Source, kind: str, reason: str, data: Mapping[str, Any] | None = None) -> None:
        """Count, tell and (within the audit budget) audit a refused message."""
        self.count(source.id).refused += 1
        self.tell(source, "refused", kind)
        logger.warning("source %s refused a message: %s", source.id, reason)
        bucket = self._buckets.setdefault(source.id, _Bucket(at=trio.current_time()))
        now = trio.current_time()
        bucket.tokens = min(AUDIT_BURST, bucket.tokens + (now - bucket.at) * AUDIT_PER_S)
        bucket.at = now
        if bucket.tokens < 1:
            bucket.left_out += 1
            return
        bucket.tokens -= 1
        entry = {"kind": kind, "reason": reason, **(data or {})}
        if bucket.left_out:
            entry["leftOutBefore"], bucket.left_out = bucket.left_out, 0
        self._nursery.start_soon(self._audit, source, entry)

    async def _audit(self, source: Source, data: dict[str, Any]) -> None:
        try:
            await self.runtime.record_source_audit(source.tenant, source.id, "source.refused", data)
        except RunbookError as exc:
            logger.warning("source %s: the audit entry of a refusal was not written: %s", source.id, exc)
