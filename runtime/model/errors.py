"""The engine's exceptions: one base, a shallow tree, each with a stable ``code``.

    RunbookError
    ├── ValidationError   a document, an input or a request has problems (.problems)
    ├── NotFound          no such runbook, execution or step (for this tenant)
    ├── Conflict          the state does not allow the operation; nothing changed
    │   └── StaleDigest   a decision made on what an approval step no longer shows
    ├── Forbidden         the caller may not do this (approver not allowed)
    │   └── SeparationOfDuties  four eyes: the starter, or who decided already, may not decide
    ├── StepFailed        raised by an executor: the step's attempt failed
    ├── StoreUnavailable  the store cannot be reached (commits are retried)
    ├── StoreInUse        another process uses this SQLite file
    ├── Fenced            this process no longer owns the execution it tried to write
    ├── CommandQueued     forwarded to the owner, which did not answer in time: applied later
    ├── LimitExceeded     a per-tenant limit is reached (retained events); nothing changed
    │   └── FanoutLimit   a child execution would pass MAX_DESCENDANTS or its tenant's cap
    └── LoopDetected      a start or an event came through more engine hops than MAX_HOPS

The gateway maps ``code`` to an HTTP status; the Python API raises these as they are.
"""

from __future__ import annotations

from typing import Any

import attrs


@attrs.frozen
class Problem:
    """One problem of a document or request: where (a JSON-path-like string) and what; for a
    runbook document also the id of the step it is in and the line of the text it was read
    from, when known."""

    path: str
    message: str
    step_id: str | None = None
    line: int | None = None

    def to_json(self) -> dict[str, Any]:
        found: dict[str, Any] = {"path": self.path, "message": self.message}
        if self.step_id is not None:
            found["stepId"] = self.step_id
        if self.line is not None:
            found["line"] = self.line
        return found


SHOWN_IN_MESSAGE = 5  # problems named in a ValidationError's message (``.problems`` has every one)


class RunbookError(Exception):
    """Base of every error the engine raises on purpose."""

    code = "runbookError"


class ValidationError(RunbookError):
    """A document, an input or a request has problems; ``problems`` lists every one."""

    code = "validationError"

    def __init__(self, problems: list[Problem] | list[dict[str, str]], title: str = "invalid") -> None:
        self.problems: list[Problem] = [
            p if isinstance(p, Problem) else Problem(p["path"], p["message"]) for p in problems
        ]
        self.title = title
        detail = "; ".join(f"{p.path}: {p.message}" for p in self.problems[:SHOWN_IN_MESSAGE])
        if len(self.problems) > SHOWN_IN_MESSAGE:
            detail += f"; and {len(self.problems) - SHOWN_IN_MESSAGE} more"
        super().__init__(f"{title}: {detail}" if detail else title)


class NotFound(RunbookError):
    """No such runbook, execution or step (or it belongs to another tenant)."""

    code = "notFound"


class Conflict(RunbookError):
    """The current state does not allow the operation; nothing was changed."""

    code = "conflict"


class StaleDigest(Conflict):
    """A decision carried the digest of an approval request that is not the current one."""

    code = "staleDigest"

    def __init__(self, step_id: str, sent: str, current: str) -> None:
        super().__init__(f"the decision was made on digest {sent} but step '{step_id}' now shows digest "
                         f"{current}: review what it shows and decide again")
        self.step_id = step_id
        self.sent = sent
        self.current_digest = current


class Forbidden(RunbookError):
    """The caller is not allowed to do this."""

    code = "forbidden"


class SeparationOfDuties(Forbidden):
    """Four eyes: who started the execution, or decided on the step already, may not decide."""

    code = "separationOfDuties"


class StoreUnavailable(RunbookError):
    """The store cannot be reached; commits are being retried."""

    code = "storeUnavailable"


class LimitExceeded(RunbookError):
    """A per-tenant limit is reached; nothing was changed. ``limit`` is the cap, ``setting``
    the configuration variable that sets it, ``retry_after_s`` when room is expected (the
    oldest retained event expires), if known."""

    code = "limitExceeded"

    def __init__(self, message: str, *, limit: int, setting: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.limit = limit
        self.setting = setting
        self.retry_after_s = retry_after_s


class FanoutLimit(LimitExceeded):
    """A child execution was not started: its root has ``MAX_DESCENDANTS`` executions under
    it already, or its tenant ``MAX_ACTIVE_DESCENDANTS_PER_TENANT`` unfinished children (the
    run-runbook step fails ``fanout_limit``)."""

    code = "fanoutLimit"


class QuotaExceeded(LimitExceeded):
    """A start refused by its tenant's quota (``RUNBOOKS_QUOTAS_FILE``, ``open_runtime(quotas=...)``):
    ``reason`` is ``maxActive`` (too many unfinished executions) or ``startsPerSecond`` (its
    start rate; ``retry_after_s`` says when the next start is allowed). Nothing was written."""

    code = "quotaExceeded"

    def __init__(self, message: str, *, tenant_id: str, reason: str, limit: float,
                 retry_after_s: float | None = None) -> None:
        super().__init__(message, limit=int(limit), setting="RUNBOOKS_QUOTAS_FILE", retry_after_s=retry_after_s)
        self.tenant_id = tenant_id
        self.reason = reason


def too_large(path: str, what: str, size: int, cap: int, setting: str) -> ValidationError:
    """The refusal of a value over a size cap (the gateway answers 413)."""
    error = ValidationError([Problem(path, f"{what} is {size} bytes as JSON, over the cap of {cap} ({setting})")],
                            title=f"{what} too large")
    error.code = "tooLarge"
    return error


def retained_bytes_full(tenant_id: str, cap: int, retry_after_s: float | None) -> LimitExceeded:
    """The refusal of an event that found no waiter and would take its tenant's retained events
    past ``cap`` bytes."""
    setting = "MAX_RETAINED_EVENT_BYTES_PER_TENANT"
    return LimitExceeded(
        f"tenant '{tenant_id}' would hold more than {cap} bytes of retained events that no step has "
        f"taken (the cap, {setting}); this event was neither delivered nor retained",
        limit=cap, setting=setting, retry_after_s=retry_after_s)


def retained_events_full(tenant_id: str, cap: int, retry_after_s: float | None) -> LimitExceeded:
    """The refusal of an event that found no waiter while its tenant holds ``cap`` retained events."""
    setting = "MAX_RETAINED_EVENTS_PER_TENANT"
    return LimitExceeded(
        f"tenant '{tenant_id}' already has {cap} retained events that no step has taken "
        f"(the cap, {setting}); this event was neither delivered nor retained",
        limit=cap, setting=setting, retry_after_s=retry_after_s)


class StepFailed(RunbookError):
    """Raised by an executor to fail the current attempt.

    ``retryable=False`` (the default) fails the step at once; ``True`` lets the step's
    retry policy try again. ``code`` is the step error code (``executor`` unless given),
    ``retry_after_s`` an optional server hint for the next delay.
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool = False,
        code: str = "executor",
        retry_after_s: float | None = None,
        data: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.error_code = code
        self.retry_after_s = retry_after_s
        self.data = data


class StoreInUse(RunbookError):
    """The store (a SQLite file) is in use by another live process: one process per file."""

    code = "storeInUse"


class Fenced(RunbookError):
    """A write of this process was refused: another process owns the execution now."""

    code = "fenced"

    def __init__(self, execution_ids: list[str]) -> None:
        super().__init__(f"execution {', '.join(execution_ids)} is owned by another process now; "
                         "this process's write was refused")
        self.execution_ids = execution_ids


class CommandQueued(RunbookError):
    """The command was handed to the execution's owner, which did not answer within
    FORWARD_WAIT_MS; it stays queued and is applied by whichever process runs the execution."""

    code = "queued"

    def __init__(self, command_id: str, execution_id: str) -> None:
        super().__init__(f"command {command_id} for execution {execution_id} is queued")
        self.command_id = command_id
        self.execution_id = execution_id


class LoopDetected(RunbookError):
    """A start or an event arrived with a hop count above ``MAX_HOPS``: runbooks calling the
    engine's own API (an event rule whose runbook publishes the event again) form a loop.
    Nothing was started or published."""

    code = "loop_detected"

    def __init__(self, hop: int, max_hops: int) -> None:
        super().__init__(f"this request is hop {hop} of a chain of runbooks calling the engine (X-Runbooks-Hop), "
                         f"above MAX_HOPS ({max_hops}): a loop; nothing was started or published")
        self.hop = hop
        self.max_hops = max_hops


def erased_already(seq: int) -> Conflict:
    """An erasure of a payload erased before (by this process or another)."""
    return Conflict(f"the payload of audit entry {seq} was erased already")
