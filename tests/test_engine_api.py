"""Runbook validation and the embedded API: starts, idempotency, input checks, records."""

from __future__ import annotations

import hashlib
import json
import pathlib
from typing import Any

import pytest
import trio

from runtime import NotFound, Runtime, StepFailed, ValidationError
from runtime.model.wire import canonical_json
from tests.conftest import chain


def paths(problems: Any) -> list[tuple[str, str]]:
    return [(p.path, p.message) for p in problems]


async def test_validation_reports_every_problem_at_once(rt: Runtime) -> None:
    doc = {"id": "bad id!", "steps": [
        {"id": "a", "type": "echo"},
        {"id": "a", "type": "echo"},
        {"id": "input", "type": "echo"},
        {"id": "b", "type": "nope"},
        {"id": "c", "type": "echo", "dependsOn": ["ghost"]},
        {"id": "d", "type": "call-service", "config": {}},
        {"id": "e", "type": "loop", "config": {"items": [1], "maxIterations": 5000, "step": {"type": "echo"}}},
        {"id": "f", "type": "conditional", "config": {"condition": {"field": "input.x", "operator": "eq", "value": 1},
                                                       "trueBranch": "nowhere"}},
        {"id": "g", "type": "echo", "config": {"x": "${input.x"}},
        {"id": "h", "type": "echo", "when": {"field": "input.x", "operator": "matches", "value": "("}},
    ]}
    with pytest.raises(ValidationError) as caught:
        await rt.register_runbook(doc)
    found = paths(caught.value.problems)
    messages = " | ".join(f"{p}: {m}" for p, m in found)
    assert ("id", "required: a string matching [A-Za-z0-9][A-Za-z0-9._-]{0,127}") in found
    assert "duplicate step id 'a'" in messages
    assert "'input' is reserved" in messages
    assert "unknown step type 'nope'" in messages
    assert "unknown step 'ghost'" in messages
    assert "steps[5].config.url" in messages
    assert "exceeds the cap of 1000" in messages
    assert "branch target 'nowhere' is not a step" in messages
    assert "steps[8].config.x" in messages
    assert "steps[9].when.value" in messages
    assert len(found) >= 10


async def test_a_validation_error_message_says_how_many_problems_it_leaves_out(rt: Runtime) -> None:
    doc = {"id": "many", "steps": [{"id": f"s{n}", "type": "no-such-type"} for n in range(7)]}
    with pytest.raises(ValidationError) as caught:
        await rt.register_runbook(doc)
    assert len(caught.value.problems) == 7
    assert str(caught.value).count("unknown step type") == 5 and str(caught.value).endswith("; and 2 more")
    assert [p.step_id for p in caught.value.problems] == [f"s{n}" for n in range(7)]


async def test_cycles_name_the_steps_on_them(rt: Runtime) -> None:
    doc = {"id": "cyc", "steps": [
        {"id": "a", "type": "echo", "dependsOn": ["c"]},
        {"id": "b", "type": "echo", "dependsOn": ["a"]},
        {"id": "c", "type": "echo", "dependsOn": ["b"]},
        {"id": "ok", "type": "echo", "dependsOn": []},
    ]}
    problems = rt.validate_runbook(doc)
    assert [p.message for p in problems] == ["dependency cycle: a -> c -> b -> a"]


async def test_document_over_one_mebibyte_is_refused(rt: Runtime) -> None:
    doc = chain("a", config={"blob": "x" * (1024 * 1024)})
    assert any("larger than 1 MiB" in p.message for p in rt.validate_runbook(doc))


async def test_yaml_json_and_path_documents(rt: Runtime, tmp_path: pathlib.Path) -> None:
    yaml_text = "id: y\nsteps:\n  - id: a\n    type: echo\n"
    assert (await rt.register_runbook(yaml_text)).id == "y"
    assert (await rt.register_runbook(json.dumps(chain("a")))).version == 1
    file = tmp_path / "rb.yaml"
    file.write_text(yaml_text)
    assert (await rt.register_runbook(file)).version == 1  # the same document: the same version
    file.write_text(yaml_text + "name: from a file\n")
    assert (await rt.register_runbook(file)).version == 2
    with pytest.raises(ValidationError):
        await rt.register_runbook("id: [unclosed")


async def test_start_unknown_runbook_or_version_is_not_found(rt: Runtime) -> None:
    await rt.register_runbook(chain("a"))
    with pytest.raises(NotFound):
        await rt.start("nope")
    with pytest.raises(NotFound):
        await rt.start("chain", version=7)


async def test_same_input_returns_the_same_execution_unless_forced(rt: Runtime, autojump_clock: Any) -> None:
    await rt.register_runbook(chain("a", config={"sleep": 5}))
    first = await rt.start_execution("chain", {"b": 1, "a": [1, 2]}, {"tenantId": "t1"})
    again = await rt.start_execution("chain", {"a": [1, 2], "b": 1}, {"tenantId": "t1"})
    assert first.created and not again.created
    assert again.execution.id == first.execution.id
    expected = hashlib.sha256(canonical_json({"a": [1, 2], "b": 1}).encode()).hexdigest()
    assert first.execution.input_hash == expected
    assert canonical_json({"b": 1, "a": [1, 2]}) == '{"a":[1,2],"b":1}'
    other_tenant = await rt.start_execution("chain", {"a": [1, 2], "b": 1}, {"tenantId": "t2"})
    assert other_tenant.created
    forced = await rt.start_execution("chain", {"a": [1, 2], "b": 1}, {"tenantId": "t1"}, force=True)
    assert forced.created and forced.execution.id != first.execution.id


async def test_a_cancelled_execution_does_not_block_a_new_start(rt: Runtime, autojump_clock: Any) -> None:
    await rt.register_runbook(chain("a", config={"sleep": 5}))
    first = await rt.start("chain", {"x": 1})
    await rt.cancel(first.id, reason="test")
    second = await rt.start_execution("chain", {"x": 1})
    assert second.created and second.execution.id != first.id


async def test_idempotency_key(rt: Runtime, autojump_clock: Any) -> None:
    await rt.register_runbook(chain("a"))
    first = await rt.start("chain", {"x": 1}, idempotency_key="k1")
    await rt.wait(first.id)
    again = await rt.start_execution("chain", {"x": 1}, idempotency_key="k1", force=True)
    assert not again.created and again.execution.id == first.id
    with pytest.raises(ValidationError) as caught:
        await rt.start("chain", {"x": 2}, idempotency_key="k1")
    assert caught.value.problems[0].path == "Idempotency-Key"


async def test_input_schema_and_legal_basis_refuse_a_start(rt: Runtime) -> None:
    doc = {**chain("a"), "id": "strict", "requireLegalBasis": True,
           "inputSchema": {"type": "object", "required": ["host"], "properties": {"port": {"type": "integer"}}}}
    await rt.register_runbook(doc)
    with pytest.raises(ValidationError) as caught:
        await rt.start("strict", {"port": "x"}, {"tenantId": "t"})
    found = paths(caught.value.problems)
    assert ("context.legalBasis", "required by this runbook (requireLegalBasis)") in found
    assert any(p == "input" and "'host' is a required property" in m for p, m in found)
    assert any(p == "input.port" for p, _ in found)
    assert await rt.start("strict", {"host": "h"}, {"legalBasis": "incident"})


async def test_a_plain_callable_executor_fails_its_step_at_once_saying_it_is_not_async(
        rt: Runtime, autojump_clock: Any) -> None:
    """A ``lambda`` or plain ``def`` that returns a value (not an awaitable) fails the step
    once, with a message that says what to register, instead of being retried for an error
    no retry can cure; a lambda that returns a coroutine works."""
    async def fetch(ctx: Any) -> Any:
        return {"n": ctx.config["n"]}

    rt.register_executor("plain", lambda ctx: {"n": 1})
    rt.register_executor("wrapped", lambda ctx: fetch(ctx))
    retry = {"maxRetries": 3, "initialDelayMs": 1000, "jitter": False}
    await rt.register_runbook({"id": "plain", "steps": [{"id": "p", "type": "plain", "retryPolicy": retry}]})
    await rt.register_runbook({"id": "wrapped", "steps": [{"id": "w", "type": "wrapped", "config": {"n": 2}}]})
    failed = await rt.wait((await rt.start("plain", {})).id)
    step = failed.steps["p"]
    assert (failed.status, step.attempts, step.error.code, step.error.retryable) == (
        "failed", 1, "executor_not_async", False)
    assert "returned dict, not an awaitable" in step.error.message
    done = await rt.wait((await rt.start("wrapped", {})).id)
    assert (done.status, done.steps["w"].output) == ("completed", {"n": 2})


async def test_executor_log_and_evidence_are_committed_with_the_outcome(rt: Runtime, autojump_clock: Any) -> None:
    class Scanner:
        async def execute(self, ctx: Any) -> Any:
            ctx.log.warning("suspicious", host=ctx.config["host"])
            ctx.add_evidence("scan", {"host": ctx.config["host"], "open": [22]})
            if ctx.attempt == 1:
                raise StepFailed("flaky", retryable=True)
            return {"attempt": ctx.attempt, "tenant": ctx.tenant_id, "execution": ctx.execution_id}

    rt.register_executor("scan", Scanner())
    await rt.register_runbook({"id": "scan", "steps": [
        {"id": "s", "type": "scan", "config": {"host": "${input.host}"},
         "retryPolicy": {"maxRetries": 1, "initialDelayMs": 10, "jitter": False}}]})
    ex = await rt.start("scan", {"host": "10.0.0.1"}, {"tenantId": "acme"})
    final = await rt.wait(ex.id)
    assert final.output == {"attempt": 2, "tenant": "acme", "execution": ex.id}
    logs = await rt.logs(ex.id, step_id="s")
    assert [entry.message for entry in logs if entry.level == "warning" and entry.message == "suspicious"] == ["suspicious"] * 2
    assert logs[0].message == "step started"
    assert any(entry.message.startswith("step retrying") for entry in logs)
    assert logs[-1].message == "step succeeded"
    assert [e.level for e in await rt.logs(ex.id, level="warning")] == ["warning"] * len(await rt.logs(ex.id, level="warning"))
    evidence = await rt.evidence(ex.id)
    assert len(evidence) == 2
    data = {"host": "10.0.0.1", "open": [22]}
    assert evidence[0].sha256 == hashlib.sha256(canonical_json(data).encode()).hexdigest()
    assert evidence[0].step_id == "s" and evidence[0].kind == "scan"


async def test_audit_records_who_when_what_legal_basis_and_reason(rt: Runtime, autojump_clock: Any) -> None:
    await rt.register_runbook(chain("a", "b"))
    ex = await rt.start("chain", {}, {"tenantId": "t", "userId": "erin", "legalBasis": "GDPR 6(1)(f)", "reason": "INC-7"})
    await rt.wait(ex.id)
    audit = await rt.audit(ex.id)
    assert audit[0].action == "execution.started" and audit[0].actor == "erin"
    assert all(a.legal_basis == "GDPR 6(1)(f)" for a in audit)
    assert [a.action for a in audit if a.step_id == "a"] == ["step.started", "step.succeeded"]
    assert audit[-1].action == "execution.completed"
    assert [a.at for a in audit] == sorted(a.at for a in audit)


async def test_list_executions_newest_first_with_cursor(rt: Runtime, autojump_clock: Any) -> None:
    await rt.register_runbook(chain("a"))
    ids = [(await rt.start("chain", {"n": n})).id for n in range(5)]
    page = await rt.list_executions(limit=2)
    assert [e.id for e in page.items] == ids[::-1][:2]
    page2 = await rt.list_executions(limit=2, cursor=page.next_cursor)
    page3 = await rt.list_executions(limit=2, cursor=page2.next_cursor)
    assert [e.id for e in page2.items + page3.items] == ids[::-1][2:]
    assert page3.next_cursor is None
    for execution in ids:
        await rt.wait(execution)
    assert len((await rt.list_executions(status="completed", runbook_id="chain")).items) == 5
    with pytest.raises(ValidationError):
        await rt.list_executions(status="bogus")


async def test_watch_loses_no_state_to_a_slow_consumer(rt: Runtime, autojump_clock: Any) -> None:
    await rt.register_runbook(chain("a", "b", "c"))
    ex = await rt.start("chain")
    seen = []
    async for state in rt.watch(ex.id):
        seen.append(state)
        if len(seen) == 1:
            await trio.sleep(100)  # the execution finishes meanwhile
    assert seen[-1].status == "completed"
    assert [s.status.value for s in seen].count("completed") == 1
    statuses = [s.steps["c"].status.value for s in seen]
    assert statuses.index("running") < statuses.index("succeeded")


async def test_yaml_alias_bomb_is_refused_quickly(rt: Runtime) -> None:
    levels = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]" for i in range(8)]
    bomb = "\n".join(levels) + "\nid: bomb\nsteps: []\n"
    with pytest.raises(ValidationError) as caught:
        await rt.register_runbook(bomb)
    assert "YAML aliases" in caught.value.problems[0].message


async def test_types_is_a_mapping_of_the_registered_step_types(rt: Runtime) -> None:
    names = sorted(rt.types)  # a plain mapping: iterating gives names (it raised KeyError: 0)
    assert "call-service" in names and "echo" in names and names == sorted(rt.types.keys())
    assert len(rt.types) == len(names) and dict(rt.types.items())["echo"].name == "echo"
    assert rt.types.get("no-such-type") is None and "no-such-type" not in rt.types


async def test_the_final_log_entry_carries_the_execution_output(rt: Runtime, autojump_clock: Any) -> None:
    await rt.register_runbook({"id": "out", "output": {"total": "${a.n}"},
                               "steps": [{"id": "a", "type": "echo", "config": {"value": {"n": 3}}}]})
    final = await rt.wait((await rt.start("out", {})).id)
    [last] = [e for e in await rt.logs(final.id) if e.message == "execution completed"]
    assert final.output == {"total": 3} and last.data == {"output": {"total": 3}}  # was {"data": None}
