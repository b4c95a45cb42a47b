"""Webhook signatures: the presets (GitHub, Stripe, Slack, Standard Webhooks) and the generic
scheme, checked over the raw bytes of a request before anything parses them.

``verify(scheme, secrets, body, headers, now)`` answers the delivery id the scheme carries
(None when it has none) or raises ``Refused`` with why. Every comparison of a signature is
``hmac.compare_digest`` (constant time); every configured secret is tried, so a secret can
be rotated by listing the new one beside the old. Schemes with a timestamp refuse one older
(or newer) than their tolerance: a captured request cannot be replayed later.

What each preset checks:

- ``github``: ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>``; delivery id
  ``X-GitHub-Delivery``.
- ``stripe``: ``Stripe-Signature: t=<unix>,v1=<hex>[,v1=...]`` over ``<t>.<body>``, 300 s.
- ``slack``: ``X-Slack-Signature: v0=<hex>`` over ``v0:<X-Slack-Request-Timestamp>:<body>``,
  5 minutes.
- ``standard-webhooks``: ``webhook-signature: v1,<base64> [v1,<base64>...]`` over
  ``<webhook-id>.<webhook-timestamp>.<body>``, 5 minutes; ``whsec_<base64>`` secrets are
  decoded; delivery id ``webhook-id``.
- generic: ``{header, algorithm, template, encoding, prefix, timestampHeader, idHeader,
  toleranceSeconds}``; ``template`` is the signed content, with ``{body}``,
  ``{timestamp}``, ``{id}`` and ``{headers.NAME}`` standing for those values.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Final

import attrs

ALGORITHMS: Final = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "sha512": hashlib.sha512}
ENCODINGS: Final = ("hex", "base64")
PRESETS: Final = ("github", "stripe", "slack", "standard-webhooks")
_PLACEHOLDER: Final = re.compile(r"\{(body|timestamp|id|headers\.[A-Za-z0-9_-]+)\}")
MAX_SIGNATURES: Final = 16  # signatures read from one header (a header listing more is refused)


class Refused(Exception):
    """The request does not carry a valid signature; ``reason`` says why (no secret in it),
    ``kind`` is one of ``missing``, ``malformed``, ``stale``, ``mismatch`` (a metric label)."""

    def __init__(self, reason: str, kind: str = "malformed") -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind


@attrs.frozen
class Scheme:
    """How one source signs its requests (a preset is a Scheme with these fields set)."""

    header: str
    algorithm: str = "sha256"
    template: str = "{body}"
    encoding: str = "hex"
    prefix: str = ""
    timestamp_header: str | None = None
    id_header: str | None = None
    tolerance_s: int = 300
    preset: str | None = None


def preset(name: str) -> Scheme:
    """The scheme of a preset (``PRESETS``)."""
    return _PRESETS[name]


_PRESETS: Final = {
    "github": Scheme("x-hub-signature-256", prefix="sha256=", id_header="x-github-delivery", preset="github"),
    "stripe": Scheme("stripe-signature", template="{timestamp}.{body}", preset="stripe"),
    "slack": Scheme("x-slack-signature", template="v0:{timestamp}:{body}", prefix="v0=",
                    timestamp_header="x-slack-request-timestamp", preset="slack"),
    "standard-webhooks": Scheme("webhook-signature", template="{id}.{timestamp}.{body}", encoding="base64",
                                timestamp_header="webhook-timestamp", id_header="webhook-id",
                                preset="standard-webhooks"),
}


def verify(scheme: Scheme, secrets: Iterable[str], body: bytes, headers: Mapping[str, str],
           now: Callable[[], datetime]) -> str | None:
    """The delivery id (or None) of a request whose signature one of ``secrets`` made;
    ``Refused`` otherwise. ``headers`` are keyed in lower case."""
    raw = headers.get(scheme.header)
    if not raw:
        raise Refused(f"no {scheme.header} header", "missing")
    timestamp, offered = _offered(scheme, raw, headers)
    if scheme.timestamp_header is not None or scheme.preset == "stripe":
        _check_fresh(timestamp, scheme.tolerance_s, now)
    delivery_id = headers.get(scheme.id_header) if scheme.id_header else None
    content = _signed_content(scheme.template, body, timestamp, delivery_id, headers)
    digest = ALGORITHMS[scheme.algorithm]
    matched = False
    for secret in secrets:
        expected = _encode(hmac.new(_key(scheme, secret), content, digest).digest(), scheme.encoding)
        for candidate in offered:
            matched |= hmac.compare_digest(expected, candidate)  # (every pair: no early exit)
    if not matched:
        raise Refused("the signature does not match", "mismatch")
    return delivery_id or None


def _offered(scheme: Scheme, raw: str, headers: Mapping[str, str]) -> tuple[str | None, list[bytes]]:
    """(timestamp, the signatures the request offers, as bytes to compare)."""
    if scheme.preset == "stripe":
        fields = [part.split("=", 1) for part in raw.split(",") if "=" in part]
        timestamps = [value.strip() for name, value in fields if name.strip() == "t"]
        offered = [value.strip() for name, value in fields if name.strip() == "v1"]
        return (timestamps[0] if timestamps else None), _bounded(offered)
    timestamp = headers.get(scheme.timestamp_header) if scheme.timestamp_header else None
    if scheme.preset == "standard-webhooks":
        offered = [part.split(",", 1)[1] for part in raw.split() if part.startswith("v1,")]
        return timestamp, _bounded(offered)
    if not raw.startswith(scheme.prefix):
        raise Refused(f"the {scheme.header} header does not start with {scheme.prefix!r}")
    return timestamp, _bounded([raw[len(scheme.prefix):].strip()])


def _bounded(offered: list[str]) -> list[bytes]:
    if not offered:
        raise Refused("the signature header holds no signature")
    if len(offered) > MAX_SIGNATURES:
        raise Refused(f"the signature header holds more than {MAX_SIGNATURES} signatures")
    return [value.encode("ascii", "replace") for value in offered]


def _check_fresh(timestamp: str | None, tolerance_s: int, now: Callable[[], datetime]) -> None:
    if timestamp is None or not timestamp.strip().isdigit() or len(timestamp.strip()) > 12:
        raise Refused("no valid signature timestamp")
    age = now().timestamp() - int(timestamp)
    if abs(age) > tolerance_s:
        raise Refused(f"the signature timestamp is {int(abs(age))} s {'old' if age > 0 else 'ahead'} "
                      f"(tolerance {tolerance_s} s)", "stale")


def _signed_content(template: str, body: bytes, timestamp: str | None, delivery_id: str | None,
                    headers: Mapping[str, str]) -> bytes:
    """The signed bytes: ``template`` with its placeholders replaced (the body as received)."""
    parts: list[bytes] = []
    position = 0
    for match in _PLACEHOLDER.finditer(template):
        parts.append(template[position:match.start()].encode())
        name = match.group(1)
        if name == "body":
            parts.append(body)
        else:
            value = {"timestamp": timestamp, "id": delivery_id}.get(name) if not name.startswith("headers.") \
                else headers.get(name[len("headers."):].lower())
            if value is None:
                raise Refused(f"the signed content needs {{{name}}}, which the request lacks")
            parts.append(value.encode())
        position = match.end()
    parts.append(template[position:].encode())
    return b"".join(parts)


def _key(scheme: Scheme, secret: str) -> bytes:
    """A secret as HMAC key bytes (``whsec_`` keys of Standard Webhooks are base64)."""
    if scheme.preset == "standard-webhooks" and secret.startswith("whsec_"):
        try:
            return base64.b64decode(secret[len("whsec_"):], validate=True)
        except binascii.Error:
            return secret.encode()
    return secret.encode()


def _encode(digest: bytes, encoding: str) -> bytes:
    return digest.hex().encode() if encoding == "hex" else base64.b64encode(digest)


def placeholders(template: str) -> list[str]:
    """The placeholders a generic scheme's ``template`` uses."""
    return [match.group(1) for match in _PLACEHOLDER.finditer(template)]
