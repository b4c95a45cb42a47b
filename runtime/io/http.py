"""The ``call-service`` executor: one HTTP request per attempt.

``call_service`` is the executor (its config is checked by ``runtime.kinds.call_service``): it sends the request through the runtime's one shared
``httpx.AsyncClient`` (``ctx.services.http``) and returns the response body, parsed JSON
when the response says it is JSON, else text.

Every request carries ``X-Tenant-Id``, ``X-Execution-Id``, a fresh ``X-Request-Id``, an
``Idempotency-Key``: the config's ``idempotencyKey``, else ``{executionId}:{stepId}`` (plus
``:{iteration}`` inside a loop), the same on every attempt and after a restart; and
``X-Runbooks-Hop``: the execution's hop plus one. An engine that receives a start or an
event with a hop above its ``MAX_HOPS`` refuses it (422, problem type ``loop-detected``),
and such an answer fails the step with code ``loop_detected``: runbooks that call the
engine's own API in a loop stop after ``MAX_HOPS`` rounds.

Failures are ``StepFailed`` errors with a step error code::

    connection    the service could not be reached           retryable
    timeout       no answer within timeoutMs                 retryable
    http_status   429 or 5xx outside expectStatus            retryable (retry_after_s from Retry-After)
    http_status   any other status outside expectStatus      not retryable
    config        the config cannot make a request           not retryable
    forbidden_target  CALL_SERVICE_ALLOWED_HOSTS refuses the host (after DNS resolution, at
                  every connection, so after every redirect; before it when every
                  pattern is a name pattern), or the host holds a secret value (it
                  would go out through DNS)                    not retryable

A request that cannot be built or sent as HTTP/1.1 (a header value with a line break, a
secret that ends in a newline) fails with ``config`` naming the header, never quoting the
exception: its text holds the value (h11's ``Illegal header value b'Bearer ...\\n'``).

Whenever a response arrives, an ``http_response`` evidence item records the method, URL,
status, request id and the SHA-256 of the body (never the body itself). Trio cancellation
aborts a request in flight at once: nothing here is shielded. With tracing on, requests
also carry the W3C ``traceparent`` of the attempt's span.

With a stand-in (``Services.stand_in``, ``runtime.io.stand_in``) the request goes to it instead
of the client: the same request, deadline and reading of the answer, and nothing on the network.

A config with ``protocol: grpc`` is a gRPC call: its executor is
``runtime.io.grpc_call``; this module only hands it over.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Final
from urllib.parse import urlsplit

import httpx
import trio

from runtime.io import grpc_call, tracing
from runtime.io.context import StepContext
from runtime.kinds.call_service import DEFAULT_TIMEOUT_MS, problems
from runtime.model.errors import StepFailed
from runtime.security.outbound import ForbiddenTarget, check_url, checks_connections

__all__ = ["HOP_HEADER", "call_service", "idempotency_key", "retry_after_s"]

HOP_HEADER: Final = "X-Runbooks-Hop"
LOOP_DETECTED: Final = "urn:runbooks:problem:loop-detected"  # the problem type of the engine's refusal
_BAD_VALUE: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # h11 refuses these in a field value


async def call_service(ctx: StepContext) -> Any:
    """Send the configured request once; return the body or raise ``StepFailed``."""
    config = ctx.config
    if config.get("protocol") == "grpc":
        return await grpc_call.call_grpc(ctx, idempotency_key(ctx))
    found = problems(config, "config", templates=False)
    if found:
        detail = "; ".join(f"{p.path}: {p.message}" for p in found)
        raise StepFailed(f"invalid call-service config: {detail}", code="config")
    method = str(config.get("method", "GET")).upper()
    url = _resolve_url(config["url"], ctx.services.call_service_base_url)
    request_id = uuid.uuid4().hex
    request = _build_request(ctx, method, url, request_id)
    _refuse_secret_host(ctx, request, method, url)
    ctx.log.info("calling service", method=method, url=url)
    started = trio.current_time()
    response, body = await _send(ctx, request, method, url, _timeout_s(config))
    ctx.log.info(
        "service answered", status=response.status_code,
        elapsedMs=round((trio.current_time() - started) * 1000),
    )
    ctx.add_evidence("http_response", {
        "method": method, "url": url, "status": response.status_code,
        "bodySha256": hashlib.sha256(body).hexdigest(), "requestId": request_id,
    })
    _check_status(ctx, response, body, method, url)
    return _output(response, body, method, url)


def idempotency_key(ctx: StepContext) -> str:
    """The request's ``Idempotency-Key``: deterministic, the same on every attempt."""
    explicit = ctx.config.get("idempotencyKey")
    if isinstance(explicit, str) and explicit:
        return explicit
    key = f"{ctx.execution_id}:{ctx.step_id}"
    return key if ctx.iteration is None else f"{key}:{ctx.iteration}"


def _resolve_url(url: str, base_url: str | None) -> str:
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError as exc:
        raise StepFailed(f"url '{url}' is not a valid URL: {exc}", code="config") from exc
    if scheme in ("http", "https"):
        return url
    if scheme:
        raise StepFailed(f"url '{url}': unsupported scheme '{scheme}' (use http or https)", code="config")
    if not base_url:
        raise StepFailed(
            f"url '{url}' is relative and CALL_SERVICE_BASE_URL is not set; "
            "give an absolute URL or configure the base URL",
            code="config",
        )
    return f"{base_url.rstrip('/')}/{url.lstrip('/')}"


def _build_request(ctx: StepContext, method: str, url: str, request_id: str) -> httpx.Request:
    config = ctx.config
    try:
        return ctx.services.http.build_request(
            method, url, headers=_headers(ctx, request_id), params=config.get("query") or None,
            json=config.get("body"), timeout=httpx.Timeout(_timeout_s(config)),
        )
    except httpx.InvalidURL:
        raise StepFailed(f"{method} {url}: cannot build the request: the URL is not valid", code="config") from None
    except UnicodeEncodeError:
        raise StepFailed(f"{method} {url}: cannot build the request: {_not_ascii(config)}", code="config") from None


def _not_ascii(config: Mapping[str, Any]) -> str:
    """Which header cannot be sent, without its value (the exception's text quotes it)."""
    names = [str(name) for name, value in (config.get("headers") or {}).items()
             if not (str(name) + str(value)).isascii()]
    return f"header {', '.join(names)} is not ASCII" if names else "a header is not ASCII"


def _not_http(request: httpx.Request, exc: Exception) -> str:
    """Which header HTTP/1.1 does not allow, without its value (h11's message quotes it)."""
    names = [name.decode("ascii", "replace") for name, value in request.headers.raw
             if _BAD_VALUE.search(value) or value[:1] in (b" ", b"\t") or value[-1:] in (b" ", b"\t")]
    if names:
        return (f"header {', '.join(names)} has a value HTTP/1.1 does not allow (a control character such as "
                "a line break, or a space at either end)")
    return f"the request is not valid HTTP/1.1 ({type(exc).__name__})"


def _refuse_secret_host(ctx: StepContext, request: httpx.Request, method: str, url: str) -> None:
    """A secret in a host name would leave by DNS before any allowlist could refuse the name."""
    hosts = (request.url.host, urlsplit(url).hostname or "")
    if any(ctx.services.secrets.holds(host) for host in hosts):
        raise StepFailed(f"{method} {url}: the host holds a secret value; a secret is never put in a host "
                         "name (resolving it would send the secret out through DNS)", code="forbidden_target")


def _headers(ctx: StepContext, request_id: str) -> httpx.Headers:
    # The engine's headers replace same-named config headers: a runbook cannot act as another
    # tenant. An Idempotency-Key given as a plain header is kept unless idempotencyKey is set.
    headers = httpx.Headers(ctx.config.get("headers") or {})
    headers["X-Tenant-Id"] = ctx.tenant_id
    headers["X-Execution-Id"] = ctx.execution_id
    headers["X-Request-Id"] = request_id
    headers[HOP_HEADER] = str(ctx.hop + 1)
    if "idempotencyKey" in ctx.config or "Idempotency-Key" not in headers:
        headers["Idempotency-Key"] = idempotency_key(ctx)
    tracing.inject(headers)
    return headers


def _timeout_s(config: Mapping[str, Any]) -> float:
    return int(config.get("timeoutMs", DEFAULT_TIMEOUT_MS)) / 1000


async def _send(ctx: StepContext, request: httpx.Request, method: str, url: str,
                timeout_s: float) -> tuple[httpx.Response, bytes]:
    # httpx applies the timeout to each phase (connect, each read, ...); the trio deadline
    # bounds the whole exchange, so a server trickling bytes cannot stretch it.
    with trio.move_on_after(timeout_s) as deadline:
        try:
            response = await _exchange(ctx, request, url)
            try:
                return response, await _body(response, method, url, ctx.services.max_output_bytes)
            finally:
                await response.aclose()
        except ForbiddenTarget as exc:
            raise StepFailed(f"{method} {url}: {exc}", code="forbidden_target") from exc
        except httpx.TimeoutException as exc:
            raise _timed_out(method, url, timeout_s) from exc
        except httpx.UnsupportedProtocol as exc:
            raise StepFailed(f"{method} {url}: cannot send the request: {exc}", code="config") from exc
        except httpx.LocalProtocolError as exc:
            raise StepFailed(f"{method} {url}: cannot send the request: {_not_http(request, exc)}",
                             code="config") from None
        except httpx.TransportError as exc:
            raise StepFailed(
                f"{method} {url} could not be reached: {_describe(exc)}", retryable=True, code="connection"
            ) from exc
        except httpx.RequestError as exc:  # e.g. a body that cannot be decoded
            raise StepFailed(
                f"{method} {url} failed: {_describe(exc)}", retryable=True, code="connection"
            ) from exc
    assert deadline.cancelled_caught
    raise _timed_out(method, url, timeout_s)


async def _exchange(ctx: StepContext, request: httpx.Request, url: str) -> httpx.Response:
    """The response: from the stand-in when there is one (nothing leaves the process), else
    from the network, through the outbound checks."""
    services = ctx.services
    if services.stand_in is not None:
        return await services.stand_in.http(ctx, request)
    allowed = services.allowed_hosts
    if allowed is not None and not checks_connections(services.http):  # a client of the embedding program
        await check_url(allowed, url)
    return await services.http.send(request, stream=True)


async def _body(response: httpx.Response, method: str, url: str, max_bytes: int) -> bytes:
    """The body (decoded), read as it streams in and refused past ``max_bytes``: a large
    answer is never held whole."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > max_bytes:
            raise StepFailed(f"{method} {url} answered {response.status_code} with a body over the cap of "
                             f"{max_bytes} bytes (MAX_OUTPUT_BYTES); it was not read further", code="output_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def _timed_out(method: str, url: str, timeout_s: float) -> StepFailed:
    return StepFailed(f"{method} {url} did not answer within {timeout_s * 1000:g} ms", retryable=True, code="timeout")


def _describe(exc: Exception) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _check_status(ctx: StepContext, response: httpx.Response, body: bytes, method: str, url: str) -> None:
    status = response.status_code
    expected = ctx.config.get("expectStatus")
    if (200 <= status <= 299) if expected is None else (status in expected):
        return
    message = f"{method} {url} answered {status}"
    if status == 422 and _loop_detected(response, body):
        raise StepFailed(f"{message}: the engine refused hop {ctx.hop + 1} (MAX_HOPS): runbooks call the "
                         "engine in a loop", code="loop_detected", data={"status": status})
    if status == 429 or status >= 500:
        retry_after = retry_after_s(response.headers.get("Retry-After"), ctx.services.now())
        raise StepFailed(message, retryable=True, code="http_status", retry_after_s=retry_after,
                         data={"status": status})
    raise StepFailed(message, code="http_status", data={"status": status})


def _loop_detected(response: httpx.Response, body: bytes) -> bool:
    """Whether the answer is an engine's refusal of a start or an event as a loop."""
    if response.headers.get("Content-Type", "").split(";")[0].strip() != "application/problem+json":
        return False
    try:
        problem = json.loads(body)
    except ValueError:
        return False
    return isinstance(problem, dict) and problem.get("type") == LOOP_DETECTED


def retry_after_s(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or an HTTP date), or None."""
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def _output(response: httpx.Response, body: bytes, method: str, url: str) -> Any:
    if not _is_json_type(response.headers.get("Content-Type", "")):
        return body.decode(response.encoding or "utf-8", errors="replace")
    if not body.strip():
        return None  # HEAD, 204, or an empty JSON answer
    try:
        return json.loads(body)
    except ValueError as exc:
        raise StepFailed(
            f"{method} {url} answered {response.status_code} with a JSON content type "
            f"but a body that is not valid JSON: {exc}",
            code="executor",
        ) from exc


def _is_json_type(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or media_type.endswith("+json")
