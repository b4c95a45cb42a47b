"""Signed webhooks: each preset and the generic scheme start an execution (an event rule) or
release a waiting step; bad, stale and replayed requests are refused with nothing published;
refusals are counted and audited per tenant; the sources file is checked path by path."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from gateway.config import Config, ConfigError
from runtime.sources.config import SourcesFileError, parse_sources
from tests.sources_helpers import (
    RULE,
    SOURCES,
    WAIT,
    Hooks,
    generic,
    github,
    running_hooks,
    slack,
    standard,
    stripe,
)


async def waiting(hooks: Hooks, event_type: str, key: str) -> str:
    execution = await hooks.runtime.start("wait", {"type": event_type, "key": key}, force=True)
    with trio.fail_after(5):
        while (await hooks.runtime.fetch(execution.id)).steps["ev"].status.value != "waiting":  # noqa: ASYNC110 (polls another process or server)
            await trio.sleep(0.01)
    return execution.id


async def released(hooks: Hooks, execution_id: str) -> dict[str, Any]:
    with trio.fail_after(5):
        finished = await hooks.runtime.wait(execution_id)
    assert finished.status.value == "completed"
    output: dict[str, Any] = finished.steps["ev"].output
    return output


@pytest.fixture
async def hooks() -> Any:
    async with running_hooks() as found:
        await found.runtime.register_runbook(WAIT)
        await found.runtime.register_runbook(RULE)
        yield found


async def test_github_push_starts_an_execution_once_and_a_redelivery_is_a_duplicate(hooks: Hooks) -> None:
    body = json.dumps({"ref": "refs/heads/main", "repository": "ops/site"}).encode()
    first = await hooks.post("gh", body, github(body, delivery="guid-1"))
    assert first.status_code == 202, first.text
    assert first.json()["duplicate"] is False
    again = await hooks.post("gh", body, github(body, delivery="guid-1"))
    assert (again.status_code, again.json()["duplicate"]) == (200, True)
    started = [e for e in (await hooks.runtime.list_executions(runbook_id="on-push")).items]
    assert [e.input for e in started] == [{"ref": "refs/heads/main"}]
    assert started[0].context["trigger"]["id"] == "push"
    counters = (await hooks.client.get("/api/v1/sources")).json()["items"][0]["counters"]
    assert counters == {"received": 2, "refused": 0, "duplicate": 1}


async def test_a_rotated_secret_still_verifies(hooks: Hooks) -> None:
    body = json.dumps({"ref": "r", "repository": "ops/site"}).encode()
    answer = await hooks.post("gh", body, github(body, secret="gh-old-secret", delivery="guid-old"))
    assert answer.status_code == 202, answer.text


@pytest.mark.parametrize("tamper", ["body", "secret", "missing"])
async def test_a_bad_github_signature_is_401_publishes_nothing_and_is_audited(hooks: Hooks, tamper: str) -> None:
    body = json.dumps({"ref": "r", "repository": "ops/site"}).encode()
    headers = github(body, secret="wrong" if tamper == "secret" else "gh-secret", delivery="guid-bad")
    if tamper == "missing":
        del headers["X-Hub-Signature-256"]
    sent = body + b" " if tamper == "body" else body
    answer = await hooks.post("gh", sent, headers)
    assert answer.status_code == 401
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert (await hooks.runtime.list_executions(runbook_id="on-push")).items == []
    with trio.fail_after(5):
        while not (audit := (await hooks.client.get("/api/v1/sources/gh/audit")).json()["items"]):  # noqa: ASYNC110 (polls another process or server)
            await trio.sleep(0.01)
    assert audit[0]["action"] == "source.refused" and audit[0]["data"]["deliveryId"] == "guid-bad"
    assert (await hooks.client.get("/api/v1/sources")).json()["items"][0]["counters"]["refused"] == 1
    # the source's audit is its tenant's: another tenant does not see the source at all
    other = await hooks.client.get("/api/v1/sources/gh/audit", headers={"X-Tenant-Id": "other"})
    assert other.status_code == 404


async def test_stripe_releases_a_waiting_step_and_refuses_a_stale_or_replayed_request(hooks: Hooks) -> None:
    execution_id = await waiting(hooks, "invoice.paid", "in_1")
    body = json.dumps({"id": "evt_1", "type": "invoice.paid", "data": {"object": {"id": "in_1"}}}).encode()
    stale = await hooks.post("stripe", body, stripe(body, at=int(time.time()) - 301))
    assert stale.status_code == 401 and "old" in stale.json()["detail"]
    fresh = await hooks.post("stripe", body, stripe(body))
    assert fresh.json() == {"delivered": 1, "retained": False, "eventId": fresh.json()["eventId"], "duplicate": False}
    output = await released(hooks, execution_id)
    assert output["payload"]["id"] == "evt_1"
    replayed = await hooks.post("stripe", body, stripe(body))  # a new signature, the same event id
    assert (replayed.status_code, replayed.json()["duplicate"]) == (200, True)
    assert len(hooks.runtime.router.retained) == 0  # nothing retained for a later waiter either


async def test_slack_answers_url_verification_and_releases_a_step(hooks: Hooks) -> None:
    challenge = json.dumps({"type": "url_verification", "challenge": "c-123"}).encode()
    answer = await hooks.post("slack", challenge, slack(challenge))
    assert (answer.status_code, answer.json()) == (200, {"challenge": "c-123"})
    forged = await hooks.post("slack", challenge, slack(challenge, secret="nope"))
    assert forged.status_code == 401
    execution_id = await waiting(hooks, "slack.app_mention", "C1")
    body = json.dumps({"event_id": "Ev1", "event": {"type": "app_mention", "channel": "C1"}}).encode()
    stale = await hooks.post("slack", body, slack(body, at=int(time.time()) - 6 * 60))
    assert stale.status_code == 401
    assert (await hooks.post("slack", body, slack(body))).status_code == 202
    assert (await released(hooks, execution_id))["correlationKey"] == "C1"
    assert (await hooks.post("slack", body, slack(body))).json()["duplicate"] is True


async def test_standard_webhooks_release_a_step_and_a_repeated_id_is_a_duplicate(hooks: Hooks) -> None:
    execution_id = await waiting(hooks, "deploy.done", "svc-1")
    body = json.dumps({"type": "deploy.done", "key": "svc-1"}).encode()
    assert (await hooks.post("sw", body, standard(body, at=int(time.time()) - 400))).status_code == 401
    assert (await hooks.post("sw", body, standard(body, key=b"other-key"))).status_code == 401
    assert (await hooks.post("sw", body, standard(body, msg_id="msg_9"))).status_code == 202
    assert (await released(hooks, execution_id))["payload"] == {"type": "deploy.done", "key": "svc-1"}
    again = await hooks.post("sw", body, standard(body, msg_id="msg_9"))
    assert again.json()["duplicate"] is True


async def test_the_generic_scheme_signs_its_template_and_caps_the_body(hooks: Hooks) -> None:
    execution_id = await waiting(hooks, "job.done", "j1")
    body = json.dumps({"type": "job.done", "key": "j1"}).encode()
    headers = generic(body, request_id="req-7")
    tampered = {**headers, "X-Request-Id": "req-8"}  # the id is part of what is signed
    assert (await hooks.post("gen", body, tampered)).status_code == 401
    assert (await hooks.post("gen", body, headers)).status_code == 202
    await released(hooks, execution_id)
    assert (await hooks.post("gen", body, headers)).json()["duplicate"] is True
    big = json.dumps({"type": "job.done", "key": "j1", "pad": "x" * 4096}).encode()
    assert (await hooks.post("gen", big, generic(big))).status_code == 413


async def test_a_signed_body_that_makes_no_event_is_422_and_an_unknown_source_404(hooks: Hooks) -> None:
    body = json.dumps({"type": "job.done"}).encode()  # no key
    answer = await hooks.post("gen", body, generic(body, request_id="r-x"))
    assert answer.status_code == 422 and "key" in answer.json()["detail"]
    assert (await hooks.post("nope", body, {})).status_code == 404


async def test_the_hook_route_needs_no_bearer_token_where_every_other_route_does(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text("tokens: [{token: t0, user: ops, tenant: default}]")
    config = Config.from_env({"STORAGE_BACKEND": "memory", "RUNBOOKS_TOKENS_FILE": str(tokens)})
    async with running_hooks(gateway_config=config) as hooks:
        body = json.dumps({"ref": "r", "repository": "x"}).encode()
        assert (await hooks.post("gh", body, github(body, delivery="t-1"))).status_code == 202
        assert (await hooks.client.get("/api/v1/sources")).status_code == 401


def test_every_problem_of_a_sources_file_is_named_by_its_path() -> None:
    with pytest.raises(SourcesFileError) as caught:
        parse_sources({"sources": [
            {"id": "a", "kind": "webhook", "signature": {"preset": "gitlab"}, "secrets": ["plain-text"],
             "event": {"type": "t"}},
            {"id": "a", "kind": "redis-stream", "url": "redis://x", "event": {"type": "t", "key": "k"}},
            {"id": "n", "kind": "nats-jetstream", "url": "nats://x", "stream": "S", "subject": "s.>",
             "durable": "d", "ackWaitMs": 5, "event": {"type": "${body.", "key": "k"}}],
            "sinks": [{"id": "s", "kind": "kafka", "url": "x"}]})
    found = {(p.path, p.message.split(" (")[0].split(":")[0]) for p in caught.value.problems}
    paths = {path for path, _ in found}
    assert {"sources[0].signature.preset", "sources[0].secrets[0]", "sources[0].event.key",
            "sources[1].stream", "sources[1].group", "sources[1].id", "sources[2].ackWaitMs",
            "sinks[0].kind"} <= paths, paths


def test_a_bad_sources_file_stops_start_up_with_a_line_per_problem(tmp_path: Path) -> None:
    path = tmp_path / "sources.yaml"
    path.write_text("sources:\n  - {id: x, kind: webhook}\n")
    with pytest.raises(ConfigError) as caught:
        Config.from_env({"STORAGE_BACKEND": "memory", "RUNBOOKS_SOURCES_FILE": str(path)})
    lines = str(caught.value).splitlines()[1:]
    assert lines == [f"RUNBOOKS_SOURCES_FILE: {path}: sources[0].event: required: {{type, key, payload}}",
                     f"RUNBOOKS_SOURCES_FILE: {path}: sources[0].signature: required: {{preset}} or "
                     "{header, algorithm, template, encoding, prefix}",
                     f"RUNBOOKS_SOURCES_FILE: {path}: sources[0].secrets: required: a list of ${{secret.NAME}} "
                     "references"]


async def test_a_changed_file_is_reloaded_and_a_broken_one_keeps_the_running_sources(tmp_path: Path) -> None:
    from runtime import open_runtime
    from runtime.sources.manager import open_sources

    path = tmp_path / "sources.yaml"
    first = {"sources": [SOURCES["sources"][0]]}
    path.write_text(json.dumps(first))
    async with open_runtime("memory") as rt, open_sources(rt, str(path)) as sources:
        assert [s.id for s in sources.config.sources] == ["gh"]
        path.write_text(json.dumps({"sources": SOURCES["sources"][:2]}))
        assert sources.reload() and [s.id for s in sources.config.sources] == ["gh", "stripe"]
        path.write_text("sources: [{id: broken}]")
        assert not sources.reload()
        assert [s.id for s in sources.config.sources] == ["gh", "stripe"]
