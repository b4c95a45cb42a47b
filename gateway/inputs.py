"""Request values: the fields of JSON bodies and the query parameters, checked and typed.

Every check lists all the problems it finds before refusing, with one status for the lot:
400 when the request cannot be read into the declared types (a string where an integer
belongs), else 422 when values are refused (a required field missing, an unknown field, an
unknown enum value, a limit out of range). The views get frozen attrs values and never
see raw request data.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import attrs
from quart import request

from gateway.problems import ApiProblem
from runtime import Problem
from runtime.model import LOG_LEVELS, ExecutionStatus

DECISIONS = ("approve", "reject")
STATUSES = tuple(status.value for status in ExecutionStatus)
IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?")
MAX_VERSION = 2**31 - 1


class Problems:
    """Collects request problems; ``raise_if_any`` refuses with 400 if any is a type problem, else 422."""

    def __init__(self) -> None:
        self.items: list[Problem] = []
        self.unreadable = False

    def type_error(self, path: str, message: str) -> None:
        self.items.append(Problem(path, message))
        self.unreadable = True

    def invalid(self, path: str, message: str) -> None:
        self.items.append(Problem(path, message))

    def raise_if_any(self) -> None:
        if not self.items:
            return
        status = 400 if self.unreadable else 422
        count = len(self.items)
        detail = f"{count} problem{'s' if count != 1 else ''} with the request: " + "; ".join(
            f"{p.path}: {p.message}" for p in self.items[:3])
        raise ApiProblem(status, detail, self.items)


# ---------------------------------------------------------------------------- JSON bodies

class Fields:
    """Typed access to the fields of a JSON object; problems go to ``problems``."""

    def __init__(self, value: Any, problems: Problems, allowed: tuple[str, ...]) -> None:
        self.problems = problems
        self.data: Mapping[str, Any] = value if isinstance(value, dict) else {}
        if value is not None and not isinstance(value, dict):
            problems.type_error("$", "the body must be a JSON object")
        for key in self.data:
            if key not in allowed:
                problems.invalid(key, f"unknown field (expected {', '.join(allowed)})")

    def get(self, name: str, kind: type | tuple[type, ...], kind_name: str, *, required: bool = False) -> Any:
        value = self.data.get(name)
        if value is None:
            if required:
                self.problems.invalid(name, "required")
            return None
        if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
            self.problems.type_error(name, f"must be {kind_name}")
            return None
        return value

    def text(self, name: str, *, required: bool = False, max_length: int = 10_000) -> str | None:
        value: str | None = self.get(name, str, "a string", required=required)
        if value is not None and len(value) > max_length:
            self.problems.invalid(name, f"at most {max_length} characters")
            return None
        if required and value is not None and not value.strip():
            self.problems.invalid(name, "required (a non-empty string)")
            return None
        return value

    def choice(self, name: str, choices: tuple[str, ...], *, required: bool = False) -> str | None:
        value = self.text(name, required=required)
        if value is not None and value not in choices:
            self.problems.invalid(name, f"must be one of {', '.join(choices)}, got {value!r}")
            return None
        return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


@attrs.frozen
class StartRequest:
    runbook_id: str
    version: int | None
    input: Any
    context: dict[str, Any]


def start_request(body: Any) -> StartRequest:
    problems = Problems()
    fields = Fields(body, problems, ("runbookId", "version", "input", "context"))
    runbook_id = fields.text("runbookId", required=True, max_length=128)
    version = fields.get("version", int, "an integer")
    if version is not None and not 1 <= version <= MAX_VERSION:
        problems.invalid("version", f"must be between 1 and {MAX_VERSION}")
    context = fields.get("context", dict, "an object") or {}
    for key in ("legalBasis", "reason"):
        if context.get(key) is not None and not isinstance(context[key], str):
            problems.type_error(f"context.{key}", "must be a string")
    problems.raise_if_any()
    assert runbook_id is not None
    value = fields.data.get("input")
    return StartRequest(runbook_id, version, {} if value is None else value, dict(context))


@attrs.frozen
class ControlRequest:
    reason: str | None


def control_request(body: Any, *, reason_required: bool = False) -> ControlRequest:
    problems = Problems()
    fields = Fields(body, problems, ("reason",))
    reason = fields.text("reason", required=reason_required)
    problems.raise_if_any()
    return ControlRequest(reason)


@attrs.frozen
class ApprovalRequest:
    decision: str
    comment: str | None


def approval_request(body: Any) -> ApprovalRequest:
    problems = Problems()
    fields = Fields(body, problems, ("decision", "comment"))
    decision = fields.choice("decision", DECISIONS, required=True)
    comment = fields.text("comment")
    problems.raise_if_any()
    assert decision is not None
    return ApprovalRequest(decision, comment)


@attrs.frozen
class EventRequest:
    type: str
    correlation_key: str
    payload: Any


def event_request(body: Any) -> EventRequest:
    problems = Problems()
    fields = Fields(body, problems, ("type", "correlationKey", "payload"))
    event_type = fields.text("type", required=True, max_length=256)
    key = fields.text("correlationKey", required=True, max_length=1024)
    problems.raise_if_any()
    assert event_type is not None and key is not None
    return EventRequest(event_type, key, fields.data.get("payload"))


# ---------------------------------------------------------------------------- query parameters

class Query:
    """Typed query parameters; problems go to ``problems``."""

    def __init__(self, problems: Problems) -> None:
        self.problems = problems
        self.args = request.args

    def integer(self, name: str, low: int, high: int, default: int | None = None) -> int | None:
        raw = self.args.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            self.problems.type_error(name, f"must be an integer, got {raw[:50]!r}")
            return default
        if not low <= value <= high:
            self.problems.invalid(name, f"must be between {low} and {high}, got {value}")
            return default
        return value

    def text(self, name: str, max_length: int = 1024) -> str | None:
        raw: str | None = self.args.get(name)
        if raw is None or raw == "":
            return None
        if len(raw) > max_length:
            self.problems.invalid(name, f"at most {max_length} characters")
            return None
        return raw

    def choice(self, name: str, choices: tuple[str, ...]) -> str | None:
        raw = self.text(name)
        if raw is not None and raw not in choices:
            self.problems.invalid(name, f"must be one of {', '.join(choices)}, got {raw[:50]!r}")
            return None
        return raw

    def boolean(self, name: str) -> bool:
        raw = (self.args.get(name) or "").lower()
        if raw in ("", "false", "0"):
            return False
        if raw in ("true", "1"):
            return True
        self.problems.type_error(name, f"must be true or false, got {raw[:50]!r}")
        return False


@attrs.frozen
class PageQuery:
    limit: int
    cursor: str | None


def page_query(problems: Problems, default_limit: int = 50) -> PageQuery:
    query = Query(problems)
    limit = query.integer("limit", 1, 1000, default_limit)
    assert limit is not None
    return PageQuery(limit, query.text("cursor", 256))


@attrs.frozen
class ExecutionsQuery:
    page: PageQuery
    runbook_id: str | None
    status: str | None


def executions_query() -> ExecutionsQuery:
    problems = Problems()
    page = page_query(problems)
    query = Query(problems)
    result = ExecutionsQuery(page, query.text("runbookId", 128), query.choice("status", STATUSES))
    problems.raise_if_any()
    return result


@attrs.frozen
class LogsQuery:
    step_id: str | None
    level: str | None
    after: int | None
    limit: int


def logs_query() -> LogsQuery:
    problems = Problems()
    query = Query(problems)
    result = LogsQuery(
        step_id=query.text("stepId", 128),
        level=query.choice("level", LOG_LEVELS),
        after=query.integer("after", 0, 2**63 - 1),
        limit=query.integer("limit", 1, 1000, 1000) or 1000,
    )
    problems.raise_if_any()
    return result


def version_query() -> int | None:
    problems = Problems()
    version = Query(problems).integer("version", 1, MAX_VERSION)
    problems.raise_if_any()
    return version


def approvals_query() -> PageQuery:
    problems = Problems()
    page = page_query(problems)
    problems.raise_if_any()
    return page


def runbooks_page_query() -> PageQuery:
    problems = Problems()
    page = page_query(problems, default_limit=100)
    problems.raise_if_any()
    return page


def start_flags() -> tuple[bool, str | None]:
    """``?force=`` and the ``Idempotency-Key`` header of a start."""
    problems = Problems()
    force = Query(problems).boolean("force")
    key = request.headers.get("Idempotency-Key")
    if key is not None and (len(key) > 255 or not IDEMPOTENCY_KEY.fullmatch(key)):
        problems.invalid("Idempotency-Key", "must be 1 to 255 printable ASCII characters")
        key = None
    problems.raise_if_any()
    return force, key
