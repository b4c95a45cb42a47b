"""Triggers of a runbook (its ``triggers:`` list): what they are, their checks, their due times.

Two kinds, each with an ``id`` unique in the runbook:

- a schedule ``{id, schedule: CRON, timezone: UTC, input, context, catchUp: latest|none}``:
  cron with 5 fields, or 6 with seconds first (``*/10 * * * * *``), in ``timezone`` (an IANA
  name). Due times come from croniter. Across a daylight-saving change a wall-clock time
  that does not exist (the skipped hour of spring) is due when the gap ends, and a
  wall-clock time that happens twice (the repeated hour of autumn) is due once, at its first
  occurrence;
- an event rule ``{id, event: {type, filter?}, input, context}``: every event of that type
  starts an execution; ``input`` is templated with ``event.type``, ``event.correlationKey``
  and ``event.payload``.

Bounds (``TriggerLimits``, from the settings): at most ``MAX_TRIGGERS_PER_RUNBOOK`` triggers
in a runbook, and no schedule whose due times come closer than ``MIN_SCHEDULE_INTERVAL_MS``
(looked for among its first ``GAP_SAMPLES`` due times after a fixed instant, so the answer
does not depend on when a document is validated).

This module is pure (no I/O, no clock): ``runtime.triggers.scheduler`` runs the triggers.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import attrs
from croniter import CroniterBadDateError, croniter

from runtime.language.conditions import condition_problems
from runtime.language.templates import template_paths, template_problems
from runtime.model.errors import Problem
from runtime.model.suggest import unknown_field

SCHEDULE, EVENT = "schedule", "event"
CATCH_UP = ("latest", "none")
_ID_CHARS = "[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_SCHEDULE_FIELDS = {"id", "schedule", "timezone", "input", "context", "catchUp", "description"}
_EVENT_FIELDS = {"id", "event", "input", "context", "description"}
GAP_SAMPLES = 64  # due times looked at for the shortest interval of a schedule
_GAP_FROM = datetime(2024, 1, 1, tzinfo=UTC)  # a Monday at midnight: where that look starts


@attrs.frozen
class TriggerLimits:
    """The bounds a runbook's triggers must keep (``Settings``)."""

    per_runbook: int = 20  # MAX_TRIGGERS_PER_RUNBOOK
    min_interval_ms: int = 1000  # MIN_SCHEDULE_INTERVAL_MS


TRIGGER_DEFAULTS = TriggerLimits()


@attrs.frozen
class Trigger:
    id: str
    kind: str  # SCHEDULE or EVENT
    input: Any = attrs.Factory(dict)
    context: dict[str, Any] = attrs.Factory(dict)
    schedule: str | None = None
    timezone: str = "UTC"
    catch_up: str = "latest"
    event_type: str | None = None
    filter: dict[str, Any] | None = None

    @classmethod
    def of(cls, raw: Mapping[str, Any]) -> Trigger:
        """A checked trigger (``check_triggers`` found nothing) as a value."""
        common = {"id": raw["id"], "input": raw.get("input", {}), "context": dict(raw.get("context") or {})}
        if "schedule" in raw:
            return cls(kind=SCHEDULE, schedule=raw["schedule"], timezone=raw.get("timezone", "UTC"),
                       catch_up=raw.get("catchUp", "latest"), **common)
        event = raw["event"]
        return cls(kind=EVENT, event_type=event["type"], filter=event.get("filter"), **common)

    # ------------------------------------------------------------------ due times
    def next_due(self, after: datetime) -> datetime:
        """The first due time strictly after ``after`` (a schedule), in UTC."""
        assert self.schedule is not None
        zone = ZoneInfo(self.timezone)
        it = croniter(self.schedule, after.astimezone(zone), second_at_beginning=_has_seconds(self.schedule))
        while True:
            due: datetime = it.get_next(datetime)
            if not _repeated(due, zone):
                return due.astimezone(UTC)

    def last_due(self, at: datetime) -> datetime:
        """The latest due time at or before ``at``, in UTC."""
        assert self.schedule is not None
        zone = ZoneInfo(self.timezone)
        if self.next_due(at - timedelta(microseconds=1)) == at:
            return at.astimezone(UTC)
        it = croniter(self.schedule, at.astimezone(zone), second_at_beginning=_has_seconds(self.schedule))
        while True:
            due: datetime = it.get_prev(datetime)
            if not _repeated(due, zone):
                return due.astimezone(UTC)


def _has_seconds(expression: str) -> bool:
    return len(expression.split()) == 6


def _repeated(due: datetime, zone: ZoneInfo) -> bool:
    """Whether ``due`` is the second occurrence of a wall-clock time (autumn's repeated hour)."""
    first = due.replace(tzinfo=None).replace(tzinfo=zone, fold=0)
    return first.utcoffset() != due.utcoffset()


def rfc3339(at: datetime) -> str:
    """A due time as it appears in idempotency keys and ``context.trigger.at``."""
    text = at.astimezone(UTC).isoformat(timespec="milliseconds" if at.microsecond else "seconds")
    return text.replace("+00:00", "Z")


def triggers_of(document: Mapping[str, Any]) -> list[Trigger]:
    """The triggers of a valid runbook document."""
    raw = document.get("triggers") or []
    return [Trigger.of(item) for item in raw]


# ---------------------------------------------------------------------- validation


def check_triggers(value: Any, path: str = "triggers", limits: TriggerLimits = TRIGGER_DEFAULTS) -> list[Problem]:
    """Every problem of a ``triggers`` list, each with its path."""
    if not isinstance(value, list):
        return [Problem(path, "must be a list of triggers")]
    problems: list[Problem] = []
    if len(value) > limits.per_runbook:
        problems.append(Problem(path, f"at most {limits.per_runbook} triggers in a runbook "
                                      f"(MAX_TRIGGERS_PER_RUNBOOK); found {len(value)}"))
    seen: set[str] = set()
    for index, item in enumerate(value):
        where = f"{path}[{index}]"
        if not isinstance(item, Mapping):
            problems.append(Problem(where, "a trigger must be a mapping (object)"))
            continue
        problems += _check_id(item.get("id"), where, seen)
        if ("schedule" in item) == ("event" in item):
            problems.append(Problem(where, "a trigger has either 'schedule' or 'event'"))
            continue
        problems += _check_schedule(item, where, limits) if "schedule" in item else _check_event(item, where)
        if "context" in item and not isinstance(item["context"], Mapping):
            problems.append(Problem(f"{where}.context", "must be a mapping (object)"))
    return problems


def _check_id(trigger_id: Any, where: str, seen: set[str]) -> list[Problem]:
    import re

    if not isinstance(trigger_id, str) or not re.fullmatch(_ID_CHARS, trigger_id):
        return [Problem(f"{where}.id", f"required: a string matching {_ID_CHARS}")]
    if trigger_id in seen:
        return [Problem(f"{where}.id", f"duplicate trigger id '{trigger_id}'")]
    seen.add(trigger_id)
    return []


def _check_schedule(item: Mapping[str, Any], where: str, limits: TriggerLimits) -> list[Problem]:
    problems = [unknown_field(where, k, _SCHEDULE_FIELDS) for k in item if k not in _SCHEDULE_FIELDS]
    expression = item["schedule"]
    zone = item.get("timezone", "UTC")
    valid_zone = isinstance(zone, str) and _zone_exists(zone)
    if not isinstance(expression, str) or len(expression.split()) not in (5, 6):
        problems.append(Problem(f"{where}.schedule", "must be a cron expression of 5 fields, or 6 with seconds first"))
    elif not croniter.is_valid(expression, second_at_beginning=_has_seconds(expression)):
        problems.append(Problem(f"{where}.schedule", f"not a valid cron expression: '{expression}'"))
    elif valid_zone:
        problems += _check_interval(expression, str(zone), f"{where}.schedule", limits)
    if not valid_zone:
        problems.append(Problem(f"{where}.timezone", f"unknown time zone {zone!r} (an IANA name: Europe/Berlin)"))
    if item.get("catchUp", "latest") not in CATCH_UP:
        problems.append(Problem(f"{where}.catchUp", "must be 'latest' or 'none'"))
    if template_paths(item.get("input")):
        problems.append(Problem(f"{where}.input", "a schedule's input is not templated"))
    return problems


def _check_interval(expression: str, zone: str, path: str, limits: TriggerLimits) -> list[Problem]:
    try:
        gap = shortest_gap_ms(expression, zone)
    except CroniterBadDateError:
        return [Problem(path, f"'{expression}' is never due (no such date)")]
    if gap >= limits.min_interval_ms:
        return []
    return [Problem(path, f"due times only {gap} ms apart; a schedule's due times are at least "
                          f"{limits.min_interval_ms} ms apart (MIN_SCHEDULE_INTERVAL_MS)")]


def shortest_gap_ms(expression: str, zone: str) -> int:
    """The shortest time between two consecutive due times among the schedule's first
    ``GAP_SAMPLES`` after a fixed instant, in milliseconds (``CroniterBadDateError``: it is
    never due, as on February 30)."""
    it = croniter(expression, _GAP_FROM.astimezone(ZoneInfo(zone)), second_at_beginning=_has_seconds(expression))
    times = [it.get_next(float) for _ in range(GAP_SAMPLES)]
    return min(round((later - earlier) * 1000) for earlier, later in itertools.pairwise(times))


def _zone_exists(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _check_event(item: Mapping[str, Any], where: str) -> list[Problem]:
    problems = [unknown_field(where, k, _EVENT_FIELDS) for k in item if k not in _EVENT_FIELDS]
    event = item["event"]
    if not isinstance(event, Mapping):
        return [*problems, Problem(f"{where}.event", "must be a mapping {type, filter}")]
    problems += [unknown_field(f"{where}.event", k, ("type", "filter")) for k in event if k not in ("type", "filter")]
    if not isinstance(event.get("type"), str) or not event["type"].strip():
        problems.append(Problem(f"{where}.event.type", "required: the event type"))
    if "filter" in event:
        problems += condition_problems(event["filter"], f"{where}.event.filter")
    problems += template_problems(item.get("input"), f"{where}.input")
    for ref in template_paths(item.get("input")):
        if ref.split(".")[0] != "event":
            problems.append(Problem(f"{where}.input", f"'${{{ref}}}': an event rule's input sees only "
                                                      "event.type, event.correlationKey and event.payload"))
    return problems
