"""Errors as ``application/problem+json`` (RFC 9457): ``{type, title, status, detail, errors?}``.

Every failure leaves the gateway through ``problem_for``: the engine's errors
(``ValidationError`` 422, or 413 for a document over 1 MiB or an event payload over
``MAX_EVENT_BYTES``; ``NotFound`` 404; ``Conflict``
409 (``StaleDigest``: of type ``stale-digest``, with ``currentDigest``); ``Forbidden`` 403
(``SeparationOfDuties``: of type ``separation-of-duties``); ``LimitExceeded`` 429 with ``Retry-After`` when room is expected;
``LoopDetected`` 422 of type ``loop-detected``;
``StoreUnavailable`` 503), the gateway's own ``ApiProblem`` (bad bodies and parameters: 400
when the request cannot be read into the declared types, 422 when it can but a value is
refused), werkzeug's ``HTTPException`` (unknown route, method not allowed, body too large)
and, last, anything unexpected: 500, logged with its traceback, never the exception text.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs
from quart import Response
from werkzeug.exceptions import HTTPException

from runtime import (
    CommandQueued,
    Conflict,
    Forbidden,
    LimitExceeded,
    LoopDetected,
    NotFound,
    Problem,
    RunbookError,
    SeparationOfDuties,
    StaleDigest,
    StoreUnavailable,
    ValidationError,
)

PROBLEM_JSON = "application/problem+json"
TYPE_PREFIX = "urn:runbooks:problem:"

logger = logging.getLogger("runbooks.gateway")

_TITLES = {
    400: "bad request",
    401: "unauthorized",
    403: "forbidden",
    404: "not found",
    405: "method not allowed",
    409: "conflict",
    413: "request too large",
    415: "unsupported media type",
    422: "unprocessable request",
    429: "limit exceeded",
    500: "internal error",
    503: "service unavailable",
}
_SLUGS = {
    400: "bad-request",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    409: "conflict",
    413: "too-large",
    415: "unsupported-media-type",
    422: "validation",
    429: "limit-exceeded",
    500: "internal",
    503: "unavailable",
}


class ApiProblem(Exception):
    """A request the gateway refuses itself (a bad body or parameter, missing auth...)."""

    def __init__(self, status: int, detail: str, errors: Sequence[Problem] = (), *,
                 title: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = list(errors)
        self.title = title or _TITLES.get(status, "error")
        self.headers = headers or {}


@attrs.frozen
class ProblemBody:
    status: int
    title: str
    detail: str
    errors: tuple[Problem, ...] | None = None
    slug: str | None = None  # the type's last part, when the status alone does not say it
    extra: dict[str, Any] | None = None  # members of this type of problem beside the usual ones

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": TYPE_PREFIX + (self.slug or _SLUGS.get(self.status, str(self.status))),
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if self.errors is not None:
            body["errors"] = [problem.to_json() for problem in self.errors]
        return body | (self.extra or {})


Redact = Callable[[str], str]


def problem_response(status: int, detail: str, errors: Iterable[Problem] | None = None, *,
                     title: str | None = None, headers: dict[str, str] | None = None,
                     redact: Redact | None = None, slug: str | None = None,
                     extra: dict[str, Any] | None = None) -> Response:
    if redact is not None:  # no secret value leaves in a problem (the runtime's redactor)
        detail = redact(detail)
        errors = None if errors is None else [attrs.evolve(p, message=redact(p.message)) for p in errors]
    body = ProblemBody(status, title or _TITLES.get(status, "error"), detail,
                       tuple(errors) if errors is not None else None, slug, extra)
    response = Response(json.dumps(body.to_json(), ensure_ascii=False), status=status, content_type=PROBLEM_JSON)
    response.headers.update(headers or {})
    return response


def problem_for(error: BaseException, redact: Redact | None = None) -> Response:
    """The problem response of any exception that reaches the edge (``redact``: the runtime's
    redactor, applied to every message)."""
    match error:
        case ApiProblem():
            return problem_response(error.status, error.detail, error.errors or None, title=error.title,
                                    headers=error.headers, redact=redact)
        case ValidationError():
            return _validation_problem(error, redact)
        case NotFound():
            return problem_response(404, str(error) or "not found", redact=redact)
        case StaleDigest():
            return problem_response(409, str(error), title="stale digest", slug="stale-digest",
                                    extra={"currentDigest": error.current_digest}, redact=redact)
        case SeparationOfDuties():
            return problem_response(403, str(error), title="separation of duties", slug="separation-of-duties",
                                    redact=redact)
        case Conflict():
            return problem_response(409, str(error) or "conflict", redact=redact)
        case Forbidden():
            return problem_response(403, str(error) or "forbidden", redact=redact)
        case LimitExceeded():
            return problem_response(429, str(error), headers=_retry_after(error), redact=redact)
        case LoopDetected():
            return problem_response(422, str(error), [Problem("X-Runbooks-Hop", f"{error.hop} is above {error.max_hops}")],
                                    title="loop detected", slug="loop-detected", redact=redact)
        case StoreUnavailable():
            return problem_response(503, "the store is unavailable; try again later")
        case CommandQueued():  # not a problem: accepted, and applied by whoever runs the execution
            body = json.dumps({"commandId": error.command_id, "status": "queued"})
            return Response(body, status=202, content_type="application/json")
        case RunbookError():
            return problem_response(422, str(error) or error.code, redact=redact)
        case HTTPException():
            return _http_problem(error)
        case RecursionError():
            return problem_response(400, "the request is nested too deeply")
    logger.error("unhandled error", exc_info=error)
    return problem_response(500, "an internal error occurred; it has been logged")


def _retry_after(error: LimitExceeded) -> dict[str, str]:
    """``Retry-After`` in whole seconds, when the engine knows when room comes."""
    if error.retry_after_s is None:
        return {}
    return {"Retry-After": str(max(1, math.ceil(error.retry_after_s)))}


SHOWN_IN_DETAIL = 3


def problems_detail(about: str, problems: Sequence[Problem]) -> str:
    """``4 problems{about}: a; b; c; and 1 more``: the count, the first few, and how many are
    not shown (``errors`` lists them all)."""
    count = len(problems)
    shown = [f"{p.path}: {p.message}" for p in problems[:SHOWN_IN_DETAIL]]
    if count > SHOWN_IN_DETAIL:
        shown.append(f"and {count - SHOWN_IN_DETAIL} more")
    return f"{count} problem{'s' if count != 1 else ''}{about}: " + "; ".join(shown)


def _validation_problem(error: ValidationError, redact: Redact | None) -> Response:
    if getattr(error, "code", None) == "tooLarge":
        detail = error.problems[0].message if error.problems else "the document is larger than 1 MiB"
        return problem_response(413, detail, error.problems, title=error.title, redact=redact)
    detail = problems_detail("", error.problems) if error.problems else error.title
    return problem_response(422, detail, error.problems, title=error.title, redact=redact)


def _http_problem(error: HTTPException) -> Response:
    status = error.code or 500
    headers: dict[str, str] = {}
    if status == 405:
        allowed = getattr(error, "valid_methods", None)
        if allowed:
            headers["Allow"] = ", ".join(sorted(allowed))
        detail = "this method is not allowed on this resource"
    elif status == 413:
        detail = "the request body is larger than 1 MiB"
    elif status == 404:
        detail = "no such resource"
    else:
        detail = error.description or _TITLES.get(status, "error")
    return problem_response(status, detail, headers=headers)


def as_single_error(group: BaseExceptionGroup[Any]) -> BaseException:
    """The one error to answer for an exception group that escaped a view.

    A group holding exactly one error is answered as that error (a RunbookError keeps its
    status); a group of several is an internal error, logged with every member.
    """
    leaves = list(_leaves(group))
    if len(leaves) == 1:
        return leaves[0]
    logger.error("several errors in one request", exc_info=group)
    return RuntimeError("several errors")


def _leaves(group: BaseExceptionGroup[Any]) -> Iterable[BaseException]:
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            yield from _leaves(error)
        else:
            yield error
