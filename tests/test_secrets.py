"""Secrets: ``${secret.NAME}`` from the secrets file and the environment, and no value in
clear in anything that leaves the process (store rows read back raw, API bodies, SSE
frames, execution logs, audit, evidence, the process's logging, CLI output, problems), on
the memory, SQLite and PostgreSQL stores."""

from __future__ import annotations

import io
import json
import logging
import pathlib
import sqlite3
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import trio
from psycopg import sql

from gateway.cli_run import RunOptions, run_file
from runtime import Settings, StepContext, open_runtime
from runtime.model.wire import sha256_hex
from runtime.security.secrets import Secrets
from runtime.store import MemoryStore, SqliteStore
from runtime.store.postgres import PostgresStore
from tests.conftest import DSN, drop_schema
from tests.fake_service import Response, fake_service
from tests.gateway_fixtures import running_gateway

VALUE = "s3cr3t-Value-42"
TENANT_VALUE = "tenant-only-Value-7"
ENV_VALUE = "from-the-env-Value-9"
NAMES = (VALUE, TENANT_VALUE, ENV_VALUE)


def write_secrets(path: pathlib.Path, **shared: str) -> pathlib.Path:
    path.write_text(json.dumps({"shared": {"API_TOKEN": VALUE, **shared},
                                "tenants": {"default": {"TENANT_ONLY": TENANT_VALUE}}}))
    return path


def runbook(url: str) -> dict[str, Any]:
    return {"id": "secret-use", "steps": [
        {"id": "call", "type": "call-service", "config": {
            "url": f"{url}/api?token=${{secret.API_TOKEN}}", "method": "POST",
            "headers": {"Authorization": "Bearer ${secret.API_TOKEN}"},
            "body": {"token": "${secret.API_TOKEN}", "tenant": "${secret.TENANT_ONLY}"}}},
        {"id": "echo", "type": "echo", "config": {"token": "${secret.API_TOKEN}", "env": "${secret.FROM_ENV}"}},
        {"id": "boom", "type": "boom", "continueOnError": True, "retryPolicy": {"maxRetries": 0}, "config": {"token": "${secret.API_TOKEN}"}},
        {"id": "approve", "type": "human-approval",
         "config": {"approvers": ["boss"], "message": "uses ${secret.API_TOKEN}"}},
    ]}


async def boom(ctx: StepContext) -> Any:
    logging.getLogger("tests.boom").warning("executor sees the token %s", ctx.config["token"])
    raise RuntimeError(f"bad token {ctx.config['token']}")


def assert_clean(where: str, text: str) -> None:
    for value in NAMES:
        assert value not in text, f"a secret value is in clear in {where}"


# ---------------------------------------------------------------- stores, read back raw


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def raw_store(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[tuple[Any, Any]]:
    """(store, a function dumping every row of every table as text)."""
    kind = request.param
    if kind == "memory":
        memory = MemoryStore()
        yield memory, lambda: repr(vars(memory))
    elif kind == "sqlite":
        path = tmp_path / "secrets.db"

        def dump_sqlite() -> str:
            with sqlite3.connect(path) as conn:
                tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
                return repr([conn.execute(f"SELECT * FROM {t}").fetchall() for t in tables])

        yield SqliteStore(path), dump_sqlite
    else:
        request.getfixturevalue("postgres_dsn")
        schema = f"test_{uuid.uuid4().hex[:16]}"

        def dump_postgres() -> str:
            with psycopg.connect(DSN) as conn:
                tables = [r[0] for r in conn.execute(
                    "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,))]
                return repr([conn.execute(sql.SQL("SELECT * FROM {}.{}").format(
                    sql.Identifier(schema), sql.Identifier(t))).fetchall() for t in tables])

        yield PostgresStore(DSN, pool_max=2, schema=schema), dump_postgres
        drop_schema(DSN, schema)


async def test_no_secret_value_leaves_the_process(raw_store: tuple[Any, Any], tmp_path: pathlib.Path,
                                                  caplog: pytest.LogCaptureFixture,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    store, dump = raw_store
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("RUNBOOKS_SECRET_FROM_ENV", ENV_VALUE)
    env = {"RUNBOOKS_SECRETS_FILE": str(write_secrets(tmp_path / "secrets.json"))}
    async with fake_service() as svc, running_gateway(env, store=store) as gw:
        svc.script("/api", Response(json={"echo": VALUE, "note": f"token {VALUE} accepted"}))
        gw.runtime.register_executor("boom", boom)
        await gw.register(runbook(svc.url))
        started = await gw.start("secret-use")
        execution_id = started["id"]
        await gw.wait_for(execution_id, "awaiting_approval")
        approvals = await gw.client.get("/api/v1/approvals", headers={"X-User-Id": "boss"})
        decided = await gw.client.post(f"/api/v1/executions/{execution_id}/steps/approve/approvals",
                                       json={"decision": "approve"}, headers={"X-User-Id": "boss"})
        final = await gw.wait_for(execution_id, "completed")

        # the request that needs the values has them, in clear
        [call] = svc.requests_to("/api")
        assert call.headers["authorization"] == f"Bearer {VALUE}"
        assert call.query == {"token": VALUE} and call.json == {"token": VALUE, "tenant": TENANT_VALUE}

        # what the engine keeps and answers holds the mask instead
        assert final["steps"]["call"]["output"] == {"echo": "***", "note": "token *** accepted"}
        assert final["steps"]["echo"]["output"] == {"token": "***", "env": "***"}
        assert final["steps"]["boom"]["error"]["message"] == "RuntimeError: bad token ***"
        bodies = {"execution": final, "start": started, "decision": decided.json(), "approvals": approvals.json()}
        for path in ("", "/logs", "/evidence", "/audit"):
            bodies[path or "get"] = (await gw.client.get(f"/api/v1/executions/{execution_id}{path}")).json()
        bodies["list"] = (await gw.client.get("/api/v1/executions")).json()
        document = (await gw.client.get("/api/v1/runbooks/secret-use")).json()
        assert document["document"]["steps"][1]["config"]["token"] == "${secret.API_TOKEN}"  # the reference
        bodies["runbook"] = document
        async with gw.client.stream("GET", f"/api/v1/executions/{execution_id}/stream") as stream:
            bodies["sse"] = "".join([chunk async for chunk in stream.aiter_text()])
        assert "***" in bodies["sse"]
        problem = await gw.client.post("/api/v1/executions", json={"runbookId": VALUE})
        assert problem.status_code == 404
        bodies["problem"] = problem.text
        for name, body in bodies.items():
            assert_clean(f"the API answer '{name}'", body if isinstance(body, str) else json.dumps(body))
        for item in bodies["/evidence"]["items"]:  # hashes are of what is kept: taken after redaction
            assert item["sha256"] == sha256_hex(item["data"])
        logs = json.dumps(bodies["/logs"])
        assert "uses ${secret.API_TOKEN}" in json.dumps(bodies["approvals"])  # rendered without values
        assert "/api?token=***" in logs
    assert_clean("the store's rows", dump())
    messages = [record.getMessage() + (record.exc_text or "") for record in caplog.records]
    assert any("executor sees the token ***" in m for m in messages)
    assert_clean("the process's logging", "\n".join(messages))


# ---------------------------------------------------------------- resolution


async def test_a_tenants_own_names_come_first_then_shared_then_the_environment(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "secrets.yaml"
    path.write_text("shared: {A: shared-a, B: shared-b}\ntenants: {t1: {A: t1-a}}\n")
    secrets = Secrets(str(path), {"RUNBOOKS_SECRET_B": "env-b", "RUNBOOKS_SECRET_C": "env-c"})
    assert [secrets.value("t1", n) for n in "ABC"] == ["t1-a", "shared-b", "env-c"]
    assert [secrets.value("t2", n) for n in "ABC"] == ["shared-a", "shared-b", "env-c"]
    assert secrets.redact({"x": "t1-a and env-c", "shared-a": 1}) == {"x": "*** and ***", "***": 1}


async def test_the_file_is_read_again_when_it_changes_and_old_values_stay_hidden(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "secrets.json"
    path.write_text(json.dumps({"shared": {"A": "first-value"}}))
    secrets = Secrets(str(path), {})
    assert secrets.value("t", "A") == "first-value"
    path.write_text(json.dumps({"shared": {"A": "second-value-longer"}}))
    assert secrets.value("t", "A") == "second-value-longer"
    assert secrets.redact_text("first-value second-value-longer") == "*** ***"
    path.write_text("{broken")  # a broken file keeps the values last read
    assert secrets.value("t", "A") == "second-value-longer"


async def test_an_unknown_secret_fails_the_step_with_template_and_no_retry(tmp_path: pathlib.Path) -> None:
    calls: list[int] = []

    async def count(ctx: StepContext) -> Any:
        calls.append(ctx.attempt)
        return None

    settings = Settings(secrets_file=str(write_secrets(tmp_path / "s.json")), secrets_env={})
    async with open_runtime("memory", settings=settings, executors={"count": count}) as rt:
        await rt.register_runbook({"id": "nope", "steps": [
            {"id": "use", "type": "count", "config": {"t": "${secret.MISSING}"},
             "retryPolicy": {"maxRetries": 3, "initialDelayMs": 1}}]})
        final = await rt.wait((await rt.start("nope")).id)
    error = final.steps["use"].error
    assert final.status == "failed" and calls == []
    assert (error.code, error.retryable) == ("template", False)
    assert "unknown secret 'MISSING'" in error.message


async def test_validation_refuses_a_malformed_secret_reference_and_a_step_named_secret() -> None:
    async with open_runtime("memory") as rt:
        problems = rt.validate_runbook({"id": "bad", "steps": [
            {"id": "secret", "type": "call-service", "config": {"url": "http://x/${secret}"}},
            {"id": "b", "type": "call-service", "config": {"url": "http://x/${secret.a.b}"}}]})
    messages = [(p.path, p.message) for p in problems]
    assert ("steps[0].id", "'secret' is reserved") in messages
    assert any(path == "steps[1].config" and "${secret.NAME}" in m for path, m in messages)


# ---------------------------------------------------------------- the command line


async def test_runbooks_run_with_secrets_prints_no_value(tmp_path: pathlib.Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = write_secrets(tmp_path / "secrets.json")
    monkeypatch.setenv("RUNBOOKS_SECRETS_FILE", str(secrets))
    async with fake_service() as svc:
        svc.script("/api", Response(json={"echo": VALUE}))
        doc = tmp_path / "rb.json"
        doc.write_text(json.dumps({"id": "cli-secret", "steps": [
            {"id": "call", "type": "call-service",
             "config": {"url": f"{svc.url}/api", "headers": {"X-Token": "${secret.API_TOKEN}"}}}]}))
        out, err = io.StringIO(), io.StringIO()
        with trio.fail_after(20):
            status = await run_file(doc, RunOptions(mode="wait"), out, err)
        assert svc.requests_to("/api")[0].headers["x-token"] == VALUE
    assert status == 0, out.getvalue()
    assert "***" in out.getvalue()
    assert_clean("runbooks run's output", out.getvalue() + err.getvalue())
