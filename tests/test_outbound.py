"""CALL_SERVICE_ALLOWED_HOSTS: which hosts call-service may reach, checked after DNS resolution
and at every connection (so after every redirect), against a real local service.

Names are resolved by a resolver injected into the allowlist, so the tests do not depend on
the machine's hosts file: ``svc.corp.example`` and ``metadata.test`` resolve where each test
says (127.0.0.1, where the fake service listens, or the metadata address)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import attrs
import pytest

from gateway.config import Config, ConfigError
from runtime import Runtime, Settings, open_runtime
from runtime.security.outbound import (
    ForbiddenTarget,
    HostAllowlist,
    checked_addresses,
    checked_client,
)
from tests.fake_service import FakeService, Response, fake_service


def allowlist(patterns: str, names: Mapping[str, list[str]] | None = None) -> HostAllowlist:
    table = {"svc.corp.example": ["127.0.0.1"], "metadata.test": ["169.254.169.254"],
             "db.corp.example": ["::1"], **(names or {})}

    async def resolve(host: str, port: int) -> list[str]:
        return list(table.get(host, ["203.0.113.7"]))  # unknown names: a public (documentation) address

    return attrs.evolve(HostAllowlist.parse(patterns), resolve=resolve)


# ---------------------------------------------------------------------------- the rule

@pytest.mark.parametrize(("patterns", "host", "addresses", "allowed"), [
    ("*.corp.example", "svc.corp.example", ["10.1.2.3"], True),
    ("*.corp.example", "a.b.corp.example", ["10.1.2.3"], True),
    ("*.corp.example", "corp.example", ["10.1.2.3"], False),           # the suffix, not the name itself
    ("*.corp.example", "evilcorp.example", ["10.1.2.3"], False),
    ("*.corp.example", "svc.corp.example", ["127.0.0.1"], False),      # a name never admits loopback
    ("*.corp.example", "svc.corp.example", ["169.254.169.254"], False),  # nor the metadata service
    ("*.corp.example", "svc.corp.example", ["10.1.2.3", "169.254.169.254"], False),  # every address counts
    ("*.corp.example, 127.0.0.1", "svc.corp.example", ["127.0.0.1"], True),  # unless an address pattern does
    ("*", "anything.example", ["198.51.100.1"], True),
    ("*", "anything.example", ["0.0.0.0"], False),
    ("*", "anything.example", ["::ffff:169.254.169.254"], False),     # IPv4-mapped IPv6 is the same address
    ("*", "169.254.169.254", ["169.254.169.254"], False),              # an IP literal is no name
    ("10.0.0.0/8", "10.200.0.1", ["10.200.0.1"], True),
    ("10.0.0.0/8", "11.0.0.1", ["11.0.0.1"], False),
    ("10.0.0.0/8", "svc.corp.example", ["10.0.0.5"], True),            # a name resolving into the range
    ("10.0.0.0/8", "localhost", ["127.0.0.1"], False),
    ("127.0.0.1", "localhost", ["127.0.0.1"], True),
    ("localhost", "localhost", ["127.0.0.1"], False),                  # the name alone does not reach loopback
    ("fd00::/8, [::1]", "db.corp.example", ["fd12::1", "::1"], True),
    ("fd00::/8", "db.corp.example", ["fd12::1", "::1"], False),
    ("API.Example.com.", "api.example.COM", ["198.51.100.2"], True),
])
def test_every_resolved_address_must_be_allowed(patterns: str, host: str, addresses: list[str],
                                                 allowed: bool) -> None:
    rule = HostAllowlist.parse(patterns)
    if allowed:
        rule.check(host, addresses)
    else:
        with pytest.raises(ForbiddenTarget, match="CALL_SERVICE_ALLOWED_HOSTS"):
            rule.check(host, addresses)


@pytest.mark.parametrize(("value", "message"), [
    ("svc.corp.example:8443", "'svc.corp.example:8443' is not a host name"),
    ("10.0.0.0/33", "'10.0.0.0/33' is not a valid network"),
    ("http://svc", "'http://svc' is not a host name"),
    ("a..b", "'a..b' is not a host name"),
    ("*.*.corp", "'*.*.corp' is not a host name"),
    (" , ", "no host patterns"),
])
def test_a_bad_pattern_stops_start_up_with_one_line_naming_the_variable(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Config.from_env({"STORAGE_BACKEND": "memory", "CALL_SERVICE_ALLOWED_HOSTS": value})
    text = str(caught.value)
    assert text.startswith("CALL_SERVICE_ALLOWED_HOSTS: ") and message in text and "\n" not in text


def test_the_variable_reaches_the_engine_settings() -> None:
    config = Config.from_env({"STORAGE_BACKEND": "memory", "CALL_SERVICE_ALLOWED_HOSTS": "*.corp.example, 10.0.0.0/8"})
    assert config.settings().call_service_allowed_hosts == HostAllowlist.parse("*.corp.example,10.0.0.0/8")
    assert Config.from_env({"STORAGE_BACKEND": "memory"}).settings().call_service_allowed_hosts is None


async def test_checked_addresses_is_the_check_for_other_protocols() -> None:
    rule = allowlist("*.corp.example, 127.0.0.1")
    assert await checked_addresses(rule, "svc.corp.example", 50051) == ["127.0.0.1"]
    with pytest.raises(ForbiddenTarget):
        await checked_addresses(rule, "metadata.test", 80)


# ---------------------------------------------------------------------------- call-service

@pytest.fixture(name="svc")
async def _svc() -> AsyncIterator[FakeService]:
    async with fake_service() as svc:
        yield svc


async def run_call(rule: HostAllowlist | None, url: str, *, http: Any = None) -> Any:
    settings = Settings(call_service_allowed_hosts=rule, default_max_retries=3)
    async with open_runtime("memory", settings=settings, http=http) as rt:
        await rt.register_runbook({"id": "call", "steps": [
            {"id": "call", "type": "call-service",
             "config": {"url": url}, "retryPolicy": {"initialDelayMs": 0}}]})
        return await _finish(rt)


async def _finish(rt: Runtime) -> Any:
    return await rt.wait((await rt.start("call")).id)


def port_of(svc: FakeService) -> int:
    return int(svc.url.rsplit(":", 1)[1])


async def test_a_name_resolving_to_a_refused_address_fails_the_step_not_retried(svc: FakeService) -> None:
    final = await run_call(allowlist("*.corp.example"), f"http://svc.corp.example:{port_of(svc)}/deploy")
    state = final.steps["call"]
    assert state.status.value == "failed"
    assert state.error.code == "forbidden_target"
    assert "resolves to 127.0.0.1" in state.error.message
    assert state.attempts == 1  # not retried, though the policy allows 3 retries
    assert svc.count("/deploy") == 0


async def test_an_allowed_name_connects_to_its_checked_address_keeping_the_host(svc: FakeService) -> None:
    final = await run_call(allowlist("*.corp.example, 127.0.0.1"), f"http://svc.corp.example:{port_of(svc)}/deploy")
    assert final.status.value == "completed", final.steps["call"].error
    [request] = svc.requests_to("/deploy")
    assert request.headers["host"] == f"svc.corp.example:{port_of(svc)}"


async def test_ip_ranges_decide_for_ip_literals(svc: FakeService) -> None:
    refused = await run_call(allowlist("10.0.0.0/8"), f"{svc.url}/deploy")
    assert refused.steps["call"].error.code == "forbidden_target"
    allowed = await run_call(allowlist("10.0.0.0/8, 127.0.0.0/8"), f"{svc.url}/deploy")
    assert allowed.status.value == "completed"
    metadata = await run_call(allowlist("*"), "http://169.254.169.254/latest/meta-data/")
    assert metadata.steps["call"].error.code == "forbidden_target"


async def test_a_redirect_to_a_refused_host_is_refused_at_its_connection(svc: FakeService) -> None:
    rule = allowlist("*.corp.example, 127.0.0.1")
    svc.script("/start", Response(302, headers={"Location": "http://metadata.test/latest/meta-data/"}))
    async with checked_client(rule, follow_redirects=True) as following:  # an embedding program's client
        final = await run_call(rule, f"http://svc.corp.example:{port_of(svc)}/start", http=following)
    assert svc.count("/start") == 1
    error = final.steps["call"].error
    assert error.code == "forbidden_target"
    assert "metadata.test" in error.message and "169.254.169.254" in error.message


async def test_a_client_of_the_embedding_program_is_checked_before_each_request(svc: FakeService) -> None:
    import httpx

    async with httpx.AsyncClient() as plain:
        final = await run_call(allowlist("10.0.0.0/8"), f"{svc.url}/deploy", http=plain)
    assert final.steps["call"].error.code == "forbidden_target"
    assert svc.count("/deploy") == 0


async def test_without_the_variable_any_host_is_reached(svc: FakeService) -> None:
    assert (await run_call(None, f"{svc.url}/deploy")).status.value == "completed"
