"""Views of ``/api/v1/runbooks``: register (JSON or YAML), validate, list, get, list executions.

Runbooks registered here belong to the caller's tenant; the shared ones come from
``RUNBOOKS_DIR``. The engine keeps no paginated runbook query, so the list is paginated
here over the (small, sorted by id) list the engine returns: the cursor is the last id.
"""

from __future__ import annotations

from quart import Response

from gateway import bodies, inputs
from gateway.auth import current_identity
from gateway.inputs import RESERVED_RUNBOOK_IDS
from gateway.problems import ApiProblem
from gateway.shapes import (
    execution_json,
    json_response,
    page_json,
    runbook_json,
    runbook_summary_json,
)
from gateway.state import state
from runtime import Problem, ValidationError
from runtime.documents.lines import with_lines


async def register_runbook() -> Response:
    document = await bodies.document_body()
    if document.get("id") in RESERVED_RUNBOOK_IDS:
        raise ApiProblem(422, f"the runbook id {document['id']!r} is reserved by this API",
                         [Problem("id", f"'{document['id']}' is reserved: GET /api/v1/runbooks/{document['id']} "
                                        "is another operation")])
    try:
        runbook = await state().runtime.register_runbook(document, tenant_id=current_identity().tenant)
    except ValidationError as error:  # each problem with the line of the text sent
        error.problems = with_lines(error.problems, await bodies.raw_body())
        raise
    location = f"/api/v1/runbooks/{runbook.id}?version={runbook.version}"
    return json_response({"id": runbook.id, "version": runbook.version}, 201, {"Location": location})


async def validate_runbook() -> Response:
    document = await bodies.document_body()
    problems = with_lines(state().runtime.validate_runbook(document), await bodies.raw_body())
    return json_response({"valid": not problems, "errors": [p.to_json() for p in problems]})


async def list_runbooks() -> Response:
    page = inputs.runbooks_page_query()
    runbooks = await state().runtime.list_runbooks(tenant_id=current_identity().tenant)
    after = [rb for rb in runbooks if page.cursor is None or rb.id > page.cursor]
    items = after[: page.limit]
    next_cursor = items[-1].id if len(after) > page.limit else None
    return json_response(page_json((runbook_summary_json(rb) for rb in items), next_cursor))


async def get_runbook(runbook_id: str) -> Response:
    version = inputs.version_query()
    runbook = await state().runtime.get_runbook(runbook_id, version, tenant_id=current_identity().tenant)
    return json_response(runbook_json(runbook))


async def list_runbook_executions(runbook_id: str) -> Response:
    query = inputs.executions_query()
    runtime, tenant = state().runtime, current_identity().tenant
    await runtime.get_runbook(runbook_id, tenant_id=tenant)  # 404 for a runbook this tenant cannot see
    page = await runtime.list_executions(tenant_id=tenant, runbook_id=runbook_id, status=query.status,
                                         limit=query.page.limit, cursor=query.page.cursor)
    return json_response(page_json((execution_json(ex) for ex in page.items), page.next_cursor))
