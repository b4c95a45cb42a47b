"""``runbooks run FILE --trigger ID [--event JSON]``: one execution started by hand as one of the
runbook's triggers would start it now.

A runbook that starts itself reads what its trigger gives it: the trigger's ``input`` (an event
rule's rendered from the event) and ``context``, and ``context.trigger = {kind, id, at}``. Run
by hand without them, such a runbook fails on its first template that reads them; with
``--trigger`` it gets the same values, ``at`` being now. An event rule needs ``--event
'{"correlationKey": ..., "payload": {...}}'`` (its ``type`` is the rule's), which must pass the
rule's filter, as a published event would. ``--input`` then replaces the trigger's input and
``--context`` is laid over the trigger's context. The execution's user stays ``cli``: a person
started it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from runtime.documents.triggers import EVENT, Trigger, rfc3339, triggers_of
from runtime.language.conditions import evaluate
from runtime.language.templates import TemplateError, render

__all__ = ["TriggerRunError", "trigger_hint", "trigger_start"]


class TriggerRunError(ValueError):
    """``--trigger``/``--event`` cannot start the execution (one line: a usage error)."""


def trigger_start(document: Mapping[str, Any], trigger_id: str, event: dict[str, Any] | None,
                  now: datetime) -> tuple[Any, dict[str, Any]]:
    """The input and context that trigger ``trigger_id`` of ``document`` would start an execution with at ``now``."""
    trigger = _trigger(document, trigger_id)
    context = {**trigger.context, "trigger": {"kind": trigger.kind, "id": trigger.id, "at": rfc3339(now)}}
    if trigger.kind != EVENT:
        if event is not None:
            raise TriggerRunError(f"--event: trigger {trigger.id} is a schedule, not an event rule")
        return trigger.input, context
    return _event_input(trigger, event), context


def trigger_hint(triggers: list[dict[str, Any]]) -> str:
    """What to add when a runbook with triggers failed run by hand (empty without triggers)."""
    if not triggers:
        return ""
    names = " or ".join(f"`--trigger {item['id']}`" for item in triggers)
    return f" (this runbook is started by its triggers: {names} runs it as the trigger would now)"


def _trigger(document: Mapping[str, Any], trigger_id: str) -> Trigger:
    found = {trigger.id: trigger for trigger in triggers_of(document)}
    if trigger_id not in found:
        known = ", ".join(sorted(found)) or "none"
        raise TriggerRunError(f"--trigger: the runbook has no trigger {trigger_id!r} (its triggers: {known})")
    return found[trigger_id]


def _event_input(trigger: Trigger, event: dict[str, Any] | None) -> Any:
    if event is None:
        raise TriggerRunError(f"--trigger {trigger.id} is an event rule: give the event with "
                         "--event '{\"correlationKey\": ..., \"payload\": {...}}'")
    scope = {"type": trigger.event_type, "correlationKey": event.get("correlationKey"),
             "payload": event.get("payload")}
    if trigger.filter is not None and not evaluate(trigger.filter, scope):
        raise TriggerRunError(f"--event: the event does not pass the filter of trigger {trigger.id}: it would start "
                         "nothing")
    try:
        return render(trigger.input, {"event": scope})
    except TemplateError as exc:
        raise TriggerRunError(f"--event: trigger {trigger.id} cannot make its input from it: {exc}") from None
