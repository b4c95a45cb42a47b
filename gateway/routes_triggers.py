"""Views of triggers: ``GET /api/v1/triggers`` (the tenant's triggers, by runbook and id),
``POST /api/v1/runbooks/{id}/triggers/{triggerId}/enable`` and ``/disable`` (audited; an
optional ``{reason}``), and ``GET .../triggers/{triggerId}/audit`` (who switched it, when)."""

from __future__ import annotations

from typing import Any

from quart import Response

from gateway import bodies, inputs
from gateway.auth import current_identity
from gateway.shapes import audit_json, json_response, page_json
from gateway.state import state
from runtime.model.wire import format_time
from runtime.triggers.scheduler import TriggerInfo


def trigger_json(info: TriggerInfo) -> dict[str, Any]:
    def time(value: Any) -> str | None:
        return format_time(value) if value is not None else None

    body: dict[str, Any] = {"runbookId": info.runbook_id, "triggerId": info.trigger_id, "kind": info.kind}
    if info.kind == "schedule":
        body |= {"schedule": info.schedule, "timezone": info.timezone}
    else:
        body["eventType"] = info.event_type
    return body | {"enabled": info.enabled, "nextRunAt": time(info.next_run_at), "lastRunAt": time(info.last_run_at),
                   "lastExecutionId": info.last_execution_id, "shared": info.shared}


async def list_triggers() -> Response:
    infos = await state().runtime.list_triggers(tenant_id=current_identity().tenant)
    return json_response(page_json((trigger_json(i) for i in infos), None))


async def enable_trigger(runbook_id: str, trigger_id: str) -> Response:
    return await _switch(runbook_id, trigger_id, True)


async def disable_trigger(runbook_id: str, trigger_id: str) -> Response:
    return await _switch(runbook_id, trigger_id, False)


async def _switch(runbook_id: str, trigger_id: str, enabled: bool) -> Response:
    control = inputs.control_request(await bodies.json_body(required=False))
    identity = current_identity()
    runtime = state().runtime
    switch = runtime.enable_trigger if enabled else runtime.disable_trigger
    info = await switch(runbook_id, trigger_id, tenant_id=identity.tenant, actor=identity.user, reason=control.reason)
    return json_response(trigger_json(info))


async def trigger_audit(runbook_id: str, trigger_id: str) -> Response:
    entries = await state().runtime.trigger_audit(runbook_id, trigger_id, tenant_id=current_identity().tenant)
    return json_response(page_json((audit_json(e) for e in entries), None))
