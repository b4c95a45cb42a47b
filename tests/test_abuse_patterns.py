"""``matches`` cannot stall the process: patterns run on RE2 (linear time), written by an
author or rendered from an input or an event; a pattern RE2 cannot run fails its step with
``bad_pattern`` (an event filter with one does not pass)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from runtime import Runtime, ValidationError

CATASTROPHIC = "^(a+)+$"  # the probe's pattern: backtracking doubles its time per 'a'
TEXT = "a" * 26 + "!"  # the probe's text
BOUND_S = 60  # the child below takes about two seconds; a backtracking engine takes minutes

CHILD = textwrap.dedent("""
    import json, resource, sys, trio
    resource.setrlimit(resource.RLIMIT_AS, (1 << 31, 1 << 31))  # 2 GiB: bounded in memory too
    from runtime import open_runtime
    PATTERN, TEXT = sys.argv[1], sys.argv[2]

    async def echo(ctx):
        return ctx.config.get("value", {})

    DOC = {"id": "probe", "steps": [
        {"id": "templated-when", "type": "echo", "when": {"field": "input.text", "operator": "matches",
                                                          "value": "${input.re}"}},
        {"id": "written", "type": "conditional", "dependsOn": [],
         "config": {"condition": {"field": "input.text", "operator": "matches", "value": PATTERN}}},
        {"id": "long", "type": "conditional", "dependsOn": [],
         "config": {"condition": {"field": "input.long", "operator": "matches", "value": "${input.re}"}}},
        {"id": "wait", "type": "wait-for-event", "dependsOn": [],
         "config": {"eventType": "probe", "correlationKey": "k", "timeoutMs": 60000,
                    "filter": {"field": "payload.text", "operator": "matches", "value": "${input.re}"}}},
    ]}
    RULE = {"id": "rule", "triggers": [{"id": "on-probe", "event": {"type": "probe.rule", "filter": {
        "field": "payload.text", "operator": "matches", "value": "${payload.re}"}}}],
        "steps": [{"id": "s", "type": "echo"}]}

    async def main():
        async with open_runtime("memory", executors={"echo": echo}) as rt:
            await rt.register_runbook(DOC)
            await rt.register_runbook(RULE)
            ex = await rt.start("probe", input={"re": PATTERN, "text": TEXT, "long": "a" * 100_000 + "!"})
            for event_type in ("probe", "probe.rule"):  # two whose pattern runs over the text, one that matches
                for text in (TEXT, TEXT, "aaa"):
                    await rt.publish_event(event_type, "k", {"re": PATTERN, "text": text})
            final = await rt.wait(ex.id)
            started = (await rt.list_executions(runbook_id="rule")).items
            print(json.dumps({"rule": len(started),
                              **{sid: [s.status.value, s.output] for sid, s in final.steps.items()}}))

    trio.run(main)
""")


def test_the_probes_catastrophic_patterns_do_not_stall_the_engine() -> None:
    """Templated (``${input.re}``, ``${payload.re}``) and author-written, through the engine, in a
    child process so that the test is bounded in time and memory whatever the engine does."""
    done = subprocess.run([sys.executable, "-c", CHILD, CATASTROPHIC, TEXT], capture_output=True, text=True,
                          timeout=BOUND_S, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    steps = json.loads(done.stdout.strip().splitlines()[-1])
    assert steps["templated-when"][0] == "skipped"
    assert steps["written"] == ["succeeded", {"result": False, "branch": []}]
    assert steps["long"] == ["succeeded", {"result": False, "branch": []}]
    assert steps["wait"][0] == "succeeded" and steps["wait"][1]["payload"]["text"] == "aaa"
    assert steps["rule"] == 1  # only the event whose text the payload's pattern matches


BACKREFERENCE = r"(a)\1"  # RE2 cannot run it: no backreferences


async def test_a_templated_pattern_re2_cannot_run_fails_the_step_bad_pattern(rt: Runtime, autojump_clock: Any) -> None:
    await rt.register_runbook({"id": "gate", "steps": [
        {"id": "check", "type": "conditional",
         "config": {"condition": {"field": "input.text", "operator": "matches", "value": "${input.re}"}}}]})
    final = await rt.wait((await rt.start("gate", input={"re": BACKREFERENCE, "text": "aa"})).id)
    error = final.steps["check"].error
    assert final.status == "failed" and error is not None
    assert (error.code, error.retryable) == ("bad_pattern", False)
    assert "invalid escape sequence" in error.message


async def test_a_when_with_a_pattern_re2_cannot_run_fails_its_step(rt: Runtime, autojump_clock: Any) -> None:
    await rt.register_runbook({"id": "when", "steps": [
        {"id": "maybe", "type": "echo", "when": {"field": "input.text", "operator": "matches", "value": "${input.re}"}}]})
    final = await rt.wait((await rt.start("when", input={"re": "(?=a)", "text": "a"})).id)
    assert final.steps["maybe"].status == "failed"
    assert final.steps["maybe"].error is not None and final.steps["maybe"].error.code == "bad_pattern"


async def test_a_while_with_a_pattern_re2_cannot_run_fails_the_loop(rt: Runtime, autojump_clock: Any) -> None:
    await rt.register_runbook({"id": "loop", "steps": [{"id": "again", "type": "loop", "config": {
        "while": {"field": "input.text", "operator": "matches", "value": "${input.re}"}, "maxIterations": 3,
        "step": {"type": "echo"}}}]})
    final = await rt.wait((await rt.start("loop", input={"re": "(?<=a)", "text": "a"})).id)
    assert final.steps["again"].error is not None and final.steps["again"].error.code == "bad_pattern"


async def test_an_event_filter_with_a_pattern_re2_cannot_run_does_not_pass(rt: Runtime, autojump_clock: Any) -> None:
    await rt.register_runbook({"id": "rule", "steps": [{"id": "s", "type": "echo"}], "triggers": [
        {"id": "r", "event": {"type": "e", "filter": {
            "field": "payload.text", "operator": "matches", "value": "${payload.re}"}}}]})
    refused = await rt.publish_event("e", "k", {"re": BACKREFERENCE, "text": "aa"})
    taken = await rt.publish_event("e", "k", {"re": "a+", "text": "aa"})
    assert (refused.delivered, taken.delivered) == (0, 1)


@pytest.mark.parametrize(("pattern", "reason"), [
    (BACKREFERENCE, "invalid escape sequence"), ("(?=x)", "invalid perl operator"), ("a{1001}", "repetition"),
])
async def test_validation_refuses_an_author_written_pattern_re2_cannot_run(rt: Runtime, pattern: str,
                                                                           reason: str) -> None:
    with pytest.raises(ValidationError) as caught:
        await rt.register_runbook({"id": "bad", "steps": [
            {"id": "s", "type": "echo", "when": {"field": "input.x", "operator": "matches", "value": pattern}}]})
    assert any(p.path == "steps[0].when.value" and reason in p.message for p in caught.value.problems)
