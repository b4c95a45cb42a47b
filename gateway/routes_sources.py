"""Views of event sources: ``POST /api/v1/hooks/{sourceId}`` (a signed webhook: the request
is authenticated by its signature, never by a bearer token), ``GET /api/v1/sources`` (the
tenant's sources with their counters) and ``GET /api/v1/sources/{sourceId}/audit`` (the
refusals of a source, oldest first)."""

from __future__ import annotations

from quart import Response, request

from gateway.auth import current_identity
from gateway.bodies import raw_body
from gateway.problems import ApiProblem
from gateway.shapes import audit_json, json_response, page_json
from gateway.state import state
from runtime.sources.manager import Sources

PROBLEM_JSON = "application/problem+json"


def _sources() -> Sources:
    sources = state().sources
    if sources is None:
        raise ApiProblem(404, "no event sources are configured (RUNBOOKS_SOURCES_FILE)")
    return sources


async def receive_hook(source_id: str) -> Response:
    sources = _sources()
    body = await raw_body()
    answer = await sources.hook(source_id, body, dict(request.headers.items()))
    if answer is None:
        raise ApiProblem(404, f"no webhook source {source_id!r}")
    response = json_response(answer.body, answer.status)
    if answer.status >= 400:
        response.content_type = PROBLEM_JSON
    if answer.retry_after_s is not None:
        response.headers["Retry-After"] = str(max(1, round(answer.retry_after_s)))
    return response


async def list_sources() -> Response:
    sources = state().sources
    items = sources.listing(current_identity().tenant) if sources is not None else []
    return json_response(page_json(items, None))


async def source_audit(source_id: str) -> Response:
    sources, tenant = _sources(), current_identity().tenant
    source = sources.source(source_id)
    if source is None or source.tenant != tenant:
        raise ApiProblem(404, f"source {source_id} not found")
    entries = await state().runtime.source_audit(tenant, source_id)
    return json_response(page_json((audit_json(entry) for entry in entries), None))
