"""An inbound webhook request, from its raw bytes to the answer the sender gets.

``receive_hook`` checks the size, then the signature over the raw bytes (nothing is parsed
before), then answers Slack's URL verification challenge, maps the body to an event and
publishes it once (``Intake.publish``). The answer comes only after the event is
committed: 202 ``{delivered, retained, eventId, duplicate: false}``; a delivery id seen
before (within the source's ``keepMs``) is 200 ``{duplicate: true}``; a bad or stale
signature is 401 (nothing published, the refusal audited); a body that maps to no event is
422; a body over the source's ``maxBytes`` is 413; when the tenant's retained events are
full, 429. The route authenticates by signature alone: no bearer token is asked for.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from runtime.language.templates import TemplateError
from runtime.model.errors import LimitExceeded, StoreUnavailable
from runtime.sources.config import Source
from runtime.sources.intake import Intake
from runtime.sources.mapping import Unmappable, parse_body
from runtime.sources.signatures import Refused, verify


@attrs.frozen
class HookAnswer:
    status: int
    body: dict[str, Any]
    retry_after_s: float | None = None


async def receive_hook(intake: Intake, source: Source, body: bytes, headers: Mapping[str, str]) -> HookAnswer:
    """Answer one webhook request (``headers`` keyed in lower case)."""
    intake.arrived(source)
    if len(body) > source.max_bytes:
        intake.refuse(source, "too_large", f"a body of {len(body)} bytes (at most {source.max_bytes})")
        return HookAnswer(413, _problem(413, f"the body is larger than {source.max_bytes} bytes"))
    assert source.scheme is not None
    try:
        secrets = [intake.runtime.secrets.value(source.tenant, name) for name in source.secrets]
    except TemplateError as exc:
        return HookAnswer(503, _problem(503, f"source {source.id} is not ready: {exc.message}"))
    try:
        delivery_id = verify(source.scheme, secrets, body, headers, intake.runtime.now)
    except Refused as exc:
        intake.refuse(source, exc.kind, exc.reason, {"deliveryId": _id_header(source, headers)})
        return HookAnswer(401, _problem(401, f"signature refused: {exc.reason}"))
    return await _publish(intake, source, body, headers, delivery_id)


async def _publish(intake: Intake, source: Source, body: bytes, headers: Mapping[str, str],
                   delivery_id: str | None) -> HookAnswer:
    try:
        parsed = parse_body(body, headers.get("content-type", ""))
        if _slack_challenge(source, parsed):
            return HookAnswer(200, {"challenge": parsed["challenge"]})
        result = await intake.publish(source, parsed, headers, delivery_id=delivery_id)
    except Unmappable as exc:
        intake.refuse(source, "unmappable", str(exc))
        return HookAnswer(422, _problem(422, f"the body makes no event: {exc}"))
    except LimitExceeded as exc:
        return HookAnswer(429, _problem(429, str(exc)), exc.retry_after_s)
    except StoreUnavailable as exc:
        return HookAnswer(503, _problem(503, f"the store is unavailable: {exc}"))
    if result.duplicate:
        return HookAnswer(200, {"duplicate": True, "eventId": result.event_id})
    return HookAnswer(202, {"delivered": result.delivered, "retained": result.retained, "eventId": result.event_id,
                            "duplicate": False})


def _slack_challenge(source: Source, body: Any) -> bool:
    return (source.scheme is not None and source.scheme.preset == "slack" and isinstance(body, dict)
            and body.get("type") == "url_verification" and isinstance(body.get("challenge"), str))


def _id_header(source: Source, headers: Mapping[str, str]) -> str | None:
    header = source.scheme.id_header if source.scheme is not None else None
    value = headers.get(header) if header else None
    return value[:256] if value else None


def _problem(status: int, detail: str) -> dict[str, Any]:
    titles = {401: "unauthorized", 413: "payload too large", 422: "unprocessable", 429: "too many",
              503: "unavailable"}
    return {"type": "about:blank", "title": titles.get(status, "error"), "status": status, "detail": detail}
