"""Property-based checks of the served API against its own OpenAPI document (schemathesis).

The document is loaded from the running server; each operation gets a bounded number of
generated requests (derandomized, so runs are repeatable), positive and negative, sent over
real HTTP from a worker thread while the server runs in the test's Trio loop. Every response
must be no 5xx, a documented status, the documented content type and headers, and (for
documented bodies) conform to the schema; negative requests must be refused and positive ones
accepted (except a runbook registration, see below); OPTIONS answers list exactly the
documented methods in Allow.

A second test runs the ``st`` command itself, as a user would against ``make run`` (every
phase but stateful, every check, a fixed seed), over a served gateway on the SQLite store.

Registering a runbook is exempt from "schema-valid requests are accepted": the document's
schema gives its structure, but its semantic rules (unique step ids, known dependencies and
types, each type's config, templates) are what JSON Schema cannot say, and they are answered
422 listing every problem.
"""

from __future__ import annotations

import copy
import pathlib
import sys
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable

from gateway.serve import load_runbooks_dir
from tests.gateway_fixtures import approval_runbook, echo_runbook, running_gateway

schemathesis = pytest.importorskip("schemathesis")

from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.core.failures import FailureGroup  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    allow_header_conformance,
    content_type_conformance,
    missing_required_header,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance, allow_header_conformance,
          missing_required_header]
SEMANTIC_REFUSALS = {"registerRunbook", "exportAudit"}  # schema-valid, refused 422 for rules JSON Schema
# cannot say (a runbook's rules; an audit bound that is neither a seq nor a real ISO 8601 time)
MAX_EXAMPLES = 15
MAX_NEGATIVE_EXAMPLES = 8  # negative generation is slow; bad identity headers are tested in test_gateway_edge


def _fuzz(url: str, document: dict[str, Any], mode: GenerationMode) -> list[str]:
    """Run every operation; return one line per failing operation (empty: all good)."""
    negative = mode is GenerationMode.NEGATIVE
    schema = schemathesis.openapi.from_dict(_without_identity_headers(document) if negative else document)
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        checks = [*CHECKS, negative_data_rejection] if negative else [*CHECKS, positive_data_acceptance]
        if operation.definition.raw.get("operationId") in SEMANTIC_REFUSALS:
            checks = [check for check in checks if check is not positive_data_acceptance]

        try:
            _property(url, operation, mode, checks)()
        except Unsatisfiable:  # negative mode: nothing of this operation can be made invalid
            continue
        except (Exception, FailureGroup) as exc:  # FailureGroup is a BaseExceptionGroup
            failures.append(f"{operation.label}: {type(exc).__name__}: {exc}")
    return failures


def _property(url: str, operation: Any, mode: GenerationMode, checks: list[Any]) -> Any:
    """The hypothesis test of one operation: its requests, each response checked."""

    @settings(max_examples=MAX_NEGATIVE_EXAMPLES if mode is GenerationMode.NEGATIVE else MAX_EXAMPLES,
              derandomize=True, database=None, deadline=None, phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        response = case.call(base_url=url, timeout=10)
        case.validate_response(response, checks=checks)

    return run


def _without_identity_headers(document: dict[str, Any]) -> dict[str, Any]:
    """The document without X-User-Id/X-Tenant-Id (negating their pattern costs seconds per operation)."""
    document = copy.deepcopy(document)
    for item in document["paths"].values():
        for operation in item.values():
            operation["parameters"] = [p for p in operation["parameters"]
                                       if p["name"] not in ("X-User-Id", "X-Tenant-Id")]
    return document


@pytest.mark.slow
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["positive", "negative"])
async def test_every_operation_conforms_to_the_served_openapi(mode: GenerationMode) -> None:
    async with running_gateway() as gw:
        await gw.register(echo_runbook())
        await gw.register(approval_runbook())
        await gw.start("approve-me", {"value": 1})
        document = (await gw.client.get("/api/v1/openapi.json")).json()
        with trio.fail_after(120):
            failures = await trio.to_thread.run_sync(_fuzz, gw.url, document, mode)
        assert not failures, "\n\n".join(failures)


ST_RUNS = (  # the registration and the audit export run apart: they alone may refuse schema-valid data (see above)
    ("--exclude-operation-id", "registerRunbook", "--exclude-operation-id", "exportAudit", "--checks", "all"),
    ("--include-operation-id", "registerRunbook", "--include-operation-id", "exportAudit", "--checks", "all",
     "--exclude-checks", "positive_data_acceptance"),
)


@pytest.mark.slow
async def test_the_st_command_with_every_check_finds_nothing(tmp_path: pathlib.Path) -> None:
    """What a user ran against ``make run``: the examples, coverage and fuzzing phases, every
    check, a fixed seed, bounded examples. Before the connection fix, requests here went
    unanswered ("Read timed out")."""
    st = pathlib.Path(sys.executable).with_name("st")
    async with running_gateway(store=f"sqlite:///{tmp_path / 'runbooks.db'}") as gw:
        await load_runbooks_dir(gw.runtime, str(pathlib.Path(__file__).parent.parent / "examples"))
        for options in ST_RUNS:
            with trio.fail_after(240):
                done = await trio.run_process(
                    [str(st), "run", f"{gw.url}/api/v1/openapi.json", "--phases", "examples,coverage,fuzzing",
                     "--max-examples", "12", "--seed", "99", "--request-timeout", "10", "--no-color",
                     *options],
                    capture_stdout=True, capture_stderr=True, check=False, cwd=tmp_path)
            output = done.stdout.decode(errors="replace")
            assert done.returncode == 0, output[-6000:]
            assert "Network Error" not in output and "timed out" not in output
