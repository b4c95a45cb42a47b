"""A runbook test file as read: its cases, their canned replies, deliveries and expectations.

``runtime.testing.reading`` builds these from YAML or JSON and reports every problem; the
rest of the package only sees values that passed. Step keys name a step of the runbook under
test (``build``), or of a sub-runbook it runs (``risk-assessment/analyze``).
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from typing import Any

import attrs

DEFAULT_BASE_URL = "http://call-service.test"  # relative call-service URLs; .test never resolves
DEFAULT_UNTIL_MS = 30 * 24 * 3600 * 1000  # virtual time a case may take at most
REFUSED = "refused"  # the expected status of a case whose start is refused (input, legal basis)


@attrs.frozen
class Reply:
    """One canned answer: HTTP (``status``, ``body``, ``headers``, ``error``) or gRPC (``code``,
    ``message``). ``match``: the request it answers (None: any); ``delay_ms``: how long the
    service takes, on the virtual clock."""

    kind: str  # "http" | "grpc"
    status: int = 200
    body: Any = None
    headers: Mapping[str, str] = attrs.Factory(dict)
    error: str | None = None  # "connection" | "timeout"
    code: str = "OK"
    message: Any = None
    match: Mapping[str, Any] | None = None
    delay_ms: int = 0


@attrs.frozen
class StepReplies:
    """A step's replies: one that answers every call (``reusable``), or a list, each used once."""

    entries: tuple[Reply, ...]
    reusable: bool


@attrs.frozen
class EventAt:
    at_ms: int
    type: str
    key: str
    payload: Any = None
    where: str = ""  # its place in the file (events[0]), for messages


@attrs.frozen
class ApprovalAt:
    at_ms: int
    step: str
    approver: str
    decision: str
    comment: str | None = None
    where: str = ""  # its place in the file (approvals[0]), for messages
    roles: tuple[str, ...] = ()  # the approver's, for approvers written role:NAME


Delivery = EventAt | ApprovalAt


@attrs.frozen
class StepExpect:
    status: str | None = None
    attempts: int | None = None
    error: str | None = None  # the step's error code


@attrs.frozen
class Expect:
    status: str | None = None
    steps: Mapping[str, StepExpect] = attrs.Factory(dict)
    outputs: Mapping[str, Any] = attrs.Factory(dict)
    calls: Mapping[str, int | tuple[Mapping[str, Any], ...]] = attrs.Factory(dict)
    audit: tuple[Mapping[str, str], ...] = ()
    error: Mapping[str, str] | None = None


@attrs.frozen
class Case:
    name: str
    input: Any = attrs.Factory(dict)
    context: Mapping[str, Any] = attrs.Factory(dict)
    replies: Mapping[str, StepReplies] = attrs.Factory(dict)
    deliveries: tuple[Delivery, ...] = ()  # events and approvals, in time order
    expect: Expect = attrs.Factory(Expect)
    until_ms: int = DEFAULT_UNTIL_MS


@attrs.frozen
class Suite:
    """A test file with what it runs: the runbook under test and the sub-runbooks it may start."""

    path: pathlib.Path
    runbook_path: pathlib.Path
    document: Mapping[str, Any]
    subs: tuple[Mapping[str, Any], ...]
    cases: tuple[Case, ...]
    base_url: str = DEFAULT_BASE_URL
    secrets: Mapping[str, str] = attrs.Factory(dict)

    @property
    def runbook_id(self) -> str:
        return str(self.document["id"])


@attrs.frozen
class FileProblem:
    """What is wrong with a file, at a path inside it (``$``: the file as a whole)."""

    file: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.message}" if self.path == "$" else f"{self.file}: {self.path}: {self.message}"
