"""Signed decision links: a token that lets one approver decide on one waiting step, once.

A token is ``<claims>.<signature>``, both unpadded base64url: the claims are the canonical
JSON (RFC 8785) of ``{v: 1, tenant, execution, step, round, approver, digest, expires}``
(``round``: the step's attempt, so a retried step's new round is not decided by an old
link; ``expires``: RFC 3339 UTC, the step's deadline), and the signature is HMAC-SHA256 over
``runbooks-decision-link/v1.`` followed by the claims part, with the key ``RUNBOOKS_LINK_KEY``
of the tenant's secrets (its own, else the shared one). The decision itself is not in the
token: the approve and reject links carry one token, so using either spends both. A token's
id (the SHA-256 of its claims part) is what the store records when it is used.

This module only makes and reads tokens; whether the step still waits for this approver on
this digest, and whether the token was used, is the API's business.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Callable
from datetime import datetime

import attrs

from runtime.model.canonical import canonical
from runtime.model.wire import format_time, parse_time

KEY_NAME = "RUNBOOKS_LINK_KEY"
MIN_KEY_LENGTH = 32
_CONTEXT = b"runbooks-decision-link/v1."
_MAX_TOKEN = 4096


class LinkRefused(Exception):
    """A token that cannot be used; ``reason`` is one word (``invalid``, ``disabled``,
    ``expired``, ``used``, ``stale``, ``closed``, ``refused``) and the message says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@attrs.frozen
class LinkClaims:
    tenant: str
    execution: str
    step: str
    round: int
    approver: str
    digest: str
    expires: datetime

    def to_json(self) -> dict[str, object]:
        return {"v": 1, "tenant": self.tenant, "execution": self.execution, "step": self.step,
                "round": self.round, "approver": self.approver, "digest": self.digest,
                "expires": format_time(self.expires)}


def usable_key(key: str | None) -> bool:
    """Whether ``key`` may sign links: at least ``MIN_KEY_LENGTH`` characters."""
    return key is not None and len(key) >= MIN_KEY_LENGTH


def issue(claims: LinkClaims, key: str) -> str:
    body = _b64(canonical(claims.to_json()))
    return f"{body}.{_b64(_sign(key, body))}"


def token_id(token: str) -> str:
    """What identifies a token when it is used: the SHA-256 of its claims part."""
    return hashlib.sha256(token.partition(".")[0].encode("ascii", "replace")).hexdigest()


def read(token: str, key_of: Callable[[str], str | None], now: datetime) -> LinkClaims:
    """The claims of a token signed with its tenant's key (``key_of(tenant)``) that has not
    expired at ``now``; ``LinkRefused`` otherwise."""
    claims = _claims(token)
    key = key_of(claims.tenant)
    if not usable_key(key):
        raise LinkRefused("disabled", "decision links are not enabled (no signing key is configured)")
    assert key is not None
    body, _, signature = token.partition(".")
    if not hmac.compare_digest(_b64(_sign(key, body)), signature):
        raise LinkRefused("invalid", "this link is not valid (its signature does not match)")
    if now >= claims.expires:
        raise LinkRefused("expired", f"this link expired at {format_time(claims.expires)}")
    return claims


def _claims(token: str) -> LinkClaims:
    body, dot, _ = token.partition(".")
    if len(token) > _MAX_TOKEN or not dot:
        raise _malformed()
    try:
        data = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        claims = LinkClaims(str(data["tenant"]), str(data["execution"]), str(data["step"]), int(data["round"]),
                            str(data["approver"]), str(data["digest"]), parse_time(data["expires"]))
    except (binascii.Error, ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise _malformed() from None
    if data.get("v") != 1:
        raise _malformed()
    return claims


def _malformed() -> LinkRefused:
    return LinkRefused("invalid", "this link is not valid (it is not a decision link of this service)")


def _sign(key: str, body: str) -> bytes:
    return hmac.new(key.encode("utf-8"), _CONTEXT + body.encode("ascii"), hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")
