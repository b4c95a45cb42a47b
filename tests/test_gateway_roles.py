"""Roles from the tokens file: viewer reads; operator also starts, controls, retries, replays
and publishes events; author also registers; admin everything; a token without roles is
operator + author. Approving needs no role: the step's approvers decide, and ``role:NAME``
admits every holder of NAME. In development mode every caller holds every role."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest

from gateway.routes import ROUTES
from runtime import Forbidden, Runtime
from tests.gateway_fixtures import approval_runbook, echo_runbook, running_gateway

TOKENS = {
    "viewer": "roles: [viewer]",
    "operator": "roles: [operator]",
    "author": "roles: [author]",
    "admin": "roles: [admin]",
    "default": "",
    "manager": "roles: [release-manager]",
}


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer token-of-{name}-0123456789"}


def tokens_file(tmp_path: pathlib.Path) -> str:
    path = tmp_path / "tokens.yaml"
    lines = ["tokens:"]
    for name, roles in TOKENS.items():
        lines.append(f"  - {{token: token-of-{name}-0123456789, user: {name}, tenant: acme"
                     + (f", {roles}" if roles else "") + "}")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def forbidden(response: Any) -> None:
    assert response.status_code == 403, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert "needs the role" in response.json()["detail"]


async def test_each_role_may_do_its_routes_and_no_more(tmp_path: pathlib.Path) -> None:
    async with running_gateway({"RUNBOOKS_TOKENS_FILE": tokens_file(tmp_path)}) as gw:
        start = {"runbookId": "echo", "input": {"n": 1}}
        event = {"type": "t", "correlationKey": "k"}
        # viewer: reads only
        forbidden(await gw.client.post("/api/v1/runbooks", json=echo_runbook(), headers=bearer("viewer")))
        # author registers, but does not start
        assert (await gw.client.post("/api/v1/runbooks", json=echo_runbook(), headers=bearer("author"))
                ).status_code == 201
        forbidden(await gw.client.post("/api/v1/executions", json=start, headers=bearer("author")))
        forbidden(await gw.client.post("/api/v1/executions", json=start, headers=bearer("viewer")))
        forbidden(await gw.client.post("/api/v1/events", json=event, headers=bearer("viewer")))
        # operator starts, controls, publishes; does not register
        started = await gw.client.post("/api/v1/executions", json=start, headers=bearer("operator"))
        assert started.status_code == 201
        execution_id = started.json()["id"]
        forbidden(await gw.client.post("/api/v1/runbooks", json=echo_runbook("e2"), headers=bearer("operator")))
        assert (await gw.client.post("/api/v1/events", json=event, headers=bearer("operator"))).status_code == 202
        replay = f"/api/v1/executions/{execution_id}/replay"
        forbidden(await gw.client.post(replay, json={}, headers=bearer("viewer")))
        assert (await gw.client.post(replay, json={}, headers=bearer("operator"))).status_code == 201
        # every role reads
        for name in TOKENS:
            response = await gw.client.get(f"/api/v1/executions/{execution_id}", headers=bearer(name))
            if name == "manager":
                forbidden(response)  # a role name of its own grants no route
            else:
                assert response.status_code == 200, (name, response.text)
        # admin everything; a token without roles is operator + author
        for name in ("admin", "default"):
            assert (await gw.client.post("/api/v1/runbooks", json=echo_runbook(f"by-{name}"),
                                         headers=bearer(name))).status_code == 201
            assert (await gw.client.post("/api/v1/executions", json={"runbookId": f"by-{name}"},
                                         headers=bearer(name))).status_code == 201
        # the checks come before the body is looked at, and a 401 stays a 401
        forbidden(await gw.client.post("/api/v1/runbooks", content=b"{not json", headers=bearer("viewer")))
        assert (await gw.client.post("/api/v1/runbooks", json=echo_runbook())).status_code == 401


async def test_role_approvers_admit_every_holder_and_approving_needs_no_route_role(tmp_path: pathlib.Path) -> None:
    async with running_gateway({"RUNBOOKS_TOKENS_FILE": tokens_file(tmp_path)}) as gw:
        await gw.register(approval_runbook(approvers=("role:release-manager", "viewer")), headers=bearer("admin"))
        execution = await gw.start("approve-me", {"value": 1}, headers=bearer("operator"))
        await gw.wait_for(execution["id"], "awaiting_approval", headers=bearer("viewer"))
        # the step waits for every holder of the role, and they see it in their list (no route role needed)
        listed = await gw.client.get("/api/v1/approvals", headers=bearer("manager"))
        assert [item["executionId"] for item in listed.json()["items"]] == [execution["id"]], listed.text
        assert (await gw.client.get("/api/v1/approvals", headers=bearer("operator"))).json()["items"] == []
        url = f"/api/v1/executions/{execution['id']}/steps/approve/approvals"
        refused = await gw.client.post(url, json={"decision": "approve"}, headers=bearer("operator"))
        assert refused.status_code == 403 and "not an approver" in refused.json()["detail"]
        approved = await gw.client.post(url, json={"decision": "approve"}, headers=bearer("manager"))
        assert approved.status_code == 200, approved.text
        assert approved.json()["steps"]["approve"]["approvals"][0]["approver"] == "manager"


async def test_development_mode_holds_every_role() -> None:
    async with running_gateway() as gw:
        await gw.register(approval_runbook(approvers=("role:release-manager",)))
        execution = await gw.start("approve-me", {"value": 1})
        await gw.wait_for(execution["id"], "awaiting_approval")
        url = f"/api/v1/executions/{execution['id']}/steps/approve/approvals"
        response = await gw.client.post(url, json={"decision": "approve"}, headers={"X-User-Id": "anyone"})
        assert response.status_code == 200, response.text


async def test_the_engine_checks_role_approvers_given_the_callers_roles() -> None:
    async with running_gateway() as gw:
        runtime: Runtime = gw.runtime
        document = approval_runbook("two", approvers=("role:sre", "role:dba"))
        document["steps"][1]["config"]["minApprovals"] = 3  # more than the entries: a role admits many
        await runtime.register_runbook(document)
        execution = await runtime.start("two", {"value": 1})
        await gw.wait_for(execution.id, "awaiting_approval")
        with pytest.raises(Forbidden):
            await runtime.submit_approval(execution.id, "approve", approver="x", decision="approve",
                                          roles=("viewer",))
        await runtime.submit_approval(execution.id, "approve", approver="ann", decision="approve", roles=("sre",))
        await runtime.submit_approval(execution.id, "approve", approver="bob", decision="approve", roles=("dba",))
        assert (await runtime.get(execution.id)).status.value == "awaiting_approval"
        await runtime.submit_approval(execution.id, "approve", approver="cid", decision="approve", roles=("sre",))
        assert (await runtime.wait(execution.id)).status.value == "completed"


def test_the_route_table_names_a_role_for_every_api_route_and_the_document_shows_it() -> None:
    from gateway.openapi import build_openapi

    document = build_openapi(ROUTES, development_mode=False)
    for route in ROUTES:
        operation = document["paths"][route.openapi_path][route.method.lower()]
        assert operation.get("x-required-role") == route.role
        if route.role is not None:
            assert "403" in operation["responses"]
    roles = {route.operation_id: route.role for route in ROUTES}
    assert roles["registerRunbook"] == "author"
    assert roles["startExecution"] == roles["publishEvent"] == roles["cancelExecution"] == "operator"
    assert roles["getExecution"] == roles["validateRunbook"] == "viewer"
    assert roles["submitApproval"] is None and roles["health"] is None
