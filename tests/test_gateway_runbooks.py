"""/api/v1/runbooks over real HTTP: register (JSON, YAML), validate, list, get, executions."""

from __future__ import annotations

import trio

from tests.gateway_fixtures import approval_runbook, echo_runbook, running_gateway

PROBLEM = "application/problem+json"
TENANT_A = {"X-Tenant-Id": "tenant-a", "X-User-Id": "alice"}
TENANT_B = {"X-Tenant-Id": "tenant-b", "X-User-Id": "bob"}

YAML_DOC = """\
id: yaml-book
name: From YAML
steps:
  - id: hello
    type: echo
    config:
      greeting: "hi ${input.who}"
"""


async def test_register_json_returns_id_and_version_and_a_new_version_for_each_change() -> None:
    async with running_gateway() as gw:
        first = await gw.client.post("/api/v1/runbooks", json=echo_runbook())
        second = await gw.client.post("/api/v1/runbooks", json={**echo_runbook(), "name": "echo, renamed"})
        assert (first.status_code, first.json()) == (201, {"id": "echo", "version": 1})
        assert (second.status_code, second.json()) == (201, {"id": "echo", "version": 2})
        assert second.headers["Location"] == "/api/v1/runbooks/echo?version=2"


async def test_register_yaml_with_each_yaml_content_type() -> None:
    async with running_gateway() as gw:
        for version, content_type in enumerate(("application/yaml", "application/x-yaml", "text/yaml"), 1):
            response = await gw.client.post("/api/v1/runbooks", content=YAML_DOC + f"description: v{version}\n",
                                            headers={"Content-Type": content_type})
            assert (response.status_code, response.json()) == (201, {"id": "yaml-book", "version": version})
        got = (await gw.client.get("/api/v1/runbooks/yaml-book")).json()
        assert got["name"] == "From YAML"
        assert got["document"]["steps"][0]["config"] == {"greeting": "hi ${input.who}"}


async def test_register_invalid_document_is_422_with_every_problem() -> None:
    document = {"id": "bad id!", "steps": [
        {"id": "a", "type": "no-such-type"},
        {"id": "b", "type": "echo", "dependsOn": ["missing"]},
    ]}
    async with running_gateway() as gw:
        response = await gw.client.post("/api/v1/runbooks", json=document)
        assert response.status_code == 422
        assert response.headers["content-type"] == PROBLEM
        body = response.json()
        assert {"type", "title", "status", "detail", "errors"} <= set(body)
        paths = {error["path"] for error in body["errors"]}
        assert {"id", "steps[0].type", "steps[1].dependsOn"} <= paths, body["errors"]


async def test_register_bad_bodies_are_400_413_415() -> None:
    async with running_gateway() as gw:
        post = gw.client.post
        malformed = await post("/api/v1/runbooks", content=b'{"id": ', headers={"Content-Type": "application/json"})
        not_utf8 = await post("/api/v1/runbooks", content=b'{"id": "\xff\xfe"}',
                              headers={"Content-Type": "application/json"})
        bad_yaml = await post("/api/v1/runbooks", content=b"id: [unclosed", headers={"Content-Type": "text/yaml"})
        yaml_list = await post("/api/v1/runbooks", content=b"- a\n- b\n", headers={"Content-Type": "text/yaml"})
        json_list = await post("/api/v1/runbooks", json=[1, 2])
        too_big = await post("/api/v1/runbooks", content=b" " * (1024 * 1024 + 1),
                             headers={"Content-Type": "application/json"})
        big_yaml = await post("/api/v1/runbooks", content=b"#" * (1024 * 1024 + 1), headers={"Content-Type": "text/yaml"})
        wrong_type = await post("/api/v1/runbooks", content=b"<xml/>", headers={"Content-Type": "application/xml"})
        for response in (malformed, not_utf8, bad_yaml, yaml_list, json_list):
            assert response.status_code == 400, response.text
            assert response.headers["content-type"] == PROBLEM
            assert response.json()["errors"], response.text
        assert "malformed JSON" in malformed.json()["detail"]
        assert "UTF-8" in not_utf8.json()["detail"]
        assert (too_big.status_code, big_yaml.status_code, wrong_type.status_code) == (413, 413, 415)
        assert too_big.headers["content-type"] == PROBLEM
        assert (await gw.client.get("/health")).status_code == 200  # the server is fine afterwards


async def test_a_document_just_over_1_mib_inside_the_json_is_413() -> None:
    document = {"id": "big", "description": "x" * (1024 * 1024), "steps": [{"id": "a", "type": "echo"}]}
    async with running_gateway() as gw:
        response = await gw.client.post("/api/v1/runbooks", json=document)
        assert response.status_code == 413
        assert response.json()["status"] == 413


async def test_validate_reports_without_registering() -> None:
    async with running_gateway() as gw:
        good = await gw.client.post("/api/v1/runbooks/validate", json=echo_runbook("v"))
        bad = await gw.client.post("/api/v1/runbooks/validate", content="id: v\nsteps: []\n",
                                   headers={"Content-Type": "application/yaml"})
        assert (good.status_code, good.json()) == (200, {"valid": True, "errors": []})
        assert bad.status_code == 200
        assert bad.json()["valid"] is False
        assert bad.json()["errors"][0]["path"] == "steps"
        assert (await gw.client.get("/api/v1/runbooks/v")).status_code == 404


TYPOS = """\
id: typos
steps:
  - id: fetch
    type: call-servce
  - id: check
    type: echo
    dependOn: [fetch]
    config: {n: "${inptu.n}", again: "${inptu.n}"}
"""


async def test_validate_and_register_name_the_step_and_line_and_suggest_names() -> None:
    async with running_gateway() as gw:
        report = await gw.client.post("/api/v1/runbooks/validate", content=TYPOS,
                                      headers={"Content-Type": "application/yaml"})
        errors = report.json()["errors"]
        assert [(e["stepId"], e["line"]) for e in errors] == [("fetch", 4), ("check", 7), ("check", 8)]
        assert "did you mean 'call-service'?" in errors[0]["message"]
        assert errors[1]["message"] == "unknown field 'dependOn'; did you mean 'dependsOn'?"
        assert errors[2]["message"] == "template '${inptu.n}' refers to unknown step 'inptu'; did you mean 'input'?"
        refused = await gw.client.post("/api/v1/runbooks", content=TYPOS, headers={"Content-Type": "application/yaml"})
        assert refused.status_code == 422 and refused.json()["errors"] == errors
        assert refused.json()["detail"].startswith("3 problems: steps[0].type: unknown step type 'call-servce'")
        as_json = await gw.client.post("/api/v1/runbooks/validate",
                                       content='{"id": "j", "steps": [\n  {"id": "a", "type": "echo", "dependOn": []}]}')
        assert [(e["stepId"], e["line"]) for e in as_json.json()["errors"]] == [("a", 2)]


async def test_list_is_paginated_with_next_cursor() -> None:
    async with running_gateway() as gw:
        for name in ("r1", "r2", "r3", "r4", "r5"):
            await gw.register(echo_runbook(name))
        seen: list[str] = []
        cursor = None
        pages = 0
        while True:
            params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
            page = (await gw.client.get("/api/v1/runbooks", params=params)).json()
            seen += [item["id"] for item in page["items"]]
            pages += 1
            cursor = page["nextCursor"]
            if cursor is None:
                break
        assert seen == ["r1", "r2", "r3", "r4", "r5"]
        assert pages == 3
        bad = await gw.client.get("/api/v1/runbooks", params={"limit": 1001})
        assert bad.status_code == 422
        assert bad.json()["errors"] == [{"path": "limit", "message": "must be between 1 and 1000, got 1001"}]


async def test_get_runbook_by_version_and_unknown_ids() -> None:
    async with running_gateway() as gw:
        await gw.register(echo_runbook("multi"))
        await gw.register({**echo_runbook("multi"), "name": "second"})
        latest = (await gw.client.get("/api/v1/runbooks/multi")).json()
        first = (await gw.client.get("/api/v1/runbooks/multi", params={"version": 1})).json()
        assert (latest["version"], latest["name"]) == (2, "second")
        assert (first["version"], first["name"]) == (1, None)
        assert latest["shared"] is False and latest["tenantId"] == "default"
        missing = await gw.client.get("/api/v1/runbooks/nope")
        missing_version = await gw.client.get("/api/v1/runbooks/multi", params={"version": 9})
        bad_version = await gw.client.get("/api/v1/runbooks/multi", params={"version": "x"})
        assert (missing.status_code, missing_version.status_code, bad_version.status_code) == (404, 404, 400)
        assert missing.headers["content-type"] == PROBLEM


async def test_runbooks_belong_to_their_tenant() -> None:
    async with running_gateway() as gw:
        await gw.register(echo_runbook("private"), headers=TENANT_A)
        assert (await gw.client.get("/api/v1/runbooks/private", headers=TENANT_A)).status_code == 200
        assert (await gw.client.get("/api/v1/runbooks/private", headers=TENANT_B)).status_code == 404
        listed = (await gw.client.get("/api/v1/runbooks", headers=TENANT_B)).json()
        assert listed == {"items": [], "nextCursor": None}
        start = await gw.client.post("/api/v1/executions", json={"runbookId": "private"}, headers=TENANT_B)
        assert start.status_code == 404
        other = await gw.client.get("/api/v1/runbooks/private/executions", headers=TENANT_B)
        assert other.status_code == 404


async def test_executions_of_a_runbook_newest_first() -> None:
    async with running_gateway() as gw:
        await gw.register(echo_runbook("e1"))
        await gw.register(approval_runbook("e2"))
        first = await gw.start("e1", {"n": 1})
        second = await gw.start("e1", {"n": 2})
        await gw.start("e2", {"value": 1})
        page = (await gw.client.get("/api/v1/runbooks/e1/executions")).json()
        assert [item["id"] for item in page["items"]] == [second["id"], first["id"]]
        assert page["nextCursor"] is None
        await gw.wait_for(first["id"], "completed")
        completed = (await gw.client.get("/api/v1/runbooks/e1/executions",
                                          params={"status": "completed", "limit": 1})).json()
        assert len(completed["items"]) == 1 and completed["items"][0]["status"] == "completed"
        bad = await gw.client.get("/api/v1/runbooks/e1/executions", params={"status": "bogus", "limit": 0})
        assert bad.status_code == 422
        assert {e["path"] for e in bad.json()["errors"]} == {"status", "limit"}


async def test_a_yaml_alias_bomb_is_refused_quickly() -> None:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    document = "id: bomb\nmetadata:\n" + "\n".join("  " + line for line in lines) + \
               "\nsteps: [{id: s, type: echo}]\n"
    async with running_gateway() as gw:
        with trio.fail_after(5):  # expanded, this would be 10^9 strings
            response = await gw.client.post("/api/v1/runbooks", content=document,
                                            headers={"Content-Type": "application/yaml"})
        assert response.status_code == 413
        assert "aliases" in response.json()["detail"]
