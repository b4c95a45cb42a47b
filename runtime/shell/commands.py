"""The answers to commands that crossed processes.

A command (``runtime.core.messages.Command``: a control operation, decision, step retry,
event or child's end) crosses to the process that owns its execution as a row of the
commands table and is applied there as the core message it is. ``CommandReply`` is its
reply token: the execution actor records the outcome (the execution as committed, a value,
or the refusal) in the same commit as the state, as ``outcome_of_*`` JSON, and ``decoded``
gives the caller on the other process exactly what the owner answered, the same exception
class included. A command read from the table reaches the actor as ``Queued`` (its id and
message); ``Applied`` holds the ids of the commands this process has applied, so a command
read twice (two deliveries that overlap, an actor that parked in between) is applied once.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import attrs

from runtime.core.messages import Message
from runtime.model import Execution
from runtime.model.errors import (
    Conflict,
    Forbidden,
    NotFound,
    Problem,
    RunbookError,
    SeparationOfDuties,
    StaleDigest,
    ValidationError,
)
from runtime.model.wire import from_json, to_json


@attrs.frozen(eq=False)
class CommandReply:
    """The reply token of a command from the commands table: answered by recording its outcome."""

    command_id: str


@attrs.frozen(eq=False)
class Queued:
    """A command of the commands table as its execution's actor receives it: applied once (by
    ``command_id``), its outcome recorded in the commit of the state it produced."""

    command_id: str
    message: Message


class Applied:
    """The ids of the latest commands applied here (their outcomes committed): a command that
    is read again from the table (a delivery that overlapped the one that applied it) is left
    out instead of being applied a second time."""

    def __init__(self, size: int = 10_000) -> None:
        self._size = size
        self._ids: OrderedDict[str, None] = OrderedDict()

    def add(self, command_ids: Iterable[str]) -> None:
        for command_id in command_ids:
            self._ids[command_id] = None
            self._ids.move_to_end(command_id)
        while len(self._ids) > self._size:
            self._ids.popitem(last=False)

    def __contains__(self, command_id: object) -> bool:
        return command_id in self._ids


def outcome_of_state(execution: Execution) -> dict[str, Any]:
    return {"ok": True, "execution": to_json(execution)}


def outcome_of_value(value: Any) -> dict[str, Any]:
    return {"ok": True, "value": value}


def outcome_of_error(error: Exception) -> dict[str, Any]:
    problems = [p.to_json() for p in error.problems] if isinstance(error, ValidationError) else []
    found = {"class": type(error).__name__, "message": str(error), "problems": problems,
             "title": getattr(error, "title", None)}
    if isinstance(error, StaleDigest):
        found["stale"] = {"stepId": error.step_id, "sent": error.sent, "current": error.current_digest}
    return {"ok": False, "error": found}


_ERRORS: dict[str, type[RunbookError]] = {"Conflict": Conflict, "NotFound": NotFound, "Forbidden": Forbidden,
                                          "SeparationOfDuties": SeparationOfDuties}


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
    stale = error.get("stale")
    if error.get("class") == "StaleDigest" and isinstance(stale, dict):
        raise StaleDigest(stale["stepId"], stale["sent"], stale["current"])
    raise _ERRORS.get(error.get("class", ""), RunbookError)(error.get("message", "refused by the owner"))
