"""Helpers of the event-source tests: signing requests as each sender signs them, and the
gateway app on a runtime with sources (in process, over httpx's ASGI transport)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import attrs
import httpx

from gateway import Config, create_app
from runtime import Runtime, open_runtime
from runtime.shell.settings import Settings
from runtime.sources.config import parse_sources
from runtime.sources.manager import Sources, open_sources

SECRETS = {"RUNBOOKS_SECRET_GH": "gh-secret", "RUNBOOKS_SECRET_GH_OLD": "gh-old-secret",
           "RUNBOOKS_SECRET_STRIPE": "whsec_stripe_test", "RUNBOOKS_SECRET_SLACK": "slack-signing",
           "RUNBOOKS_SECRET_SW": "whsec_" + base64.b64encode(b"standard-key-bytes").decode(),
           "RUNBOOKS_SECRET_GEN": "generic-secret"}
WAIT = {"id": "wait", "steps": [{"id": "ev", "type": "wait-for-event",
                                 "config": {"eventType": "${input.type}", "correlationKey": "${input.key}"}}]}
RULE = {"id": "on-push", "triggers": [{"id": "push", "event": {"type": "github.push"},
                                       "input": {"ref": "${event.payload.ref}"}}],
        "steps": [{"id": "s", "type": "wait-for-event", "config": {"eventType": "never", "correlationKey": "x"}}]}


def hexmac(secret: str | bytes, content: bytes, digest: Any = hashlib.sha256) -> str:
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, content, digest).hexdigest()


def github(body: bytes, secret: str = "gh-secret", delivery: str = "d-1") -> dict[str, str]:
    return {"X-Hub-Signature-256": "sha256=" + hexmac(secret, body), "X-GitHub-Delivery": delivery,
            "X-GitHub-Event": "push", "Content-Type": "application/json"}


def stripe(body: bytes, at: int | None = None, secret: str = "whsec_stripe_test") -> dict[str, str]:
    t = int(time.time()) if at is None else at
    return {"Stripe-Signature": f"t={t},v1={hexmac(secret, f'{t}.'.encode() + body)}",
            "Content-Type": "application/json"}


def slack(body: bytes, at: int | None = None, secret: str = "slack-signing") -> dict[str, str]:
    t = str(int(time.time()) if at is None else at)
    return {"X-Slack-Signature": "v0=" + hexmac(secret, f"v0:{t}:".encode() + body),
            "X-Slack-Request-Timestamp": t, "Content-Type": "application/json"}


def standard(body: bytes, msg_id: str = "msg_1", at: int | None = None, key: bytes = b"standard-key-bytes") -> dict[str, str]:
    t = str(int(time.time()) if at is None else at)
    signature = base64.b64encode(hmac.new(key, f"{msg_id}.{t}.".encode() + body, hashlib.sha256).digest()).decode()
    return {"webhook-id": msg_id, "webhook-timestamp": t, "webhook-signature": f"v1,{signature}",
            "Content-Type": "application/json"}


def generic(body: bytes, secret: str = "generic-secret", request_id: str = "r-1") -> dict[str, str]:
    signature = base64.b64encode(hmac.new(secret.encode(), request_id.encode() + b"|" + body,
                                          hashlib.sha512).digest()).decode()
    return {"X-Signature": "v=" + signature, "X-Request-Id": request_id, "Content-Type": "application/json"}


SOURCES = {"sources": [
    {"id": "gh", "tenant": "default", "kind": "webhook", "signature": {"preset": "github"},
     "secrets": ["${secret.GH}", "${secret.GH_OLD}"],
     "event": {"type": "github.${headers.x-github-event}", "key": "${body.repository}", "payload": "${body}"}},
    {"id": "stripe", "kind": "webhook", "signature": {"preset": "stripe"}, "secrets": ["${secret.STRIPE}"],
     "event": {"type": "${body.type}", "key": "${body.data.object.id}"}},
    {"id": "slack", "kind": "webhook", "signature": {"preset": "slack"}, "secrets": ["${secret.SLACK}"],
     "event": {"type": "slack.${body.event.type}", "key": "${body.event.channel}"}},
    {"id": "sw", "kind": "webhook", "signature": {"preset": "standard-webhooks"}, "secrets": ["${secret.SW}"],
     "event": {"type": "${body.type}", "key": "${body.key}"}},
    {"id": "gen", "kind": "webhook", "maxBytes": 2048,
     "signature": {"header": "X-Signature", "algorithm": "sha512", "encoding": "base64", "prefix": "v=",
                   "template": "{headers.x-request-id}|{body}"},
     "secrets": ["${secret.GEN}"], "deliveryId": "${headers.x-request-id}",
     "event": {"type": "${body.type}", "key": "${body.key}"}},
]}


@attrs.frozen
class Hooks:
    runtime: Runtime
    sources: Sources
    client: httpx.AsyncClient

    async def post(self, source: str, body: Mapping[str, Any] | bytes, headers: Mapping[str, str]) -> httpx.Response:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return await self.client.post(f"/api/v1/hooks/{source}", content=data, headers=dict(headers))


@asynccontextmanager
async def running_hooks(store: str = "memory", config: Mapping[str, Any] = SOURCES,
                        gateway_config: Config | None = None) -> AsyncIterator[Hooks]:
    settings = Settings(secrets_env=SECRETS)
    async with open_runtime(store, settings=settings) as rt, \
            open_sources(rt, None, config=parse_sources(config)) as sources:
        app = create_app(rt, gateway_config or Config(storage_backend="memory"), sources=sources)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield Hooks(rt, sources, client)
