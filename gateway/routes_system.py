"""Health, readiness, metrics and the OpenAPI document."""

from __future__ import annotations

import logging

import trio
from quart import Response, current_app

from gateway.metrics import CONTENT_TYPE
from gateway.problems import problem_response
from gateway.shapes import json_response
from gateway.state import state

logger = logging.getLogger("runbooks.gateway")
READY_TIMEOUT_S = 5.0


async def health() -> Response:
    return json_response({"status": "ok"})


async def ready() -> Response:
    try:
        with trio.fail_after(READY_TIMEOUT_S):
            await state().runtime.ready()
            sources = state().sources
            if sources is not None and (paused := sources.not_ready()) is not None:
                raise ConnectionError(paused)
    except Exception as exc:  # the store does not answer, or commits are failing: say which, and why
        cause = str(exc) or type(exc).__name__
        if isinstance(exc, trio.TooSlowError):
            cause = f"the store did not answer within {READY_TIMEOUT_S:g} s"
        logger.warning("not ready: %s", cause)
        return problem_response(503, f"not ready: {cause}", title="not ready")
    waiting = state().runtime.waiting_for_owner  # not this process's fault: it is still ready
    return json_response({"status": "ok", **({"waitingForCapableOwner": waiting} if waiting else {})})


async def metrics() -> Response:
    return Response(state().metrics.render(), status=200, content_type=CONTENT_TYPE)


async def openapi() -> Response:
    return json_response(current_app.extensions["runbooks.openapi"])
