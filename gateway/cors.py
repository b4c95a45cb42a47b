"""CORS (``ENABLE_CORS``, ``CORS_ORIGINS``): response headers and answers to preflight requests.

No origins configured means any origin (``*``). Credentials are never allowed: the API
authenticates with bearer tokens, which a page sends explicitly, not with cookies.
"""

from __future__ import annotations

from quart import Response
from werkzeug.datastructures import Headers

ALLOW_METHODS = "GET, POST, OPTIONS"
ALLOW_HEADERS = "Authorization, Content-Type, Idempotency-Key, X-Request-Id, X-Tenant-Id, X-User-Id"
EXPOSE_HEADERS = "Location, X-Request-Id, X-Runbooks-Instance"
MAX_AGE_S = 600


class Cors:
    def __init__(self, origins: tuple[str, ...]) -> None:
        self._any = not origins or "*" in origins
        self._origins = frozenset(origins)

    def allowed_origin(self, origin: str | None) -> str | None:
        """The value of Access-Control-Allow-Origin for this request's Origin, if allowed."""
        if origin is None:
            return None
        if self._any:
            return "*"
        return origin if origin.rstrip("/") in self._origins else None

    def is_preflight(self, method: str, headers: Headers) -> bool:
        return method == "OPTIONS" and "Origin" in headers and "Access-Control-Request-Method" in headers

    def preflight(self, headers: Headers) -> Response:
        response = Response("", status=204)
        if self.allowed_origin(headers.get("Origin")) is not None:
            response.headers["Access-Control-Allow-Methods"] = ALLOW_METHODS
            response.headers["Access-Control-Allow-Headers"] = ALLOW_HEADERS
            response.headers["Access-Control-Max-Age"] = str(MAX_AGE_S)
        return response

    def decorate(self, headers: Headers, response: Response) -> None:
        allowed = self.allowed_origin(headers.get("Origin"))
        if not self._any:
            response.vary.add("Origin")
        if allowed is not None:
            response.headers["Access-Control-Allow-Origin"] = allowed
            response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
