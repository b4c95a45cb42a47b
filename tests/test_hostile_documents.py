"""Runbook documents a careless or hostile author might send: odd YAML keys, values JSON cannot
hold, unresolvable JSON Schemas, durations and counts past what the clock and C can hold.
Each is refused at registration with a problem naming its path, or read as the author meant;
none gets as far as a crash."""

from __future__ import annotations

import io
import pathlib
from datetime import datetime
from typing import Any

import pytest

from gateway.cli import validate_files
from runtime import Runtime, ValidationError
from runtime.model.jsonsafe import first_problem
from runtime.model.limits import MAX_DURATION_MS

HUGE = 10**26  # 27 digits: a timeoutMs a user actually sent


def problems_of(rt: Runtime, doc: Any) -> list[tuple[str, str]]:
    return [(p.path, p.message) for p in rt.validate_runbook(doc)]


# ---------------------------------------------------------------------------- jsonsafe

@pytest.mark.parametrize(("value", "path", "fragment"), [
    ({"a": {1, 2}}, "$.a", "set"),
    ({"a": [datetime(2024, 1, 1)]}, "$.a[0]", "datetime"),
    ({"a": b"x"}, "$.a", "bytes"),
    ({True: 1}, "$", "key that is not a string (bool True)"),
    ({"a": {None: 1}}, "$.a", "key that is not a string"),
    ({"a": float("nan")}, "$.a", "finite"),
    ({"a": [1, float("-inf")]}, "$.a[1]", "finite"),
    ({"a": 10**4000}, "$.a", "too large to write as JSON"),
    ({"a": [-(10**4000)]}, "$.a[0]", "too large to write as JSON"),
    ({"a": "\ud800"}, "$.a", "UTF-8"),
    ({"\udfff": 1}, "$", "UTF-8"),
    ({"weird key": {"x": object()}}, '$["weird key"].x', "object"),
])
def test_first_problem_names_the_path_and_the_reason(value: Any, path: str, fragment: str) -> None:
    problem = first_problem(value)
    assert problem is not None
    assert problem.path == path
    assert fragment in problem.message


def test_first_problem_accepts_plain_json_and_limits_depth() -> None:
    assert first_problem({"a": [1, 2.5, "x", None, True, {"b": (1, 2)}], "big": 10**300}) is None
    deep: Any = "leaf"
    for _ in range(100):
        deep = [deep]
    problem = first_problem(deep)
    assert problem is not None and "nested deeper than 64" in problem.message
    wide = list(range(700_000))
    problem = first_problem(wide)
    assert problem is not None and "more than 600000 values" in problem.message


# ---------------------------------------------------------------------------- YAML keys

ON_KEY_YAML = """\
id: weekly-report
steps:
  - id: schedule
    type: echo
    config:
      value: {on: weekdays, at: "09:00", yes: 1, 1: one, ~: nothing}
"""


async def test_a_yaml_key_that_reads_as_a_boolean_is_its_text(rt: Runtime) -> None:
    runbook = await rt.register_runbook(ON_KEY_YAML)
    execution = await rt.wait((await rt.start(runbook.id)).id)
    assert execution.status.value == "completed"
    assert execution.output == {"on": "weekdays", "at": "09:00", "yes": 1, "1": "one", "~": "nothing"}


def test_runbooks_validate_reports_such_a_file_without_a_traceback(tmp_path: pathlib.Path) -> None:
    good = tmp_path / "on.yaml"
    good.write_text("id: weekly\nsteps:\n  - id: a\n    type: call-service\n    config:\n"
                    "      url: /report\n      method: POST\n      body: {on: weekdays, at: '09:00'}\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("id: x\nsteps:\n  - {id: a, type: call-service, config: {url: /x, timeoutMs: !!int nope}}\n")
    out = io.StringIO()
    assert validate_files([str(good), str(bad)], out) == 1
    text = out.getvalue()
    assert f"{good}: valid" in text
    assert f"{bad}: $: not valid YAML or JSON: a value cannot be read (ValueError" in text
    assert "Traceback" not in text


@pytest.mark.parametrize("text", ["a: !!int foo", "a: !!float x", "a: !!bool maybe", "a: !!timestamp x",
                                  "? [a, b]\n: 1", "a: !!python/object:os.system x"])
async def test_yaml_that_cannot_be_constructed_is_a_validation_error(rt: Runtime, text: str) -> None:
    with pytest.raises(ValidationError) as caught:
        await rt.register_runbook("id: x\n" + text + "\nsteps: [{id: a, type: echo}]\n")
    assert caught.value.problems[0].path == "$"
    assert caught.value.problems[0].message.startswith("not valid YAML or JSON")


@pytest.mark.parametrize(("config", "path", "fragment"), [
    ({True: 1, "x": 2}, "steps[0].config", "key that is not a string (bool True)"),
    ({"x": {"y": {1, 2}}}, "steps[0].config.x.y", "set"),
    ({"when": datetime(2024, 1, 1)}, "steps[0].config.when", "datetime"),
    ({"x": float("nan")}, "steps[0].config.x", "finite"),
])
async def test_a_python_document_with_non_json_values_is_refused_naming_the_path(
        rt: Runtime, config: dict[Any, Any], path: str, fragment: str) -> None:
    doc = {"id": "py", "steps": [{"id": "a", "type": "echo", "config": config}]}
    with pytest.raises(ValidationError) as caught:
        await rt.register_runbook(doc)
    [problem] = caught.value.problems
    assert problem.path == path
    assert fragment in problem.message


@pytest.mark.parametrize("where", ["description", "name", "id"])
async def test_a_lone_surrogate_in_a_document_is_refused(rt: Runtime, where: str) -> None:
    doc: dict[str, Any] = {"id": "s", "steps": [{"id": "a", "type": "echo"}], where: "bad \ud800 text"}
    with pytest.raises(ValidationError) as caught:
        await rt.register_runbook(doc)
    assert [(p.path, p.message) for p in caught.value.problems] == [
        (where, "not JSON: a string that cannot be encoded as UTF-8 (a lone surrogate)")]
    # the same escape in YAML or JSON text
    with pytest.raises(ValidationError):
        await rt.register_runbook('{"id": "s", "description": "\\ud800", "steps": [{"id": "a", "type": "echo"}]}')


# ---------------------------------------------------------------------------- inputSchema

def schema_doc(schema: Any) -> dict[str, Any]:
    return {"id": "schema", "inputSchema": schema, "steps": [{"id": "a", "type": "echo"}]}


@pytest.mark.parametrize(("schema", "path", "fragment"), [
    ({"type": "object", "properties": {"n": {"$ref": "#/$defs/missing"}}},
     "inputSchema.properties.n.$ref", "'#/$defs/missing' does not resolve within the schema"),
    ({"properties": {"n": {"$ref": "https://schemas.example.com/n.json"}}},
     "inputSchema.properties.n.$ref", "remote references are never fetched"),
    ({"$ref": "other.json"}, "inputSchema.$ref", "does not resolve"),
    ({"$schema": "http://example.com/my-dialect"}, "inputSchema.$schema", "unknown JSON Schema dialect"),
    ({"$schema": ["x"]}, "inputSchema.$schema", "unknown JSON Schema dialect"),
    ({"type": "strnig"}, "inputSchema.type", "not a valid JSON Schema"),
    ({"properties": {"n": {"pattern": "("}}}, "inputSchema.properties.n.pattern", "not a valid JSON Schema"),
])
async def test_an_input_schema_is_checked_whole_at_registration(
        rt: Runtime, schema: Any, path: str, fragment: str) -> None:
    found = problems_of(rt, schema_doc(schema))
    assert [p for p, _ in found] == [path]
    assert fragment in found[0][1]
    with pytest.raises(ValidationError):
        await rt.register_runbook(schema_doc(schema))


async def test_local_references_resolve_and_are_applied_at_start(rt: Runtime) -> None:
    schema = {"$defs": {"port": {"type": "integer", "maximum": 65535}},
              "type": "object", "properties": {"port": {"$ref": "#/$defs/port"}},
              "$id": "https://runbooks.example/input"}
    await rt.register_runbook(schema_doc(schema))
    with pytest.raises(ValidationError) as caught:
        await rt.start("schema", {"port": 70000})
    assert [(p.path, p.message) for p in caught.value.problems] == [
        ("input.port", "70000 is greater than the maximum of 65535")]
    assert (await rt.wait((await rt.start("schema", {"port": 22})).id)).status.value == "completed"


# ---------------------------------------------------------------------------- bounds

def one_step(step: dict[str, Any], **header: Any) -> dict[str, Any]:
    return {"id": "bounds", **header, "steps": [{"id": "a", **step}]}


DURATION = f"must be a positive integer of milliseconds, at most {MAX_DURATION_MS} (one year)"


@pytest.mark.parametrize(("doc", "path", "message"), [
    (one_step({"type": "echo"}, timeoutMs=HUGE), "timeoutMs", DURATION),
    (one_step({"type": "echo", "timeoutMs": HUGE}), "steps[0].timeoutMs", DURATION),
    (one_step({"type": "echo", "timeoutMs": MAX_DURATION_MS + 1}), "steps[0].timeoutMs", DURATION),
    (one_step({"type": "call-service", "config": {"url": "/x", "timeoutMs": HUGE}}),
     "steps[0].config.timeoutMs", DURATION),
    (one_step({"type": "wait-for-event", "config": {"eventType": "e", "correlationKey": "k", "timeoutMs": HUGE}}),
     "steps[0].config.timeoutMs", DURATION),
    (one_step({"type": "human-approval", "config": {"approvers": ["a"], "timeoutMs": HUGE}}),
     "steps[0].config.timeoutMs", DURATION),
    (one_step({"type": "human-approval", "config": {"approvers": "${input.who}", "minApprovals": 5000}}),
     "steps[0].config.minApprovals", "must be an integer from 1 to 1000"),
    (one_step({"type": "loop", "config": {"items": [1], "step": {"type": "echo", "timeoutMs": HUGE}}}),
     "steps[0].config.step.timeoutMs", DURATION),
    (one_step({"type": "loop", "config": {"items": [1], "concurrency": HUGE, "step": {"type": "echo"}}}),
     "steps[0].config.concurrency", "must be an integer from 1 to 1000"),
    (one_step({"type": "loop", "config": {"items": [1], "maxIterations": HUGE, "step": {"type": "echo"}}}),
     "steps[0].config.maxIterations", f"loop maxIterations {HUGE} exceeds the cap of 1000"),
    (one_step({"type": "loop", "config": {"items": [1], "step": {"type": "echo",
                                                                "retryPolicy": {"maxRetries": HUGE}}}}),
     "steps[0].config.step.retryPolicy.maxRetries", "must be an integer from 0 to 100"),
    (one_step({"type": "echo"}, maxConcurrentSteps=HUGE), "maxConcurrentSteps", "must be an integer from 1 to 1000"),
    (one_step({"type": "echo", "retryPolicy": {"maxRetries": 101}}), "steps[0].retryPolicy.maxRetries",
     "must be an integer from 0 to 100"),
    (one_step({"type": "echo", "retryPolicy": {"initialDelayMs": HUGE}}), "steps[0].retryPolicy.initialDelayMs",
     f"must be a non-negative integer of milliseconds, at most {MAX_DURATION_MS} (one year)"),
    (one_step({"type": "echo", "retryPolicy": {"maxDelayMs": -1}}), "steps[0].retryPolicy.maxDelayMs",
     f"must be a non-negative integer of milliseconds, at most {MAX_DURATION_MS} (one year)"),
    (one_step({"type": "echo", "retryPolicy": {"backoffMultiplier": 1e308}}),
     "steps[0].retryPolicy.backoffMultiplier", "must be a number from 1 to 10"),
    (one_step({"type": "echo", "retryPolicy": {"backoffMultiplier": 0.5}}),
     "steps[0].retryPolicy.backoffMultiplier", "must be a number from 1 to 10"),
    (one_step({"type": "echo", "retryPolicy": {"backoffMultiplier": True}}),
     "steps[0].retryPolicy.backoffMultiplier", "must be a number from 1 to 10"),
    (one_step({"type": "echo", "retryPolicy": {"jitter": "yes"}}), "steps[0].retryPolicy.jitter",
     "must be true or false"),
])
async def test_every_duration_and_count_is_bounded_at_validation(
        rt: Runtime, doc: dict[str, Any], path: str, message: str) -> None:
    assert (path, message) in problems_of(rt, doc)
    with pytest.raises(ValidationError):
        await rt.register_runbook(doc)


async def test_the_largest_accepted_values_run(rt: Runtime) -> None:
    doc = one_step({"type": "echo", "timeoutMs": MAX_DURATION_MS,
                    "retryPolicy": {"maxRetries": 100, "initialDelayMs": 0, "backoffMultiplier": 10,
                                    "maxDelayMs": MAX_DURATION_MS}},
                   timeoutMs=MAX_DURATION_MS, maxConcurrentSteps=1000)
    await rt.register_runbook(doc)
    assert (await rt.wait((await rt.start("bounds")).id)).status.value == "completed"


async def test_a_templated_call_service_timeout_past_the_bound_fails_the_step_not_the_execution(
        rt: Runtime) -> None:
    await rt.register_runbook(one_step({"type": "call-service",
                                        "config": {"url": "http://127.0.0.1:9/x", "timeoutMs": "${input.t}"}}))
    execution = await rt.wait((await rt.start("bounds", {"t": 10**15})).id)
    assert execution.status.value == "failed"
    error = execution.steps["a"].error
    assert error is not None and error.code == "config"
    assert "timeoutMs" in error.message and "one year" in error.message
