"""Who did what, per tenant: a replay names its replayer; trigger switches of a shared runbook,
their audit and their last-run data belong to the tenant that made them."""

from __future__ import annotations

from tests.gateway_fixtures import running_gateway

ALICE = {"X-User-Id": "alice", "X-Tenant-Id": "t1"}
BOB = {"X-User-Id": "bob", "X-Tenant-Id": "t1"}


async def test_a_replay_by_bob_of_alices_execution_runs_as_bob_and_names_the_original() -> None:
    async with running_gateway() as gw:
        await gw.register({"id": "who", "steps": [{"id": "s", "type": "echo", "config": {"by": "${context.userId}"}}]},
                          headers=ALICE)
        original = await gw.start("who", headers=ALICE)
        await gw.wait_for(original["id"], "completed", headers=ALICE)
        response = await gw.client.post(f"/api/v1/executions/{original['id']}/replay", headers=BOB)
        assert response.status_code == 201, response.text
        replay = response.json()
        final = await gw.wait_for(replay["id"], "completed", headers=BOB)
        audit = (await gw.client.get(f"/api/v1/executions/{replay['id']}/audit", headers=BOB)).json()["items"]
    assert original["context"]["userId"] == "alice"
    assert replay["context"]["userId"] == "bob" and replay["replayOf"] == original["id"]
    assert final["steps"]["s"]["output"] == {"by": "bob"}  # what the steps see, too
    started = [entry for entry in audit if entry["action"] == "execution.started"]
    assert [entry["actor"] for entry in started] == ["bob"]
    assert started[0]["data"]["replayOf"] == original["id"]
