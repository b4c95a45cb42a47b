"""``GET /api/v1/approvals``: the approval steps waiting for the calling user's decision,
across the unfinished executions of the caller's tenant (newest execution first)."""

from __future__ import annotations

from quart import Response

from gateway import inputs
from gateway.auth import current_identity
from gateway.shapes import json_response, page_json, pending_approval_json
from gateway.state import state


async def list_approvals() -> Response:
    query = inputs.approvals_query()
    identity = current_identity()
    page = await state().runtime.pending_approvals(identity.user, tenant_id=identity.tenant,
                                                   roles=identity.approver_roles(), limit=query.limit,
                                                   cursor=query.cursor)
    return json_response(page_json((pending_approval_json(item) for item in page.items), page.next_cursor))
