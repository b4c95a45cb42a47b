"""``create_app(runtime, config)``: the QuartTrio app of the gateway (no globals).

The app registers the route table (``gateway.routes``), turns every error into a problem
(``gateway.problems``), identifies the caller of each ``/api/v1`` request
(``gateway.auth``), answers CORS, counts and logs every request. The runtime is opened
and closed by whoever serves the app (``gateway.serve``), never in the app's lifespan.
"""

from __future__ import annotations

import functools
import json
import logging
import time
import uuid
from typing import Any

from quart import Response, g, request
from quart_trio import QuartTrio

from gateway.auth import Authenticator, Identity
from gateway.bodies import MAX_BODY_BYTES
from gateway.config import Config
from gateway.connection import CompleteExchange
from gateway.cors import Cors
from gateway.metrics import GatewayMetrics
from gateway.openapi import build_openapi
from gateway.problems import ApiProblem, as_single_error, problem_for
from gateway.routes import CONVERTERS, ROUTES, Route, View
from gateway.routes_console import register_console
from gateway.routes_links import register_links
from gateway.sse import Streams
from gateway.state import EXTENSION, GatewayState
from runtime import Runtime
from runtime.sources.manager import Sources

logger = logging.getLogger("runbooks.gateway")
HOOKS = "/api/v1/hooks/"


def create_app(runtime: Runtime, config: Config, *, metrics: GatewayMetrics | None = None,
               sources: Sources | None = None) -> QuartTrio:
    """The gateway app on ``runtime``; ``metrics`` should be the object whose batch observer
    was given to ``open_runtime`` (a fresh one is made otherwise); ``sources``: the event
    sources it receives webhooks for and lists."""
    app = QuartTrio("runbooks-gateway", static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.config["BODY_TIMEOUT"] = 60
    metrics = metrics or GatewayMetrics()
    metrics.attach(runtime)
    gateway = GatewayState(runtime, config, Authenticator(config.tokens), metrics, Streams(), sources)
    if sources is not None:
        metrics.attach_sources(sources.intake)
    app.extensions[EXTENSION] = gateway
    app.extensions["runbooks.openapi"] = build_openapi(ROUTES, development_mode=config.development_mode)
    app.url_map.converters.update(CONVERTERS)
    for route in ROUTES:
        _register(app, route)
    register_console(app)
    register_links(app)
    _install_edge(app, gateway)
    app.asgi_app = CompleteExchange(app.asgi_app)  # type: ignore[method-assign]
    return app


def _register(app: QuartTrio, route: Route) -> None:
    app.add_url_rule(route.rule, endpoint=route.operation_id, view_func=_guarded(route),
                     methods=[route.method])


def _guarded(route: Route) -> View:
    """The view of ``route`` behind its role check; exception groups are answered here
    (quart-trio would try the error handlers on each leaf)."""
    view = route.view

    @functools.wraps(view)
    async def guarded(**kwargs: Any) -> Response:
        _check_role(route)
        try:
            return await view(**kwargs)
        except ExceptionGroup as group:  # Cancelled is a BaseException: never caught here
            raise as_single_error(group) from group

    return guarded


def _check_role(route: Route) -> None:
    identity: Identity | None = g.get("identity")
    if route.role is None or identity is None or identity.may(route.role):
        return
    held = ", ".join(identity.roles) or "none"
    raise ApiProblem(403, f"this operation needs the role '{route.role}' (or admin); the caller's roles: {held}",
                     title="forbidden")


def _install_edge(app: QuartTrio, gateway: GatewayState) -> None:
    cors = Cors(gateway.config.cors_origins) if gateway.config.enable_cors else None
    detailed = gateway.config.detailed_logging
    instance = gateway.config.instance_id

    @app.before_request
    async def begin() -> Response | None:
        g.started = time.perf_counter()
        g.request_id = _request_id(request.headers.get("X-Request-Id"))
        if cors is not None and cors.is_preflight(request.method, request.headers):
            return cors.preflight(request.headers)
        if request.path.startswith("/api/v1/") and request.method != "OPTIONS" \
                and not request.path.startswith(HOOKS):  # a webhook is authenticated by its signature
            g.identity = gateway.auth.identify(request.headers)
        return None

    @app.after_request
    async def finish(response: Response) -> Response:
        if cors is not None:
            cors.decorate(request.headers, response)
        response.headers["X-Request-Id"] = g.get("request_id") or uuid.uuid4().hex
        response.headers["X-Runbooks-Instance"] = instance  # which process answered (--workers N, a cluster)
        if response.status_code == 413:  # the rest of the body is never read: do not reuse the connection
            response.headers["Connection"] = "close"
        _account(gateway.metrics, response, detailed)
        return response

    @app.errorhandler(Exception)
    async def on_error(error: Exception) -> Response:
        return problem_for(error, gateway.runtime.secrets.redact_text)


def _request_id(given: str | None) -> str:
    if given and len(given) <= 128 and given.isascii() and given.isprintable():
        return given
    return uuid.uuid4().hex


def _account(metrics: GatewayMetrics, response: Response, detailed: bool) -> None:
    """Count the request and write its one log line (method, route, status, ms)."""
    seconds = time.perf_counter() - g.get("started", time.perf_counter())
    route = request.url_rule.rule if request.url_rule is not None else "unmatched"
    metrics.observe_request(request.method, route, response.status_code, seconds)
    fields: dict[str, Any] = {"method": request.method, "route": route, "status": response.status_code,
                              "ms": round(seconds * 1000, 1)}
    if detailed:
        identity = g.get("identity")
        fields |= {"path": _loggable(request.path), "query": request.query_string.decode("latin-1") or None,
                   "tenant": identity.tenant if identity else None, "user": identity.user if identity else None,
                   "bytes_in": request.content_length, "request_id": g.get("request_id")}
    level = logging.ERROR if response.status_code >= 500 else logging.INFO
    logger.log(level, "request %s", " ".join(f"{key}={_logfmt(value)}" for key, value in fields.items()),
               extra={"request": fields})


def _loggable(path: str) -> str:
    """The path as logged: a decision link's token is a credential, and stays out of the log."""
    return "/decide/***" if path.startswith("/decide/") else path


def _logfmt(value: Any) -> str:
    text = "-" if value is None else str(value)
    return json.dumps(text, ensure_ascii=False) if (" " in text or '"' in text or not text) else text
