"""A secret value leaves the process in no form the engine produces: as it is, escaped (a
Python repr of str or bytes), JSON-escaped, percent-encoded (``quote`` and ``quote_plus``),
base64 (URL userinfo -> Basic), in another case; through no output: step errors, outputs,
logs, audit, evidence, the execution over GET and SSE, and the server's own log (the
``httpx`` logger writes request URLs). Hypothesis fuzzes the values."""

from __future__ import annotations

import base64
import json
import logging
import pathlib
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime import StepContext
from runtime.security.secrets import Secrets
from tests.echo_service import echo_service
from tests.gateway_fixtures import running_gateway

PROBE = "tok-Abc123/+%x\n"  # a YAML block scalar ends in a newline; '/', '+', '%' get percent-encoded


def forms(value: str, user: str = "user") -> dict[str, str]:
    """Every form of ``value`` the engine may produce, by name."""
    return {
        "as is": value, "repr": repr(value)[1:-1], "bytes repr": repr(value.encode())[2:-1],
        "json": json.dumps(value)[1:-1], "json utf-8": json.dumps(value, ensure_ascii=False)[1:-1],
        "quote": quote(value), "quote safe=''": quote(value, safe=""), "quote_plus": quote_plus(value),
        "lower": value.lower(), "upper": value.upper(),
        "basic": base64.b64encode(f"{user}:{value}".encode()).decode().rstrip("="),
        "basic urlsafe": base64.urlsafe_b64encode(f"{user}:{value}".encode()).decode().rstrip("="),
    }


def leaks(value: str, text: str) -> list[str]:
    return [name for name, form in forms(value).items() if form and form in text]


@pytest.mark.parametrize("name", sorted(forms(PROBE)))
def test_every_form_of_a_value_is_redacted(name: str) -> None:
    secrets = Secrets(environ={"RUNBOOKS_SECRET_KEY": PROBE})
    text = f"before {forms(PROBE)[name]} after"
    assert leaks(PROBE, secrets.redact_text(text)) == []
    assert "***" in secrets.redact_text(text)


def test_the_probes_messages_are_redacted() -> None:
    """The exact texts of the issue: h11's message for a header value ending in a newline,
    and a resolver's message with the host lower-cased."""
    value = "Tok-SECRET-42\n"
    secrets = Secrets(environ={"RUNBOOKS_SECRET_KEY": value})
    h11 = f"Illegal header value {('Bearer ' + value).encode()!r}"
    assert h11 == "Illegal header value b'Bearer Tok-SECRET-42\\n'"
    assert secrets.redact_text(h11) == "Illegal header value b'Bearer ***'"
    resolver = f"cannot resolve '{value.strip().lower()}.invalid': [Errno -2] Name or service not known"
    assert "tok-secret-42" not in secrets.redact_text(resolver)


# ---------------------------------------------------------------- through every output


@contextmanager
def server_log() -> Iterator[list[str]]:
    """Every record of the process's logging, formatted (at DEBUG: httpx logs each request)."""
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record) + (record.exc_text or "") + (record.stack_info or ""))

    root, handler = logging.getLogger(), Keep(logging.DEBUG)
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield lines
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


async def boom(ctx: StepContext) -> Any:
    token = ctx.config["token"]
    logging.getLogger("tests.boom").warning("executor sees %r", token, stack_info=True)
    ctx.log.info(f"token {token!r}", token=token, quoted=json.dumps(token))
    ctx.add_evidence("token", {"token": token, "repr": repr(token), "json": json.dumps(token)})
    raise RuntimeError(f"bad token {token!r} {token.encode()!r}")


def leaky_runbook(url: str) -> dict[str, Any]:
    secret = "${secret.KEY}"
    call = {"method": "POST", "query": {"token": secret}, "body": {"token": secret}}
    return {"id": "leaky", "steps": [
        {"id": "json", "type": "call-service", "continueOnError": True, "config": {"url": f"{url}/json", **call}},
        {"id": "text", "type": "call-service", "continueOnError": True, "config": {"url": f"{url}/text", **call}},
        {"id": "header", "type": "call-service", "continueOnError": True, "retryPolicy": {"maxRetries": 0},
         "config": {"url": f"{url}/json", "headers": {"Authorization": f"Bearer {secret}\n"}}},
        {"id": "boom", "type": "boom", "continueOnError": True, "retryPolicy": {"maxRetries": 0},
         "config": {"token": secret}},
    ]}


async def every_output(value: str, tmp: pathlib.Path) -> dict[str, Any]:
    """Run the leaky runbook with ``value`` as the secret; every text that left, by where."""
    secrets_file = tmp / "secrets.json"
    secrets_file.write_text(json.dumps({"shared": {"KEY": value}}))
    with server_log() as log:
        async with echo_service() as url, running_gateway({"RUNBOOKS_SECRETS_FILE": str(secrets_file)}) as gw:
            gw.runtime.register_executor("boom", boom)
            await gw.register(leaky_runbook(url))
            execution_id = (await gw.start("leaky"))["id"]
            final = await gw.wait_for(execution_id, "completed", "failed")
            texts: dict[str, Any] = {"execution": json.dumps(final, ensure_ascii=False)}
            for path in ("/logs", "/evidence", "/audit"):
                texts[path] = (await gw.client.get(f"/api/v1/executions/{execution_id}{path}")).text
            async with gw.client.stream("GET", f"/api/v1/executions/{execution_id}/stream") as stream:
                texts["sse"] = "".join([chunk async for chunk in stream.aiter_text()])
    texts["server log"] = "\n".join(log)
    return {"texts": texts, "final": final}


def assert_no_leak(value: str, texts: dict[str, str]) -> None:
    found = {where: leaks(value, text) for where, text in texts.items()}
    assert not any(found.values()), f"{value!r} leaks: {found}"


def test_the_probe_a_secret_ending_in_a_newline_leaves_no_trace(tmp_path: pathlib.Path) -> None:
    result = trio.run(every_output, PROBE, tmp_path)
    steps = result["final"]["steps"]
    assert steps["json"]["status"] == "succeeded" and steps["text"]["status"] == "succeeded"
    assert steps["header"]["error"]["code"] == "config"
    assert "header Authorization has a value HTTP/1.1 does not allow" in steps["header"]["error"]["message"]
    assert "token=***" in steps["text"]["output"]  # the echo of the percent-encoded query
    assert "HTTP Request: POST" in result["texts"]["server log"]  # httpx's own line was there, redacted
    assert_no_leak(PROBE, result["texts"])


SPECIAL = st.sampled_from(list("\n\t\r\"'%+/\\ @:?#&=é😀ß"))
VALUES = st.text(st.one_of(SPECIAL, st.characters(codec="utf-8", exclude_categories=("Cs", "Cc"))),
                 min_size=6, max_size=16).map(lambda text: "Tk" + text)  # "Tk": no accidental hex match


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=VALUES)
def test_fuzzed_secret_values_leave_through_no_output(value: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        result = trio.run(every_output, value, pathlib.Path(tmp))
    assert result["final"]["steps"]["boom"]["error"]["code"] == "executor"
    assert_no_leak(value, result["texts"])


async def test_url_userinfo_sent_as_basic_credentials_is_redacted_in_the_echo(tmp_path: pathlib.Path) -> None:
    value = "pa55-Word-9"
    secrets_file = tmp_path / "secrets.json"
    secrets_file.write_text(json.dumps({"shared": {"PASS": value}}))
    async with echo_service() as url, running_gateway({"RUNBOOKS_SECRETS_FILE": str(secrets_file)}) as gw:
        authority = url.removeprefix("http://")
        await gw.register({"id": "basic", "steps": [{"id": "call", "type": "call-service", "config": {
            "url": f"http://alice:${{secret.PASS}}@{authority}/text"}}]})
        final = await gw.wait_for((await gw.start("basic"))["id"], "completed")
    echoed = final["steps"]["call"]["output"]
    assert "Authorization: Basic ***" in echoed
    assert leaks(value, json.dumps(final)) == []
