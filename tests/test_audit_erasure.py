"""Erasing a person's data from the audit ledger from the outside: ``POST
/api/v1/audit/{seq}/erase`` (admin, the caller's tenant) and ``runbooks audit erase SEQ
--reason TEXT``. The entry keeps its place and hash, its payload is gone, the erasure is an
entry of its own, and the ledger still verifies, over the API and offline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio

from gateway.cli import main
from runtime.security.audit_verify import verify_bundle
from tests.gateway_fixtures import running_gateway
from tests.test_audit_export import untar

T1 = {"X-Tenant-Id": "t1", "X-User-Id": "dpo"}
ONE_STEP = {"id": "one", "steps": [{"id": "a", "type": "echo", "config": {"n": 1}}]}


async def started_entry(gw: Any, headers: dict[str, str], who: str = "jane.doe@example.com") -> dict[str, Any]:
    """Run an execution whose input names a person; its ``execution.started`` audit entry."""
    await gw.register(ONE_STEP, headers=headers)
    execution = await gw.start("one", {"customer": who}, headers=headers)
    await gw.wait_for(execution["id"], "completed", headers=headers)
    audit = (await gw.client.get(f"/api/v1/executions/{execution['id']}/audit", headers=headers)).json()["items"]
    [started] = [entry for entry in audit if entry["action"] == "execution.started"]
    return {**started, "executionId": execution["id"]}


async def test_an_admin_erases_a_payload_and_the_ledger_still_verifies(tmp_path: Path) -> None:
    async with running_gateway(store=f"sqlite:///{tmp_path / 'e.db'}") as gw:
        await started_entry(gw, T1)  # entries before and after the one erased
        await gw.runtime.record_source_audit("t1", "crm", "delivery.refused", {"from": "jane.doe@example.com"})
        [entry] = await gw.runtime.source_audit("t1", "crm")
        await started_entry(gw, T1, "someone else")
        before = {"seq": entry.seq, "prevHash": entry.prev_hash, "hash": entry.hash, "dataSha256": entry.data_sha256,
                  "action": "delivery.refused", "actor": "source:crm"}

        response = await gw.client.post(f"/api/v1/audit/{before['seq']}/erase",
                                        json={"reason": "GDPR art. 17, ticket DSR-7"}, headers=T1)
        assert response.status_code == 200, response.text
        erased = response.json()
        assert erased["erased"] is True and erased["data"] is None
        # the entry keeps its place in the chain: same seq, hashes and hash of its payload
        assert {k: erased[k] for k in before} == before
        [entry] = await gw.runtime.source_audit("t1", "crm")
        assert entry.erased and entry.data is None

        verdict = (await gw.client.get("/api/v1/audit/verify", headers=T1)).json()
        assert verdict["ok"], verdict
        files = untar((await gw.client.get("/api/v1/audit/export", headers=T1)).content)
        assert b"jane.doe" not in b"".join(files.values())
        entries = [json.loads(line) for line in files["entries.jsonl"].splitlines()]
        last = entries[-1]  # the erasure is audited: who, why, which entry
        assert (last["action"], last["actor"], last["reason"]) == ("audit.payload_erased", "dpo",
                                                                   "GDPR art. 17, ticket DSR-7")
        payloads = {p["seq"]: p for p in map(json.loads, files["payloads.jsonl"].splitlines())}
        assert payloads[before["seq"]] == {"seq": before["seq"], "erased": True}
        assert payloads[last["seq"]]["data"] == {"seq": before["seq"], "dataSha256": before["dataSha256"]}
        bundle = tmp_path / "bundle"
        for name, data in files.items():
            (bundle / name).parent.mkdir(parents=True, exist_ok=True)
            (bundle / name).write_bytes(data)
        assert verify_bundle(bundle).line() == f"ok {len(entries)} entries"

        again = await gw.client.post(f"/api/v1/audit/{before['seq']}/erase", json={"reason": "twice"}, headers=T1)
        assert again.status_code == 409 and "erased already" in again.json()["detail"]
        files = untar((await gw.client.get("/api/v1/audit/export", headers=T1)).content)
        assert len(files["entries.jsonl"].splitlines()) == len(entries)  # a refused erasure writes nothing


async def test_erasure_is_refused_to_non_admins_across_tenants_and_for_bad_input(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text("tokens:\n"
                      "  - {token: token-of-operator-012345678, user: oli, tenant: t1, roles: [operator, author]}\n"
                      "  - {token: token-of-viewer-0123456789, user: vic, tenant: t1, roles: [viewer]}\n"
                      "  - {token: token-of-admin-01234567890, user: ada, tenant: t1, roles: [admin]}\n"
                      "  - {token: token-of-admin-of-t2-012345, user: bea, tenant: t2, roles: [admin]}\n")
    operator, viewer, admin, other = ({"Authorization": f"Bearer {token}"} for token in (
        "token-of-operator-012345678", "token-of-viewer-0123456789", "token-of-admin-01234567890",
        "token-of-admin-of-t2-012345"))
    async with running_gateway({"RUNBOOKS_TOKENS_FILE": str(tokens)}) as gw:
        entry = await started_entry(gw, operator)
        path = f"/api/v1/audit/{entry['seq']}/erase"
        for who in (viewer, operator):
            refused = await gw.client.post(path, json={"reason": "gdpr"}, headers=who)
            assert refused.status_code == 403 and "needs the role" in refused.json()["detail"]
        # another tenant's admin: that tenant has no such entry
        assert (await gw.client.post(path, json={"reason": "gdpr"}, headers=other)).status_code == 404
        missing = await gw.client.post("/api/v1/audit/999999/erase", json={"reason": "gdpr"}, headers=admin)
        assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"
        assert "no audit entry 999999" in missing.json()["detail"]

        bad = {
            "/api/v1/audit/first/erase": ({"reason": "gdpr"}, ["seq"]),
            "/api/v1/audit/0/erase": ({"reason": "gdpr"}, ["seq"]),
            "/api/v1/audit/1.5/erase": ({"reason": "gdpr"}, ["seq"]),
            "/api/v1/audit/99999999999999999999/erase": ({"reason": "gdpr"}, ["seq"]),
            path: ({}, ["reason"]),
        }
        for url, (body, paths) in bad.items():
            response = await gw.client.post(url, json=body, headers=admin)
            assert response.status_code == 422, (url, response.text)
            assert response.headers["content-type"] == "application/problem+json"
            assert [p["path"] for p in response.json()["errors"]] == paths
        for body, message in (({"reason": " \t"}, "required"), ({"reason": "x" * 10_001}, "at most 10000"),
                              ({"reason": "gdpr", "why": "?"}, "unknown field")):
            response = await gw.client.post(path, json=body, headers=admin)
            assert response.status_code == 422 and message in response.text, response.text
        everything = await gw.client.post("/api/v1/audit/x/erase", headers=admin)  # no body at all
        assert everything.status_code == 422
        assert [p["path"] for p in everything.json()["errors"]] == ["seq", "reason"]  # every problem listed

        audit = (await gw.client.get(f"/api/v1/executions/{entry['executionId']}/audit", headers=viewer)).json()
        assert not any(item["erased"] for item in audit["items"])  # nothing refused erased anything
        done = await gw.client.post(path, json={"reason": "gdpr"}, headers=admin)
        assert done.status_code == 200 and done.json()["erased"]


async def test_runbooks_audit_erase(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with running_gateway(store=f"sqlite:///{tmp_path / 'c.db'}") as gw:
        entry = await started_entry(gw, T1)
        capsys.readouterr()  # (the server's own start-up line)

        async def cli(*argv: str) -> tuple[int, str, str]:
            code = await trio.to_thread.run_sync(main, ["audit", "erase", *argv, "--server", gw.url,
                                                        "--user", "dpo", "--tenant", "t1"])
            out, err = capsys.readouterr()
            return code, out, err

        code, out, err = await cli(str(entry["seq"]), "--reason", "customer request")
        assert (code, err) == (0, "")
        assert out == (f"erased the payload of audit entry {entry['seq']} (execution.started by {entry['actor']} at "
                       f"{entry['at']}); the entry and its hash stay in the chain\n")
        code, out, err = await cli(str(entry["seq"]), "--reason", "again")
        assert (code, out) == (1, "")
        assert err == f"runbooks audit erase: the payload of audit entry {entry['seq']} was erased already\n"
        code, out, err = await cli("424242", "--reason", "gdpr", "--json")
        assert (code, err) == (1, "runbooks audit erase: tenant 't1' has no audit entry 424242\n")
        with pytest.raises(SystemExit) as usage:  # argparse: a seq that is no integer, a missing reason
            await cli("first", "--reason", "gdpr")
        assert usage.value.code == 2
        with pytest.raises(SystemExit):
            await cli(str(entry["seq"]))
        capsys.readouterr()

        other = await started_entry(gw, T1, "john.roe@example.com")
        code, out, _ = await cli(str(other["seq"]), "--reason", "gdpr", "--json")
        assert code == 0 and json.loads(out)["erased"] is True and json.loads(out)["seq"] == other["seq"]
        verdict = (await gw.client.get("/api/v1/audit/verify", headers=T1)).json()
        assert verdict["ok"], verdict
