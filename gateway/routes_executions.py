"""Views of ``/api/v1/executions`` and ``/api/v1/events``: start, read, control, records, stream.

Each view reads its request into a small value (``gateway.bodies``), makes one runtime
call with the caller's tenant, and answers with the public shape (``gateway.shapes``).
The tenant and the user of a start come from the identity, never from the body.
"""

from __future__ import annotations

from quart import Response, current_app, request

from gateway import bodies, inputs
from gateway.auth import current_identity
from gateway.problems import ApiProblem
from gateway.shapes import (
    audit_json,
    evidence_json,
    execution_json,
    explanation_json,
    json_response,
    log_json,
    page_json,
    publish_json,
)
from gateway.sse import HEADERS, last_event_id
from gateway.state import state
from runtime import Execution
from runtime.api.control import MISSING_INPUT


async def command_status(execution_id: str, command_id: str) -> Response:
    found = await state().runtime.command_status(execution_id, command_id, tenant_id=current_identity().tenant)
    body: dict[str, object] = {"commandId": found.command_id, "executionId": found.execution_id,
                               "status": found.status}
    if found.execution is not None:
        body["execution"] = execution_json(found.execution)
    elif found.status == "applied":
        body["value"] = found.value
    if found.error is not None:
        body["error"] = {"class": found.error[0], "message": found.error[1]}
    return json_response(body)


def _execution(execution: Execution, status: int = 200) -> Response:
    headers = {"Location": f"/api/v1/executions/{execution.id}"} if status == 201 else None
    return json_response(execution_json(execution), status, headers)


async def start_execution() -> Response:
    force, idempotency_key = inputs.start_flags()
    start = inputs.start_request(await bodies.json_body())
    identity = current_identity()
    context = {**start.context, "tenantId": identity.tenant, "userId": identity.user}
    result = await state().runtime.start_execution(start.runbook_id, start.input, context, version=start.version,
                                                   idempotency_key=idempotency_key, force=force,
                                                   hop=inputs.hop_header())
    return _execution(result.execution, 201 if result.created else 200)


async def list_executions() -> Response:
    query = inputs.executions_query()
    page = await state().runtime.list_executions(
        tenant_id=current_identity().tenant, runbook_id=query.runbook_id, status=query.status,
        limit=query.page.limit, cursor=query.page.cursor)
    return json_response(page_json((execution_json(ex) for ex in page.items), page.next_cursor))


async def get_execution(execution_id: str) -> Response:
    return _execution(await state().runtime.fetch(execution_id, tenant_id=current_identity().tenant))


async def pause_execution(execution_id: str) -> Response:
    control = inputs.control_request(await bodies.json_body(required=False))
    identity = current_identity()
    execution = await state().runtime.pause(execution_id, control.reason, actor=identity.user,
                                            tenant_id=identity.tenant)
    return _execution(execution)


async def resume_execution(execution_id: str) -> Response:
    control = inputs.control_request(await bodies.json_body(required=False))
    identity = current_identity()
    execution = await state().runtime.resume(execution_id, control.reason, actor=identity.user,
                                             tenant_id=identity.tenant)
    return _execution(execution)


async def cancel_execution(execution_id: str) -> Response:
    control = inputs.control_request(await bodies.json_body(required=False), reason_required=True)
    identity = current_identity()
    assert control.reason is not None
    execution = await state().runtime.cancel(execution_id, control.reason, actor=identity.user,
                                             tenant_id=identity.tenant)
    return _execution(execution)


async def retry_step(execution_id: str, step_id: str) -> Response:
    control = inputs.control_request(await bodies.json_body(required=False))
    identity = current_identity()
    execution = await state().runtime.retry_step(execution_id, step_id, actor=identity.user,
                                                 reason=control.reason, tenant_id=identity.tenant)
    return _execution(execution)


async def complete_step(execution_id: str, step_id: str) -> Response:
    done = inputs.by_hand_request(await bodies.json_body(), complete=True)
    identity = current_identity()
    execution = await state().runtime.complete_step(
        execution_id, step_id, output=done.output, justification=done.justification, evidence=done.evidence,
        legal_basis=done.legal_basis, actor=identity.user, tenant_id=identity.tenant)
    return _execution(execution)


async def skip_step(execution_id: str, step_id: str) -> Response:
    done = inputs.by_hand_request(await bodies.json_body(), complete=False)
    identity = current_identity()
    execution = await state().runtime.skip_step(execution_id, step_id, justification=done.justification,
                                                legal_basis=done.legal_basis, actor=identity.user,
                                                tenant_id=identity.tenant)
    return _execution(execution)


async def fork_execution(execution_id: str) -> Response:
    fork = inputs.fork_request(await bodies.json_body(), MISSING_INPUT)
    identity = current_identity()
    execution = await state().runtime.fork(execution_id, fork.from_step, input=fork.input, version=fork.version,
                                           actor=identity.user, reason=fork.reason, tenant_id=identity.tenant)
    return _execution(execution, 201)


async def replay_execution(execution_id: str) -> Response:
    control = inputs.control_request(await bodies.json_body(required=False))
    identity = current_identity()
    execution = await state().runtime.replay(execution_id, actor=identity.user, reason=control.reason,
                                             tenant_id=identity.tenant)
    return _execution(execution, 201)


async def submit_approval(execution_id: str, step_id: str) -> Response:
    decision = inputs.approval_request(await bodies.json_body())
    identity = current_identity()
    execution = await state().runtime.submit_approval(
        execution_id, step_id, approver=identity.user, decision=decision.decision, comment=decision.comment,
        tenant_id=identity.tenant, roles=identity.approver_roles(), digest=decision.digest)
    return _execution(execution)


async def delegate_approval(execution_id: str, step_id: str) -> Response:
    delegation = inputs.delegation_request(await bodies.json_body())
    identity = current_identity()
    execution = await state().runtime.delegate_approval(
        execution_id, step_id, delegator=identity.user, to=delegation.to, reason=delegation.reason,
        tenant_id=identity.tenant, roles=identity.approver_roles())
    return _execution(execution)


async def publish_event() -> Response:
    event = inputs.event_request(await bodies.json_body())
    result = await state().runtime.publish_event(event.type, event.correlation_key, event.payload,
                                                 tenant_id=current_identity().tenant, hop=inputs.hop_header())
    return json_response(publish_json(result), 202)


async def execution_logs(execution_id: str) -> Response:
    query = inputs.logs_query()
    entries = await state().runtime.logs(execution_id, step_id=query.step_id, level=query.level, after=query.after,
                                         limit=query.limit, tenant_id=current_identity().tenant)
    next_cursor = str(entries[-1].seq) if len(entries) == query.limit else None
    return json_response(page_json((log_json(entry) for entry in entries), next_cursor))


async def execution_evidence(execution_id: str) -> Response:
    items = await state().runtime.evidence(execution_id, tenant_id=current_identity().tenant)
    return json_response(page_json((evidence_json(item) for item in items), None))


async def execution_audit(execution_id: str) -> Response:
    entries = await state().runtime.audit(execution_id, tenant_id=current_identity().tenant)
    return json_response(page_json((audit_json(entry) for entry in entries), None))


async def explain_execution(execution_id: str) -> Response:
    items = await state().runtime.explain(execution_id, step_id=inputs.step_query(),
                                          tenant_id=current_identity().tenant)
    return json_response({"items": [explanation_json(item) for item in items]})


async def stream_execution(execution_id: str) -> Response:
    gateway, tenant = state(), current_identity().tenant
    await gateway.runtime.fetch(execution_id, tenant_id=tenant)  # 404 before the stream starts
    if request.method == "HEAD":
        return Response("", status=200, content_type="text/event-stream", headers=HEADERS)
    nursery = getattr(current_app, "nursery", None)
    try:
        if nursery is None:
            raise RuntimeError("no lifespan nursery")
        body = gateway.streams.open(nursery, gateway.runtime, execution_id, tenant,
                                    last_event_id(request.headers.get("Last-Event-ID")))
    except RuntimeError:  # no ASGI lifespan (or it has ended): nowhere to run the stream
        raise ApiProblem(503, "streams are not available (the server is shutting down, or runs "
                              "without the ASGI lifespan)") from None
    response = Response(body, status=200, content_type="text/event-stream")
    response.headers.update(HEADERS)
    response.timeout = None  # a stream lasts as long as its execution, not RESPONSE_TIMEOUT
    return response
