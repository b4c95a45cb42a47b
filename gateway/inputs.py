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
from decimal import Decimal
from typing import Any

import attrs
from quart import request

from gateway.problems import ApiProblem, problems_detail
from runtime import Problem
from runtime.api.arguments import DIGEST, text_problem
from runtime.model import LOG_LEVELS, ExecutionStatus
from runtime.model.limits import MAX_SEQ, MAX_VERSION

DECISIONS = ("approve", "reject")
STATUSES = tuple(status.value for status in ExecutionStatus)
IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?")
#: What counts as blank, spelled out so that this check and the OpenAPI ``pattern`` (an ECMA
#: regex, whose ``\s`` differs from Python's) agree on every character.
BLANK_CHARS = "\t\n\v\f\r \x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
NON_BLANK = f"[^{BLANK_CHARS}]"
_NON_BLANK = re.compile(NON_BLANK)
#: The OpenAPI patterns of texts: no NUL (no text column of PostgreSQL holds one), and for
#: required texts at least one character that is not blank.
TEXT_PATTERN = r"^[^\x00]*$"
NON_BLANK_TEXT_PATTERN = rf"^[^\x00]*[^\x00{BLANK_CHARS}][^\x00]*$"
EXECUTION_CURSOR = re.compile(r"[0-9]{1,19}")  # the seq of the last item of the previous page
RUNBOOK_CURSOR = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # the id of the last runbook
RESERVED_RUNBOOK_IDS = ("validate",)  # /api/v1/runbooks/validate is an operation, not a runbook
_NUMBER = re.compile(r"[+-]?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?")


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
        raise ApiProblem(status, problems_detail(" with the request", self.items), self.items)


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
        return None if value is None else text_value(self.problems, name, value, required, max_length)

    def integer(self, name: str, low: int, high: int) -> int | None:
        """An integer field; ``7.0`` counts (JSON has numbers, and JSON Schema calls 7.0 an integer)."""
        value = self.data.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or (
                isinstance(value, float) and not value.is_integer()):
            self.problems.type_error(name, "must be an integer")
            return None
        if not low <= value <= high:
            self.problems.invalid(name, f"must be between {low} and {high}")
            return None
        return int(value)

    def choice(self, name: str, choices: tuple[str, ...], *, required: bool = False) -> str | None:
        value = self.text(name, required=required)
        if value is not None and value not in choices:
            self.problems.invalid(name, f"must be one of {', '.join(choices)}, got {value!r}")
            return None
        return value


def text_value(problems: Problems, name: str, value: str, required: bool, max_length: int) -> str | None:
    """The rules of every text a request carries (the stores' rules for text columns)."""
    if len(value) > max_length:
        problems.invalid(name, f"at most {max_length} characters")
        return None
    problem = text_problem(value, max_length)
    if problem is not None:
        problems.invalid(name, problem)
        return None
    if required and not _NON_BLANK.search(value):
        problems.invalid(name, "required (a non-empty string)")
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
    version = fields.integer("version", 1, MAX_VERSION)
    context = fields.get("context", dict, "an object") or {}
    for key in ("legalBasis", "reason"):
        if context.get(key) is not None and not isinstance(context[key], str):
            problems.type_error(f"context.{key}", "must be a string")
        elif context.get(key) is not None:
            text_value(problems, f"context.{key}", context[key], False, 10_000)
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
class ErasureRequest:
    seq: int
    reason: str


_SEQ = re.compile(r"[0-9]{1,19}")


def erasure_request(seq: str, body: Any) -> ErasureRequest:
    """``POST /api/v1/audit/{seq}/erase``: the seq in the path and a required ``reason``; every
    problem of the two is listed (422)."""
    problems = Problems()
    number = int(seq) if _SEQ.fullmatch(seq) else None
    if number is None or not 1 <= number <= MAX_SEQ:
        problems.invalid("seq", f"must be an integer from 1 to {MAX_SEQ} (the entry's seq), got {seq[:50]!r}")
    fields = Fields(body if body is not None else {}, problems, ("reason",))
    reason = fields.text("reason", required=True)
    problems.raise_if_any()
    assert number is not None and reason is not None
    return ErasureRequest(number, reason)


@attrs.frozen
class ApprovalRequest:
    decision: str
    comment: str | None
    digest: str | None  # of the approval request the approver was shown


def approval_request(body: Any) -> ApprovalRequest:
    problems = Problems()
    fields = Fields(body, problems, ("decision", "comment", "digest"))
    decision = fields.choice("decision", DECISIONS, required=True)
    comment = fields.text("comment")
    digest = fields.text("digest")
    if digest is not None and not DIGEST.fullmatch(digest):
        problems.invalid("digest", "must be a SHA-256 digest: 64 lowercase hex digits")
    problems.raise_if_any()
    assert decision is not None
    return ApprovalRequest(decision, comment, digest)


@attrs.frozen
class ByHandRequest:
    """A step completed (``complete``: with ``output``) or skipped by hand."""

    justification: str
    legal_basis: str | None
    output: Any = None
    evidence: Any = None


def by_hand_request(body: Any, *, complete: bool) -> ByHandRequest:
    problems = Problems()
    allowed = ("output", "justification", "evidence", "context") if complete else ("justification", "context")
    fields = Fields(body, problems, allowed)
    justification = fields.text("justification", required=True)
    context = fields.get("context", dict, "an object") or {}
    legal_basis = context.get("legalBasis")
    if legal_basis is not None and not isinstance(legal_basis, str):
        problems.type_error("context.legalBasis", "must be a string")
    elif legal_basis is not None:
        legal_basis = text_value(problems, "context.legalBasis", legal_basis, False, 10_000)
    if complete and "output" not in fields.data:
        problems.invalid("output", "required: what the step would have output (null is an output)")
    problems.raise_if_any()
    assert justification is not None
    return ByHandRequest(justification, legal_basis, fields.data.get("output"), fields.data.get("evidence"))


@attrs.frozen
class ForkRequest:
    from_step: str
    version: int | None
    input: Any  # MISSING_INPUT: the old execution's
    reason: str | None


def fork_request(body: Any, missing: Any) -> ForkRequest:
    problems = Problems()
    fields = Fields(body, problems, ("fromStep", "input", "version", "reason"))
    from_step = fields.text("fromStep", required=True, max_length=128)
    version = fields.integer("version", 1, MAX_VERSION)
    reason = fields.text("reason")
    problems.raise_if_any()
    assert from_step is not None
    return ForkRequest(from_step, version, fields.data["input"] if "input" in fields.data else missing, reason)


@attrs.frozen
class DelegationRequest:
    to: str
    reason: str


def delegation_request(body: Any) -> DelegationRequest:
    problems = Problems()
    fields = Fields(body, problems, ("to", "reason"))
    to = fields.text("to", required=True, max_length=200)
    reason = fields.text("reason", required=True)
    problems.raise_if_any()
    assert to is not None and reason is not None
    return DelegationRequest(to, reason)


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
    """Typed query parameters; problems go to ``problems``. A parameter given twice is a type
    problem (each is declared as one value), never silently the first of them."""

    def __init__(self, problems: Problems) -> None:
        self.problems = problems
        self.args = _SingleValues(request.args, problems)

    def integer(self, name: str, low: int, high: int, default: int | None = None) -> int | None:
        """An integer parameter: digits, or a number with an integral value (``7.0``, ``1e3``),
        since the OpenAPI document declares a JSON Schema integer, for which 7.0 is one."""
        raw = self.args.get(name)
        if raw is None:
            return default
        number = _integral(raw)  # an empty value is no integer either
        if number is None:
            self.problems.type_error(name, f"must be an integer, got {raw[:50]!r}")
            return default
        if not low <= number <= high:
            self.problems.invalid(name, f"must be between {low} and {high}, got {raw[:50]}")
            return default
        return int(number)

    def text(self, name: str, max_length: int = 1024, pattern: re.Pattern[str] | None = None) -> str | None:
        raw: str | None = self.args.get(name)
        if raw is None or raw == "":
            return None
        if text_value(self.problems, name, raw, False, max_length) is None:
            return None
        if pattern is not None and not pattern.fullmatch(raw):
            self.problems.invalid(name, "not a cursor returned by this API" if name == "cursor"
                                  else f"must match {pattern.pattern}")
            return None
        return raw

    def choice(self, name: str, choices: tuple[str, ...]) -> str | None:
        raw = self.args.get(name)
        if raw is not None and raw not in choices:
            self.problems.invalid(name, f"must be one of {', '.join(choices)}, got {raw[:50]!r}")
            return None
        return raw

    def boolean(self, name: str) -> bool:
        given = self.args.get(name)
        raw = "false" if given is None else given.lower()
        if raw in ("false", "0"):
            return False
        if raw in ("true", "1"):
            return True
        self.problems.type_error(name, f"must be true or false, got {raw[:50]!r}")
        return False


@attrs.frozen
class PageQuery:
    limit: int
    cursor: str | None


def page_query(problems: Problems, default_limit: int = 50, cursor: re.Pattern[str] = EXECUTION_CURSOR) -> PageQuery:
    query = Query(problems)
    limit = query.integer("limit", 1, 1000, default_limit)
    assert limit is not None
    return PageQuery(limit, query.text("cursor", 256, cursor))


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
        after=query.integer("after", 0, MAX_SEQ),
        limit=query.integer("limit", 1, 1000, 1000) or 1000,
    )
    problems.raise_if_any()
    return result


def step_query() -> str | None:
    problems = Problems()
    step_id = Query(problems).text("stepId", 128)
    problems.raise_if_any()
    return step_id


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
    page = page_query(problems, default_limit=100, cursor=RUNBOOK_CURSOR)
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


def hop_header() -> int:
    """``X-Runbooks-Hop``: how many runbooks calling the engine led to this request (0 without)."""
    raw = request.headers.get("X-Runbooks-Hop")
    if raw is None:
        return 0
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 9):
        problems = Problems()
        problems.type_error("X-Runbooks-Hop", "must be a whole number of hops, 0 to 999999999")
        problems.raise_if_any()
    return int(raw)


def _integral(raw: str) -> Decimal | None:
    """The value of a query number if it is an integer (``7``, ``7.0``, ``7e2``), else None."""
    if len(raw) > 64 or not _NUMBER.fullmatch(raw):
        return None
    number = Decimal(raw)
    if abs(number.adjusted()) > 40:  # far outside every bound: no need to make it exact
        return number if number.adjusted() > 0 else None
    return number if number == number.to_integral_value() else None


class _SingleValues:
    """``args.get(name)``, refusing a name that appears more than once."""

    def __init__(self, args: Any, problems: Problems) -> None:
        self._args = args
        self._problems = problems

    def get(self, name: str) -> str | None:
        values = self._args.getlist(name)
        if len(values) > 1:
            self._problems.type_error(name, f"given {len(values)} times; at most once")
            return None
        return values[0] if values else None
