"""The OpenAPI 3.1 document of the gateway, generated from the route table (``gateway.routes``).

The same table registers the routes, so the document cannot miss one. It describes the
running configuration: with a tokens file every ``/api/v1`` operation requires the bearer
scheme; in development mode it documents the ``X-User-Id``/``X-Tenant-Id`` headers instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gateway.auth import ID_HEADER, MAX_ID_LENGTH
from gateway.bodies import YAML_TYPES
from gateway.problems import PROBLEM_JSON
from gateway.routes import JSON, Param, Route
from gateway.schemas import SCHEMAS, ref
from runtime.model.wire import camel

VERSION = "0.1.0"
_DEV_HEADERS = (
    Param("X-User-Id", "header", {"type": "string", "maxLength": MAX_ID_LENGTH, "pattern": f"^{ID_HEADER.pattern}$"},
          "Development mode only: the calling user (default 'anonymous')."),
    Param("X-Tenant-Id", "header", {"type": "string", "maxLength": MAX_ID_LENGTH, "pattern": f"^{ID_HEADER.pattern}$"},
          "Development mode only: the calling tenant (default 'default')."),
)
_PROBLEM_DESCRIPTIONS = {
    400: "The request cannot be read (malformed JSON, not UTF-8, too deep, wrong types).",
    401: "Missing or invalid bearer token.",
    403: "The caller's roles do not allow this operation (x-required-role), or the caller is not an approver "
         "of the step.",
    404: "No such resource for this tenant.",
    409: "The state of the execution does not allow this; nothing changed.",
    413: "The body (or runbook document) is larger than 1 MiB.",
    415: "Unsupported content type.",
    422: "The request was read but refused; errors lists every problem.",
    429: "A per-tenant limit is reached (retained events); Retry-After says when room is expected.",
    500: "Internal error (logged).",
    503: "Not available right now.",
}


def build_openapi(routes: Iterable[Route], *, development_mode: bool) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.openapi_path, {})[route.method.lower()] = _operation(route, development_mode)
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "Runbooks gateway",
            "version": VERSION,
            "description": "REST API of the runbook engine. Errors are application/problem+json.",
        },
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "responses": {
                str(status): {"description": text, "content": {PROBLEM_JSON: {"schema": ref("Problem")}}}
                for status, text in _PROBLEM_DESCRIPTIONS.items()
            },
        },
    }
    if not development_mode:
        document["components"]["securitySchemes"] = {"bearerAuth": {"type": "http", "scheme": "bearer"}}
    return document


def _operation(route: Route, development_mode: bool) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": route.operation_id,
        "summary": route.summary,
        "tags": [route.tag],
        "parameters": [_path_param(name) for name in route.path_params
                       if not any(p.location == "path" and p.name == camel(name) for p in route.params)]
                      + [_param(p) for p in route.params],
        "responses": _responses(route),
    }
    if route.role is not None:
        operation["x-required-role"] = route.role
        operation["description"] = (f"Needs the role '{route.role}' (or admin; development mode: any caller)."
                                    if route.role != "viewer" else
                                    "Needs the role viewer, operator, author or admin (development mode: any caller).")
    if route.api and route.bearer:
        if development_mode:
            operation["parameters"] += [_param(p) for p in _DEV_HEADERS]
        else:
            operation["security"] = [{"bearerAuth": []}]
    if route.body is not None:
        media = [JSON, *YAML_TYPES] if route.yaml_body else [JSON]
        operation["requestBody"] = {
            "required": route.body_required,
            "content": {media_type: {"schema": ref(route.body)} for media_type in media},
        }
    return operation


def _path_param(name: str) -> dict[str, Any]:
    return {"name": camel(name), "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}


def _param(param: Param) -> dict[str, Any]:
    return {"name": param.name, "in": param.location, "required": param.required,
            "description": param.description, "schema": param.schema}


def _responses(route: Route) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status, answer in sorted(route.answers.items()):
        body: dict[str, Any] = {"description": answer.description}
        if answer.schema is not None:
            body["content"] = {answer.media_type: {"schema": ref(answer.schema)}}
        if answer.headers:
            body["headers"] = {name: {"schema": {"type": "string"}} for name in answer.headers}
        responses[str(status)] = body
    for status in route.problem_statuses():
        responses[str(status)] = {"$ref": f"#/components/responses/{status}"}
    return responses
