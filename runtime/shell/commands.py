"""Commands: a request to an execution as data, so it can cross to the process that owns it.

A control operation, decision, step retry or event for an execution is a ``(kind, body)``
pair (JSON); ``message`` turns it into the core message its execution applies. The outcome
(the execution as committed, a value, or the refusal) is ``outcome`` -> JSON -> ``decoded``:
the caller on another process gets exactly what the owner answered, the same exception
class included. ``CommandReply`` is the reply token of a command that came through the
database: the execution actor records its outcome in the same commit as the state.
"""

from __future__ import annotations

from typing import Any

import attrs

from runtime.core.messages import (
    Cancel,
    ChildFinished,
    DecideApproval,
    DeliverEvent,
    Message,
    Pause,
    Resume,
    RetryStep,
)
from runtime.model import Event, Execution, StepError
from runtime.model.errors import (
    Conflict,
    Forbidden,
    NotFound,
    Problem,
    RunbookError,
    ValidationError,
)
from runtime.model.wire import from_json, to_json


@attrs.frozen(eq=False)
class CommandReply:
    """The reply token of a command from the commands table: answered by recording its outcome."""

    command_id: str


def message(kind: str, body: dict[str, Any], reply: Any) -> Message:
    """The core message of a command."""
    if kind == "pause":
        return Pause(body["actor"], body.get("reason"), reply)
    if kind == "resume":
        return Resume(body["actor"], body.get("reason"), reply)
    if kind == "cancel":
        return Cancel(body["actor"], body["reason"], reply)
    if kind == "approve":
        return DecideApproval(body["stepId"], body["approver"], body["decision"], body.get("comment"), reply,
                              frozenset(body.get("roles") or ()))
    if kind == "retry":
        return RetryStep(body["stepId"], body["actor"], body.get("reason"), reply)
    if kind == "event":
        return DeliverEvent(body["stepId"], from_json(body["event"], Event), reply)
    if kind == "child_finished":
        error = from_json(body["error"], StepError) if body.get("error") else None
        return ChildFinished(body["stepId"], body["childId"], body["status"], body.get("output"), error)
    raise ValueError(f"unknown command kind {kind!r}")


def outcome_of_state(execution: Execution) -> dict[str, Any]:
    return {"ok": True, "execution": to_json(execution)}


def outcome_of_value(value: Any) -> dict[str, Any]:
    return {"ok": True, "value": value}


def outcome_of_error(error: Exception) -> dict[str, Any]:
    problems = [p.to_json() for p in error.problems] if isinstance(error, ValidationError) else []
    return {"ok": False, "error": {"class": type(error).__name__, "message": str(error), "problems": problems,
                                   "title": getattr(error, "title", None)}}


_ERRORS: dict[str, type[RunbookError]] = {"Conflict": Conflict, "NotFound": NotFound, "Forbidden": Forbidden}


def decoded(outcome: dict[str, Any]) -> Any:
    """The answer a command's outcome records: an Execution, a value, or its error raised."""
    if outcome.get("ok"):
        if "execution" in outcome:
            return from_json(outcome["execution"], Execution)
        return outcome.get("value")
    error = outcome.get("error") or {}
    if error.get("class") == "ValidationError":
        problems = [Problem(p["path"], p["message"]) for p in error.get("problems") or []]
        raise ValidationError(problems, title=error.get("title") or "invalid")
    raise _ERRORS.get(error.get("class", ""), RunbookError)(error.get("message", "refused by the owner"))
