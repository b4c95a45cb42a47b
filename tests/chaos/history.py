"""What happened in a round, as the clients and the harness saw it.

``Request``: one HTTP request of the workload, which process it went to, when, and what the
client was told (``status`` None: no answer, the connection failed or timed out). ``Outage``:
a fault as it was applied (start and end on the harness's clock). The checker judges these
against the final database (``final.Snapshot``).
"""

from __future__ import annotations

from typing import Any, Literal

import attrs

RequestKind = Literal["start", "approve", "pause", "resume", "cancel", "retry", "replay", "publish"]
CONTROLS: tuple[RequestKind, ...] = ("approve", "pause", "resume", "cancel", "retry")


@attrs.define
class Request:
    kind: RequestKind
    process: str  # instance id of the process it was sent to
    execution: str | None  # the execution it is about (None: a start before its answer)
    tag: str  # unique: the reason/comment/payload uid that marks its effect in the database
    started: float
    ended: float = 0.0
    status: int | None = None
    body: Any = None
    error: str | None = None
    idempotency_key: str | None = None
    step: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    def describe(self) -> str:
        told = f"{self.status} {_short(self.body)}" if self.status is not None else f"no answer ({self.error})"
        about = f" {self.execution}" if self.execution else ""
        step = f"/{self.step}" if self.step else ""
        return f"{self.kind}{about}{step} [{self.tag}] on {self.process} at {self.started:.2f}s: {told}"


@attrs.frozen
class Outage:
    kind: str
    process: str  # instance id
    start: float
    end: float

    def covers(self, start: float, end: float, grace: float) -> bool:
        return self.start - grace <= end and start <= self.end + grace


@attrs.define
class History:
    requests: list[Request] = attrs.Factory(list)
    outages: list[Outage] = attrs.Factory(list)
    exits: list[str] = attrs.Factory(list)  # processes that ended without being told to, with why

    def of(self, kind: RequestKind) -> list[Request]:
        return [r for r in self.requests if r.kind == kind]


def _short(body: Any) -> str:
    text = str(body)
    return text if len(text) <= 160 else text[:157] + "..."
