"""From a message to an event: the body parsed, and the source's ``event`` templates rendered.

The scope the templates see: ``body`` (JSON when the bytes are JSON, the fields of a form
when they are ``application/x-www-form-urlencoded``, else the text), ``headers`` (names in
lower case) and ``message`` (a bus message's ``id``, ``subject``, ``stream``). A template
that does not resolve, or a type or key that is not text, makes the message unusable
(``Unmappable``): it is refused, never retried, since the same bytes fail the same way.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Mapping
from typing import Any

import attrs

from runtime.language.templates import TemplateError, render
from runtime.sources.config import PRESET_DELIVERY_IDS, Source


class Unmappable(Exception):
    """The message cannot become an event (``str(exc)`` says why)."""


@attrs.frozen
class Mapped:
    type: str
    key: str
    payload: Any
    delivery_id: str | None


def parse_body(data: bytes, content_type: str = "") -> Any:
    """The body as the templates see it."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise Unmappable("the body is not UTF-8") from None
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/x-www-form-urlencoded":
        return dict(urllib.parse.parse_qsl(text, keep_blank_values=True))
    try:
        return json.loads(text) if text.strip() else None
    except ValueError:
        return text


def map_event(source: Source, body: Any, headers: Mapping[str, str], message: Mapping[str, Any] | None = None,
              ) -> Mapped:
    """The event a message becomes, by the source's templates."""
    scope = {"body": body, "headers": dict(headers), "message": dict(message or {})}
    try:
        rendered = render({"type": source.event.type, "key": source.event.key, "payload": source.event.payload},
                          scope)
    except TemplateError as exc:
        raise Unmappable(str(exc)) from None
    event_type, key = rendered["type"], rendered["key"]
    if isinstance(key, int) and not isinstance(key, bool):
        key = str(key)
    if not isinstance(event_type, str) or not event_type or not isinstance(key, str) or not key:
        raise Unmappable("event.type and event.key must render to non-empty text")
    return Mapped(event_type, key, rendered["payload"], _delivery_id(source, scope))


def _delivery_id(source: Source, scope: Mapping[str, Any]) -> str | None:
    template = source.event.delivery_id
    if template is None and source.scheme is not None and source.scheme.preset is not None:
        template = PRESET_DELIVERY_IDS.get(source.scheme.preset)
    if template is None:
        return None
    try:
        value = render(template, scope)
    except TemplateError:
        if source.event.delivery_id is not None:  # (a preset's default may be absent: no id then)
            raise Unmappable(f"deliveryId {template!r} does not resolve") from None
        return None
    return None if value in (None, "") else str(value)
