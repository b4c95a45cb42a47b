"""The checks of the embedded API's arguments: what a caller hands ``Runtime`` is refused with a
``ValidationError`` naming the argument before it can reach an actor or the store.

Every value an API call carries ends up in a store row: JSON values (input, context, event
payloads) in JSON columns, texts (reasons, comments, legal bases, actors, event types and
keys, tenants) in text columns. A value the store cannot encode (a lone surrogate), a NUL
character (PostgreSQL text cannot hold one), a type the column does not take, or a number
past what the clock or the database holds would make the commit fail; the execution's actor
would then crash over a request that was simply bad. So each public method of ``Runtime``
calls one function here first, and the gateway relies on the same rules.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from runtime.kinds.approval_rules import DECISIONS
from runtime.model.errors import Problem, ValidationError
from runtime.model.jsonsafe import first_problem
from runtime.model.limits import MAX_SEQ, MAX_VERSION, is_int

__all__ = [
    "check_approval", "check_control", "check_delegation", "check_erasure", "check_event", "check_ids", "check_listing", "check_logs", "check_lookup",
    "check_runbook_lookup", "check_start", "check_tenant", "text_problem",
]

MAX_ID: Final = 256
MAX_TEXT: Final = 10_000
MAX_NAME: Final = 200  # users, tenants, roles
MAX_EVENT_TYPE: Final = 256
MAX_CORRELATION_KEY: Final = 1024
MAX_IDEMPOTENCY_KEY: Final = 255
DIGEST: Final = re.compile(r"[0-9a-f]{64}")


def text_problem(value: Any, max_length: int = MAX_TEXT) -> str | None:
    """Why ``value`` cannot be stored as text, or None."""
    if not isinstance(value, str):
        return f"must be a string, not {type(value).__name__}"
    if len(value) > max_length:
        return f"at most {max_length} characters"
    if "\x00" in value:
        return "must not contain NUL characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "cannot be encoded as UTF-8 (a lone surrogate)"
    return None


class _Problems:
    def __init__(self) -> None:
        self.items: list[Problem] = []

    def text(self, path: str, value: Any, *, optional: bool = True, max_length: int = MAX_TEXT) -> None:
        if value is None and optional:
            return
        problem = "required" if value is None else text_problem(value, max_length)
        if problem is not None:
            self.items.append(Problem(path, problem))

    def json(self, path: str, value: Any) -> None:
        problem = first_problem(value, path)
        if problem is not None:
            self.items.append(Problem(problem.path, f"not JSON: {problem.message}"))

    def integer(self, path: str, value: Any, low: int, high: int) -> None:
        if value is not None and (not is_int(value) or not low <= value <= high):
            self.items.append(Problem(path, f"must be an integer from {low} to {high}"))

    def choice(self, path: str, value: Any, allowed: Sequence[str]) -> None:
        """``value`` (required) is one of ``allowed``."""
        if not isinstance(value, str) or value not in allowed:
            self.items.append(Problem(path, f"must be {' or '.join(repr(a) for a in allowed)}"))

    def flag(self, path: str, value: Any) -> None:
        if not isinstance(value, bool):
            self.items.append(Problem(path, "must be True or False"))

    def raise_if_any(self, title: str = "invalid arguments") -> None:
        if self.items:
            raise ValidationError(self.items, title=title)


def check_ids(**ids: Any) -> None:
    """Execution, step and runbook ids given to a lookup or a control operation."""
    problems = _Problems()
    for name, value in ids.items():
        problems.text(name, value, optional=False, max_length=MAX_ID)
    problems.raise_if_any()


def check_lookup(execution_id: Any, tenant_id: Any) -> None:
    """get, fetch, evidence, audit, wait, watch."""
    problems = _Problems()
    problems.text("execution_id", execution_id, optional=False, max_length=MAX_ID)
    problems.text("tenant_id", tenant_id, max_length=MAX_NAME)
    problems.raise_if_any()


def check_tenant(tenant_id: Any, *, optional: bool = True) -> None:
    problems = _Problems()
    problems.text("tenant_id", tenant_id, optional=optional, max_length=MAX_NAME)
    problems.raise_if_any()


def check_runbook_lookup(runbook_id: Any, version: Any, tenant_id: Any) -> None:
    problems = _Problems()
    problems.text("runbook_id", runbook_id, optional=False, max_length=MAX_ID)
    problems.integer("version", version, 1, MAX_VERSION)
    problems.text("tenant_id", tenant_id, max_length=MAX_NAME)
    problems.raise_if_any()


def check_start(runbook_id: Any, input: Any, context: Any, version: Any, idempotency_key: Any,
                force: Any, actor: Any = None, reason: Any = None) -> None:
    """A start (or a replay's start): every field, each problem with its path."""
    problems = _Problems()
    problems.text("runbook_id", runbook_id, optional=False, max_length=MAX_ID)
    problems.json("input", input)
    if context is not None and not isinstance(context, Mapping):
        problems.items.append(Problem("context", "must be a mapping"))
    elif context is not None:
        problems.json("context", dict(context))
        _context_texts(problems, context)
    problems.integer("version", version, 1, MAX_VERSION)
    problems.text("idempotency_key", idempotency_key, max_length=MAX_IDEMPOTENCY_KEY)
    problems.flag("force", force)
    problems.text("actor", actor, max_length=MAX_NAME)
    problems.text("reason", reason)
    problems.raise_if_any("start refused")


def _context_texts(problems: _Problems, context: Mapping[Any, Any]) -> None:
    """The context fields that land in text columns (the audit log, the tenant)."""
    for key, limit in (("tenantId", MAX_NAME), ("userId", MAX_NAME), ("legalBasis", MAX_TEXT),
                       ("reason", MAX_TEXT)):
        if context.get(key) is not None:
            problems.text(f"context.{key}", context[key], max_length=limit)


def check_control(execution_id: Any, reason: Any, actor: Any, tenant_id: Any, *,
                  step_id: Any = None) -> None:
    """pause, resume, cancel, retry_step, replay."""
    problems = _Problems()
    problems.text("execution_id", execution_id, optional=False, max_length=MAX_ID)
    if step_id is not None:
        problems.text("step_id", step_id, max_length=MAX_ID)
    problems.text("reason", reason)
    problems.text("actor", actor, max_length=MAX_NAME)
    problems.text("tenant_id", tenant_id, max_length=MAX_NAME)
    problems.raise_if_any()


def check_approval(execution_id: Any, step_id: Any, approver: Any, decision: Any, comment: Any,
                   tenant_id: Any, roles: Any, digest: Any = None) -> None:
    """submit_approval: the decision's own fields (who may decide, and when, is the
    execution's rule: ``runtime.kinds.approval_rules.check_decision``)."""
    problems = _Problems()
    problems.text("execution_id", execution_id, optional=False, max_length=MAX_ID)
    problems.text("step_id", step_id, optional=False, max_length=MAX_ID)
    problems.text("approver", approver, optional=False, max_length=MAX_NAME)
    problems.choice("decision", decision, DECISIONS)
    problems.text("comment", comment)
    problems.text("tenant_id", tenant_id, max_length=MAX_NAME)
    _roles(problems, roles)
    if digest is not None and not (isinstance(digest, str) and DIGEST.fullmatch(digest)):
        problems.items.append(Problem("digest", "must be a SHA-256 digest: 64 lowercase hex digits"))
    problems.raise_if_any()


def check_erasure(tenant_id: Any, seq: Any, actor: Any, reason: Any) -> None:
    """erase_audit_data: which entry (a seq of the tenant's chain), who, and why."""
    problems = _Problems()
    problems.text("tenant_id", tenant_id, optional=False, max_length=MAX_NAME)
    if seq is None:
        problems.items.append(Problem("seq", "required"))
    problems.integer("seq", seq, 1, MAX_SEQ)
    problems.text("actor", actor, optional=False, max_length=MAX_NAME)
    problems.text("reason", reason)
    problems.raise_if_any()


def check_delegation(execution_id: Any, step_id: Any, delegator: Any, to: Any, reason: Any,
                     tenant_id: Any, roles: Any) -> None:
    """delegate_approval: the request's own fields (whether the delegator may hand the vote
    on is the execution's rule: ``runtime.kinds.approval_rules.check_delegation``)."""
    problems = _Problems()
    problems.text("execution_id", execution_id, optional=False, max_length=MAX_ID)
    problems.text("step_id", step_id, optional=False, max_length=MAX_ID)
    problems.text("delegator", delegator, optional=False, max_length=MAX_NAME)
    problems.text("to", to, optional=False, max_length=MAX_NAME)
    if isinstance(to, str) and (not to.strip() or to == "role:"):
        problems.items.append(Problem("to", "must name a user or role:NAME"))
    elif to == delegator:
        problems.items.append(Problem("to", "a vote cannot be delegated to oneself"))
    problems.text("reason", reason, optional=False)
    if isinstance(reason, str) and not reason.strip():
        problems.items.append(Problem("reason", "required: why the vote is handed on"))
    problems.text("tenant_id", tenant_id, max_length=MAX_NAME)
    _roles(problems, roles)
    problems.raise_if_any()


def _roles(problems: _Problems, roles: Any) -> None:
    if isinstance(roles, str) or not isinstance(roles, Iterable):
        problems.items.append(Problem("roles", "must be a collection of role names"))
        return
    for index, role in enumerate(roles):
        problems.text(f"roles[{index}]", role, optional=False, max_length=MAX_NAME)


def check_event(event_type: Any, correlation_key: Any, payload: Any, tenant_id: Any) -> None:
    problems = _Problems()
    problems.text("event_type", event_type, optional=False, max_length=MAX_EVENT_TYPE)
    if is_int(correlation_key) and correlation_key.bit_length() <= 64:  # taken as its text
        correlation_key = str(correlation_key)
    problems.text("correlation_key", correlation_key, optional=False, max_length=MAX_CORRELATION_KEY)
    problems.json("payload", payload)
    problems.text("tenant_id", tenant_id, optional=False, max_length=MAX_NAME)
    problems.raise_if_any("event refused")


def check_listing(tenant_id: Any, runbook_id: Any, status: Any, limit: Any, cursor: Any) -> None:
    problems = _Problems()
    problems.text("tenant_id", tenant_id, max_length=MAX_NAME)
    problems.text("runbook_id", runbook_id, max_length=MAX_ID)
    problems.text("status", status, max_length=MAX_NAME)
    problems.integer("limit", limit, 1, 1000)
    if limit is None:
        problems.items.append(Problem("limit", "must be an integer from 1 to 1000"))
    problems.text("cursor", cursor, max_length=MAX_ID)
    problems.raise_if_any()


def check_pending_approvals(user: Any, tenant_id: Any, roles: Any, limit: Any, cursor: Any) -> None:
    problems = _Problems()
    problems.text("user", user, optional=False, max_length=MAX_NAME)
    problems.text("tenant_id", tenant_id, max_length=MAX_NAME)
    _roles(problems, roles)
    problems.integer("limit", limit, 1, 1000)
    if limit is None:
        problems.items.append(Problem("limit", "must be an integer from 1 to 1000"))
    problems.text("cursor", cursor, max_length=MAX_ID)
    problems.raise_if_any()


def check_logs(execution_id: Any, step_id: Any, level: Any, after: Any, limit: Any, tenant_id: Any) -> None:
    problems = _Problems()
    problems.text("execution_id", execution_id, optional=False, max_length=MAX_ID)
    problems.text("step_id", step_id, max_length=MAX_ID)
    problems.text("level", level, max_length=MAX_NAME)
    problems.integer("after", after, 0, MAX_SEQ)
    problems.integer("limit", limit, 1, 100_000)
    problems.text("tenant_id", tenant_id, max_length=MAX_NAME)
    problems.raise_if_any()
