"""The caller's tenant's audit ledger: ``GET /api/v1/audit/export?from=&to=`` (admin) streams
the bundle ``runbooks audit verify`` checks, as a tar; ``GET /api/v1/audit/verify`` checks the
whole ledger as that verifier would (the console's "verified" mark); ``POST
/api/v1/audit/{seq}/erase`` (admin) erases the payload of one entry, a person's data, and
audits the erasure, leaving the entry and the chain as they were."""

from __future__ import annotations

from quart import Response, request

from gateway import bodies, inputs
from gateway.auth import current_identity
from gateway.shapes import audit_json, json_response
from gateway.state import state
from runtime.api.audit_export import parse_range, tar_bytes


async def export_audit() -> Response:
    tenant = current_identity().tenant
    runtime = state().runtime
    bounds = parse_range(request.args.get("from"), request.args.get("to"))
    files = await runtime.export_audit(tenant, bounds)
    now = runtime.now()
    name = f"audit-{tenant}-{now.strftime('%Y%m%dT%H%M%SZ')}"
    response = Response(tar_bytes(files, name, now), content_type="application/x-tar")
    response.headers["Content-Disposition"] = f'attachment; filename="{name}.tar"'
    return response


async def verify_audit() -> Response:
    verdict = await state().runtime.verify_audit(current_identity().tenant)
    return json_response({"ok": verdict.ok, "entries": verdict.entries, "seq": verdict.seq,
                          "reason": verdict.reason, "detail": verdict.detail or None,
                          "notes": list(verdict.notes)})


async def erase_audit_data(seq: str) -> Response:
    erasure = inputs.erasure_request(seq, await bodies.json_body(required=False))
    identity = current_identity()
    erased = await state().runtime.erase_audit_data(identity.tenant, erasure.seq, actor=identity.user,
                                                    reason=erasure.reason)
    return json_response(audit_json(erased))
