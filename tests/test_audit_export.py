"""The audit ledger from the outside: ``GET /api/v1/audit/export`` (a tar an auditor verifies
offline) and ``/api/v1/audit/verify``, the ``runbooks audit export|verify|key`` commands with
their exit statuses, a payload erased without breaking verification (SQLite and PostgreSQL),
and signed checkpoints written by a runtime that has a key."""

from __future__ import annotations

import io
import itertools
import json
import sqlite3
import tarfile
from pathlib import Path
from typing import Any

import pytest
import trio

from gateway.cli import main
from runtime import Settings, open_runtime
from runtime.security.audit_verify import verify_bundle
from tests.gateway_fixtures import running_gateway


async def echo(ctx: Any) -> Any:
    """A custom step that answers its config."""
    return ctx.config


T1 = {"X-Tenant-Id": "t1", "X-User-Id": "ann"}
T2 = {"X-Tenant-Id": "t2", "X-User-Id": "bob"}
TWO_STEPS = {"id": "two", "steps": [{"id": "a", "type": "echo", "config": {"n": 1}},
                                    {"id": "b", "type": "echo", "config": {"n": 2}, "dependsOn": ["a"]}]}
APPROVAL = {"id": "ask", "steps": [{"id": "ok", "type": "human-approval",
                                    "config": {"approvers": ["boss"], "message": "go?"}}]}


def untar(body: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        return {member.name.split("/", 1)[1]: tar.extractfile(member).read()  # type: ignore[union-attr]
                for member in tar.getmembers() if member.isfile()}


async def test_the_rest_export_is_a_bundle_the_verifier_accepts(tmp_path: Path) -> None:
    async with running_gateway() as gw:
        await gw.register(TWO_STEPS, headers=T1)
        await gw.register(APPROVAL, headers=T1)
        first = await gw.start("two", headers=T1)
        await gw.wait_for(first["id"], "completed", headers=T1)
        asked = await gw.start("ask", headers=T1)
        waiting = await gw.wait_for(asked["id"], "awaiting_approval", headers=T1)
        digest = waiting["steps"]["ok"]["approvalRequest"]["digest"]
        decided = await gw.client.post(f"/api/v1/executions/{asked['id']}/steps/ok/approvals",
                                       json={"decision": "approve", "digest": digest}, headers={**T1, "X-User-Id": "boss"})
        assert decided.status_code == 200, decided.text
        await gw.register(TWO_STEPS, headers=T2)
        other = await gw.start("two", headers=T2)
        await gw.wait_for(other["id"], "completed", headers=T2)

        audit = (await gw.client.get(f"/api/v1/executions/{first['id']}/audit", headers=T1)).json()["items"]
        assert [a["seq"] for a in audit] == list(range(1, len(audit) + 1))  # t1's first execution starts its chain
        assert all(a["prevHash"] == b["hash"] for b, a in itertools.pairwise(audit))

        response = await gw.client.get("/api/v1/audit/export", headers=T1)
        assert response.status_code == 200 and response.headers["content-type"] == "application/x-tar"
        files = untar(response.content)
        assert {"manifest.json", "entries.jsonl", "payloads.jsonl", "checkpoints.jsonl"} <= set(files)
        entries = [json.loads(line) for line in files["entries.jsonl"].splitlines()]
        assert {e["tenantId"] for e in entries} == {"t1"}  # t2's chain is its own
        assert any(name.startswith("evidence/") for name in files)  # the approval's evidence, named by its entry
        bundle = tmp_path / "b"
        for name, data in files.items():
            (bundle / name).parent.mkdir(parents=True, exist_ok=True)
            (bundle / name).write_bytes(data)
        assert verify_bundle(bundle).line() == f"ok {len(entries)} entries"
        (bundle / next(n for n in files if n.startswith("evidence/"))).write_text(
            json.dumps({"id": "x", "sha256": "0" * 64, "data": {"decision": "reject"}}))
        assert verify_bundle(bundle).reason == "evidence mismatch"

        part = untar((await gw.client.get("/api/v1/audit/export?from=3&to=5", headers=T1)).content)
        manifest = json.loads(part["manifest.json"])
        assert (manifest["fromSeq"], manifest["toSeq"], manifest["entries"]) == (3, 5, 3)
        assert manifest["prevHash"] == entries[1]["hash"]

        bad = await gw.client.get("/api/v1/audit/export?from=yesterday", headers=T1)
        assert bad.status_code == 422 and bad.headers["content-type"] == "application/problem+json"
        verdict = (await gw.client.get("/api/v1/audit/verify", headers=T1)).json()
        assert verdict["ok"] and verdict["entries"] == len(entries)


async def test_only_an_admin_exports_the_ledger(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text("tokens:\n"
                      "  - {token: token-of-viewer-0123456789, user: vic, tenant: t1, roles: [viewer]}\n"
                      "  - {token: token-of-admin-01234567890, user: ada, tenant: t1, roles: [admin]}\n")
    async with running_gateway({"RUNBOOKS_TOKENS_FILE": str(tokens)}) as gw:
        viewer = {"Authorization": "Bearer token-of-viewer-0123456789"}
        admin = {"Authorization": "Bearer token-of-admin-01234567890"}
        refused = await gw.client.get("/api/v1/audit/export", headers=viewer)
        assert refused.status_code == 403 and "needs the role" in refused.json()["detail"]
        assert (await gw.client.get("/api/v1/audit/export", headers=admin)).status_code == 200
        assert (await gw.client.get("/api/v1/audit/verify", headers=viewer)).json()["ok"]


def run_cli(*argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_key_export_and_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    key = tmp_path / "audit.pem"
    code, public, _ = run_cli("audit", "key", "--generate", str(key), capsys=capsys)
    assert code == 0 and public.startswith("-----BEGIN PUBLIC KEY-----")
    (tmp_path / "audit.pub").write_text(public)
    monkeypatch.setenv("RUNBOOKS_AUDIT_SIGNING_KEY", str(key))
    assert run_cli("audit", "key", capsys=capsys)[:2] == (0, public)
    monkeypatch.setenv("AUDIT_CHECKPOINT_EVERY", "4")
    db = tmp_path / "r.db"

    async def work() -> None:
        settings = Settings(audit_checkpoint_every=4, audit_signing_key=str(key))
        async with open_runtime(f"sqlite:///{db}", settings=settings) as rt:
            rt.register_executor("echo", echo)
            await rt.register_runbook(TWO_STEPS, tenant_id="t1")
            for _ in range(2):
                assert (await rt.wait((await rt.start("two", context={"tenantId": "t1"})).id)).status == "completed"

    trio.run(work)
    out = tmp_path / "bundle"
    code, text, err = run_cli("audit", "export", "--tenant", "t1", "--store", f"sqlite:///{db}", str(out),
                              capsys=capsys)
    assert code == 0, err
    count = json.loads((out / "manifest.json").read_text())["entries"]
    assert text == f"exported {count} entries of tenant t1 to {out}\n"
    checkpoints = [json.loads(line) for line in (out / "checkpoints.jsonl").read_text().splitlines()]
    assert checkpoints and all(c["signature"] for c in checkpoints) and checkpoints[0]["seq"] == 4
    assert run_cli("audit", "verify", str(out), "--public-key", str(tmp_path / "audit.pub"), capsys=capsys)[:2] == (
        0, f"ok {count} entries\n")

    with sqlite3.connect(db) as conn:  # someone with the file drops the trigger and changes who did something
        conn.execute("DROP TRIGGER audit_no_update")
        conn.execute("UPDATE audit SET actor = 'mallory' WHERE tenant = 't1' AND chain_seq = 2")
    again = tmp_path / "again"
    assert run_cli("audit", "export", "--tenant", "t1", "--store", f"sqlite:///{db}", str(again), capsys=capsys)[0] == 0
    code, text, _ = run_cli("audit", "verify", str(again), capsys=capsys)
    assert (code, text) == (1, "seq 2: edited (its hash does not match its content)\n")

    assert run_cli("audit", "verify", str(tmp_path / "nothing"), capsys=capsys)[0] == 2
    assert run_cli("audit", "export", "--tenant", "t1", "--store", f"sqlite:///{db}", str(again),
                   capsys=capsys)[0] == 1  # OUT is not empty
    assert run_cli("audit", "export", "--tenant", "t1", "--from", "soon", str(tmp_path / "x"), capsys=capsys)[0] == 2
    monkeypatch.delenv("RUNBOOKS_AUDIT_SIGNING_KEY")
    code, _, err = run_cli("audit", "key", capsys=capsys)
    assert code == 1 and "unsigned" in err


@pytest.mark.parametrize("store", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_an_erased_payload_keeps_the_ledger_verifiable(store: str, tmp_path: Path,
                                                      request: pytest.FixtureRequest) -> None:
    if store == "sqlite":
        url = f"sqlite:///{tmp_path / 'e.db'}"
    else:
        url = f"{request.getfixturevalue('postgres_dsn')}?schema={request.getfixturevalue('schema')}"
    found: dict[str, Any] = {}

    async def work() -> None:
        async with open_runtime(url) as rt:
            rt.register_executor("echo", echo)
            await rt.register_runbook(TWO_STEPS, tenant_id="t1")
            ex = await rt.start("two", context={"tenantId": "t1", "userId": "jane.doe@example.com",
                                                "reason": "customer request"})
            await rt.wait(ex.id)
            [started] = [a for a in await rt.audit(ex.id, tenant_id="t1") if a.action == "execution.started"]
            await rt.erase_audit_data("t1", started.seq or 0, actor="dpo", reason="GDPR art. 17")
            found["audit"] = await rt.audit(ex.id, tenant_id="t1")
            found["verdict"] = await rt.verify_audit("t1")
            found["files"] = dict(await rt.export_audit("t1"))

    trio.run(work)
    started = found["audit"][0]
    assert started.erased and started.data is None and started.data_sha256 is not None
    assert found["verdict"].ok, found["verdict"].line()
    entries = [json.loads(line) for line in found["files"]["entries.jsonl"].splitlines()]
    assert entries[-1]["action"] == "audit.payload_erased" and entries[-1]["actor"] == "dpo"
    payloads = [json.loads(line) for line in found["files"]["payloads.jsonl"].splitlines()]
    assert payloads[0] == {"seq": 1, "erased": True}


async def test_texts_with_unicode_line_separators_keep_the_ledger_verifiable(tmp_path: Path) -> None:
    """JSON leaves U+2028, U+2029 and U+0085 unescaped; a bundle's lines end at "\\n" only."""
    async with open_runtime("memory") as rt:
        rt.register_executor("echo", echo)
        await rt.register_runbook(TWO_STEPS, tenant_id="t1")
        reason = "pasted:\u2028line two\u2029para\x85next"
        assert (await rt.wait((await rt.start("two", context={"tenantId": "t1", "reason": reason})).id)).status == "completed"
        verdict = await rt.verify_audit("t1")
        assert verdict.ok, verdict.line()
        files = dict(await rt.export_audit("t1"))
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    entries = files["entries.jsonl"].decode().split("\n")[:-1]
    assert reason in json.loads(entries[0])["reason"]
    assert verify_bundle(tmp_path).line() == f"ok {len(entries)} entries"


def test_the_verifier_runs_without_the_engine(tmp_path: Path) -> None:
    """Copied beside the canonicaliser, the verifier needs only the standard library and cryptography."""
    import shutil
    import subprocess
    import sys

    import cryptography

    root = Path(__file__).resolve().parent.parent
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(root / "runtime" / "security" / "audit_verify.py", alone)
    shutil.copy(root / "runtime" / "model" / "canonical.py", alone)
    bundle = tmp_path / "b"
    bundle.mkdir()
    (bundle / "manifest.json").write_text(json.dumps({"format": "runbooks-audit-bundle/1", "fromSeq": None,
                                                      "toSeq": None, "prevHash": "0" * 64}))
    (bundle / "entries.jsonl").write_text("")
    done = subprocess.run([sys.executable, "-S", "audit_verify.py", str(bundle)], cwd=alone, capture_output=True,
                          text=True, env={"PYTHONPATH": str(Path(cryptography.__file__).parents[1])})
    assert (done.returncode, done.stdout) == (0, "ok 0 entries\n"), done.stderr


async def test_a_quiet_tenant_gets_a_checkpoint_of_its_last_entries(autojump_clock: Any) -> None:
    settings = Settings(audit_checkpoint_every=1000, audit_checkpoint_ms=60_000)
    async with open_runtime("memory", settings=settings) as rt:
        rt.register_executor("echo", echo)
        await rt.register_runbook(TWO_STEPS, tenant_id="t1")
        assert (await rt.wait((await rt.start("two", context={"tenantId": "t1"})).id)).status == "completed"
        files = dict(await rt.export_audit("t1"))
        assert files["checkpoints.jsonl"] == b""  # not yet: too few entries, too little time
        await trio.sleep(130)  # (virtual) two sweeps: the first one after the chain went quiet covers it
        files = dict(await rt.export_audit("t1"))
        entries = files["entries.jsonl"].splitlines()
        checkpoints = [json.loads(line) for line in files["checkpoints.jsonl"].splitlines()]
        assert [c["seq"] for c in checkpoints] == [len(entries)]  # once, at the head
        assert checkpoints[0]["hash"] == json.loads(entries[-1])["hash"]
