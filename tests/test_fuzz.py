"""Fuzzing as tests (hypothesis, derandomized, bounded): the validator, document loading, the
embedded API running whatever it accepts, and every REST body over real HTTP.

Properties: nothing raises but the engine's own errors; no 5xx; no actor crash (the actors
logger records every crash, restarted or not); a document that is accepted runs to a
finished state, or to a waiting one (an approval with no timeout), on the memory store;
readiness stays green throughout.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import trio
import trio.testing
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime import RunbookError, Settings, StepContext, StepFailed, ValidationError, open_runtime
from runtime.documents.validate import validate_document
from runtime.model.records import Change, ChangeResult
from runtime.model.wire import dumps, dumps_data, load_document
from runtime.shell.step_types import StepTypes
from runtime.store import MemoryStore
from runtime.store.schema import (
    event_row,
    evidence_row,
    header_row,
    log_row,
    runbook_row,
)
from tests import fuzz_strategies as fz
from tests.gateway_fixtures import gate_runbook, running_gateway


def fuzz(examples: int) -> settings:
    """Bounded, deterministic (derandomized: the same examples on every run), no database."""
    return settings(max_examples=examples, derandomize=True, database=None, deadline=None,
                    suppress_health_check=list(HealthCheck))
FINISHED = {"completed", "failed", "cancelled", "timed_out"}
WAITING = {"running", "awaiting_approval", "paused"}  # only with a step that waits without a deadline


class _Crashes(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "crashed" in record.getMessage() or record.name == "runbooks.persistence":
            self.records.append(f"{record.name}: {record.getMessage()} {record.exc_text or ''}")


@contextmanager
def no_actor_crash() -> Iterator[_Crashes]:
    handler = _Crashes()
    watched = [logging.getLogger("actors"), logging.getLogger("runbooks.persistence")]
    for logger in watched:
        logger.addHandler(handler)
    try:
        yield handler
    finally:
        for logger in watched:
            logger.removeHandler(handler)
    assert not handler.records, "\n".join(handler.records)


def types() -> StepTypes:
    step_types = StepTypes()
    for name in ("echo", "fail"):
        step_types.register(name, _executor)
    return step_types


async def _executor(ctx: StepContext) -> Any:
    match ctx.config.get("raise"):
        case "step":
            raise StepFailed("asked to fail", retryable=bool(ctx.attempt % 2))
        case "crash":
            raise RuntimeError("an executor bug")
        case "set":
            return {"set": {1, 2}}
        case "nan":
            return math.nan
    ctx.log.info("ran", config=ctx.config)
    return ctx.config.get("value", {"ok": True})


# ---------------------------------------------------------------------------- the validator

@fuzz(300)
@given(document=st.one_of(fz.runbooks(), fz.json_values(python_keys=True), fz.anything))
def test_the_validator_answers_every_document_with_problems_never_an_exception(document: Any) -> None:
    _validates(document)


@fuzz(250)
@given(document=fz.plain_runbooks())
def test_the_validator_answers_wrong_structures_in_plain_json_with_problems(document: Any) -> None:
    _validates(document)  # plain JSON: every check past the JSON one runs


def _validates(document: Any) -> None:
    problems = validate_document(document, types())
    assert isinstance(problems, list)
    for problem in problems:
        assert isinstance(problem.path, str) and isinstance(problem.message, str)
        problem.message.encode("utf-8")  # a problem itself can always be sent back


def _yaml(value: Any) -> str:
    try:
        return yaml.safe_dump(value, allow_unicode=True)
    except Exception:  # a value YAML cannot write: its JSON text (also YAML), if it has one
        try:
            return json.dumps(value)
        except ValueError:
            return "{}"


YAML_SNIPPETS = ["on: weekdays", "a: !!int foo", "a: !!binary AAAA", "a: !!set {x}", "? [a]\n: b", "a: &x [*x]",
                 "a: !!timestamp 2024-01-01", "<<: {a: 1}", "a: .nan", "%YAML 1.1\n---\na: 1", "a: !!python/none ''",
                 "- - - - - -", "a: |\n  \ud800", "\ufeffid: x", "a: 0x1F", "a: 1_000"]


@fuzz(200)
@given(text=st.one_of(st.text(max_size=80), st.builds(_yaml, fz.runbooks()), st.sampled_from(YAML_SNIPPETS),
                      st.builds(lambda a, b: a + "\n" + b, st.sampled_from(YAML_SNIPPETS), st.builds(_yaml, fz.runbooks()))))
def test_loading_any_text_gives_a_document_or_a_validation_error(text: str) -> None:
    try:
        document = load_document(text)
    except ValidationError as exc:
        assert exc.problems
        return
    assert isinstance(document, dict)
    validate_document(document, types())


# ---------------------------------------------------------------------------- the engine runs it

def _strict_json(text: str) -> None:
    def refuse(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    json.loads(text, parse_constant=refuse)


def _text(value: Any) -> None:
    if isinstance(value, str):
        value.encode("utf-8")  # what sqlite3 and psycopg do with it
        if "\x00" in value:
            raise ValueError("a NUL character (PostgreSQL text cannot hold one)")


class StrictStore(MemoryStore):
    """The memory store, refusing what the SQL stores refuse: each row is built as they build
    it; every text must be UTF-8 without NUL, every JSON column strict JSON. (The plain memory
    store keeps Python objects: a set in a step's output "completed" there.)"""

    def commit(self, changes: Sequence[Change]) -> list[ChangeResult]:
        for change in changes:
            for row, json_column in _rows(change):
                for value in row:
                    _text(value)
                _strict_json(row[json_column])
        return super().commit(changes)


def _rows(change: Change) -> Iterator[tuple[tuple[Any, ...], int]]:
    for execution in (change.new_execution, change.execution):
        if execution is not None:
            yield header_row(execution, str), 8
            for position, (step_id, state) in enumerate(execution.steps.items()):
                yield (execution.id, step_id, position, dumps(state)), 3
    for execution_id, step_id, position, state in change.steps:
        yield (execution_id, step_id, position, dumps(state)), 3
    yield from ((log_row(entry, str), 5) for entry in change.logs)
    yield from (((entry.execution_id, str(entry.at), entry.actor, entry.action, entry.step_id, entry.legal_basis,
                  entry.reason, dumps_data(entry.data)), 7) for entry in change.audit)  # as the audit ledger writes it
    yield from ((evidence_row(item, str), 5) for item in change.evidence)
    yield from ((event_row(event, str), 4) for event in change.retain_events)
    if change.runbook is not None:
        yield runbook_row(change.runbook, datetime.now(UTC), str), 2


def _service(request: httpx.Request) -> httpx.Response:
    match request.url.path:
        case "/fail":
            return httpx.Response(500, json={"error": "down"})
        case "/odd":
            return httpx.Response(200, content=b'{"big": 1' + b"0" * 40 + b', "cut', headers={"Content-Type": "application/json"})
    return httpx.Response(200, json={"ok": True, "path": request.url.path, "n": 10**30})


async def _run(document: Any, run_input: Any, event: Any) -> None:
    async with httpx.AsyncClient(transport=httpx.MockTransport(_service)) as http, \
            open_runtime(StrictStore(), settings=Settings(call_service_base_url="http://svc.test"), http=http) as rt:
        for name in ("echo", "fail"):
            rt.register_executor(name, _executor)
        try:
            await rt.register_runbook(document)
            execution = await rt.start("fuzzed", run_input)
        except (ValidationError, RunbookError):
            return
        with trio.move_on_after(3 * 365 * 24 * 3600):  # virtual: every deadline passes
            try:
                await rt.publish_event(str(event.get("type", "e")), "k", event.get("payload"))
            except ValidationError:
                pass  # a payload no store can hold: refused, nothing else happens
            await rt.wait(execution.id)
        final = await rt.get(execution.id)
        assert final.status.value in FINISHED | WAITING, final.status
        if final.status.value in WAITING:  # then something waits with no deadline: an approval
            assert any(s.status.value in ("awaiting_approval", "waiting", "running") for s in final.steps.values())
        assert final.error is None or final.error.code != "crashed", final.error
        await rt.ready()


@fuzz(150)
@given(document=fz.runbooks(), run_input=fz.json_values(), event=st.fixed_dictionaries(
    {}, optional={"type": st.sampled_from(["e", "ticket.closed"]), "payload": fz.json_values()}))
def test_accepted_random_runbooks_run_to_an_end_or_a_wait_without_an_actor_crash(
        document: dict[str, Any], run_input: Any, event: dict[str, Any]) -> None:
    with no_actor_crash():
        trio.run(_run, document, run_input, event, clock=trio.testing.MockClock(autojump_threshold=0))


async def _call_everything(arguments: list[Any]) -> None:
    gate = trio.Event()

    async def held(ctx: StepContext) -> Any:
        await gate.wait()
        return {"held": True}

    async with open_runtime(StrictStore()) as rt:
        rt.register_executor("held", held)
        await rt.register_runbook({"id": "api", "steps": [{"id": "h", "type": "held"},
                                                         {"id": "ok", "type": "human-approval",
                                                          "config": {"approvers": ["boss"]}}]})
        execution = await rt.start("api")
        calls = [
            lambda a: rt.pause(execution.id, reason=a), lambda a: rt.resume(execution.id, reason=a),
            lambda a: rt.cancel(a, reason="x"), lambda a: rt.start("api", a, force=True),
            lambda a: rt.start("api", {}, a), lambda a: rt.publish_event("e", "k", a),
            lambda a: rt.publish_event(a, a), lambda a: rt.submit_approval(execution.id, "ok", approver=a,
                                                                           decision="approve", comment=a),
            lambda a: rt.logs(execution.id, after=a), lambda a: rt.list_executions(cursor=a),
            lambda a: rt.get_runbook("api", a), lambda a: rt.replay(execution.id, reason=a),
        ]
        for index, argument in enumerate(arguments):
            try:
                await calls[index % len(calls)](argument)
            except RunbookError:
                pass  # refused, or a state that does not allow it: never anything else
        await rt.ready()
        if (await rt.get(execution.id)).status.value in ("paused", "pausing"):
            await rt.resume(execution.id)
        gate.set()
        with trio.fail_after(5):
            async for state in rt.watch(execution.id):
                if state.status.value != "running":
                    break
        await rt.ready()


@fuzz(120)
@given(arguments=st.lists(fz.json_values(python_keys=True), min_size=1, max_size=12))
def test_the_embedded_api_refuses_any_argument_with_its_own_errors_and_nothing_crashes(arguments: list[Any]) -> None:
    with no_actor_crash():
        trio.run(_call_everything, arguments, clock=trio.testing.MockClock(autojump_threshold=0))


# ---------------------------------------------------------------------------- every REST body

BIG = "__an integer of 5000 digits__"


def _json_text(value: Any) -> bytes:
    """JSON as a client may send it: lone surrogates as \\udXXX escapes, NaN and Infinity too,
    and integers with more digits than Python turns into text (written out by hand)."""
    text = json.dumps(_marked(value), ensure_ascii=True, allow_nan=True)
    return text.replace(json.dumps(BIG), "9" * 5000).encode()


def _marked(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 14_000:
        return BIG
    if isinstance(value, list):
        return [_marked(item) for item in value]
    if isinstance(value, dict):
        return {key: _marked(item) for key, item in value.items()}
    return value


def _fuzz_rest(url: str, execution_id: str) -> list[str]:
    failures: list[str] = []
    targets = {
        "start": ("POST", "/api/v1/executions", fz.start_bodies),
        "event": ("POST", "/api/v1/events", fz.event_bodies),
        "approval": ("POST", f"/api/v1/executions/{execution_id}/steps/held/approvals", fz.approval_bodies),
        "pause": ("POST", f"/api/v1/executions/{execution_id}/pause", fz.control_bodies),
        "resume": ("POST", f"/api/v1/executions/{execution_id}/resume", fz.control_bodies),
        "retry": ("POST", f"/api/v1/executions/{execution_id}/steps/held/retry", fz.control_bodies),
        "register": ("POST", "/api/v1/runbooks", fz.runbooks()),
        "validate": ("POST", "/api/v1/runbooks/validate", fz.runbooks()),
        "register-yaml": ("POST", "/api/v1/runbooks", fz.runbooks()),
    }
    with httpx.Client(base_url=url, timeout=10) as client:

        @fuzz(220)
        @given(name=st.sampled_from(sorted(targets)), data=st.data())
        def run(name: str, data: st.DataObject) -> None:
            method, path, bodies = targets[name]
            body = data.draw(bodies)
            if name == "register-yaml":
                content, kind = _yaml(body).encode("utf-8", "surrogatepass"), "application/yaml"
            else:
                content, kind = _json_text(body), "application/json"
            response = client.request(method, path, content=content, headers={"Content-Type": kind})
            if response.status_code >= 500:
                failures.append(f"{name} {content[:300]!r} -> {response.status_code} {response.text[:300]}")
            elif response.status_code >= 400:
                assert response.headers["content-type"] == "application/problem+json"

        run()
    return failures


@pytest.mark.slow
async def test_every_rest_body_is_answered_without_a_5xx_and_nothing_crashes() -> None:
    with no_actor_crash():
        async with running_gateway(store=StrictStore()) as gw:  # type: ignore[arg-type]
            await gw.register({**gate_runbook("fuzz-target"), "inputSchema": {"type": ["object", "array", "null"]}})
            execution = await gw.start("fuzz-target")
            await gw.steps.wait_until_waiting("g1")
            with trio.fail_after(120):
                failures = await trio.to_thread.run_sync(_fuzz_rest, gw.url, execution["id"])
            assert not failures, "\n".join(failures[:10])
            assert (await gw.client.get("/health/ready")).status_code == 200
            gw.steps.open("g1")
            state = await gw.execution(execution["id"])
            if state["status"] == "paused":  # a fuzzed pause may have been accepted
                assert (await gw.client.post(f"/api/v1/executions/{execution['id']}/resume", json={})).status_code == 200
            final = await gw.wait_for(execution["id"], "completed", "failed", "cancelled")
            assert final["status"] in ("completed", "failed", "cancelled")
