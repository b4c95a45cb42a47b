"""A small synchronous client of a running gateway's REST API (one ``httpx.Client``).

``ApiClient`` sends the identity of the caller with every request (``Authorization: Bearer``
with a token; in development mode ``X-User-Id``/``X-Tenant-Id``) and turns every refusal
into ``ApiError`` carrying the problem's ``detail`` (or a one-line description of a
transport failure). ``stream`` yields the ``execution`` events of
``GET /api/v1/executions/{id}/stream`` as the API's JSON, reconnecting when a stream ends
before the execution did (the first event of a stream is always the current state).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

import attrs
import httpx

FINISHED = ("completed", "failed", "cancelled", "timed_out")
RECONNECTS = 5


class ApiError(Exception):
    """The server refused (``status`` is its HTTP status) or could not be reached (``status`` 0)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = " ".join(detail.split())  # always one line


@attrs.frozen
class Identity:
    token: str | None = None
    user: str | None = None
    tenant: str | None = None

    def headers(self) -> dict[str, str]:
        headers = {}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if self.user:
            headers["X-User-Id"] = self.user
        if self.tenant:
            headers["X-Tenant-Id"] = self.tenant
        return headers


class ApiClient:
    def __init__(self, server: str, identity: Identity, *, transport: httpx.BaseTransport | None = None,
                 timeout: float = 30.0) -> None:
        self.server = server.rstrip("/")
        self._http = httpx.Client(base_url=self.server, headers=identity.headers(), timeout=timeout,
                                  transport=transport)

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    def get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        return self._send("GET", path, params=_present(params))

    def post(self, path: str, body: Any = None, params: Mapping[str, Any] | None = None) -> Any:
        return self._send("POST", path, json=body, params=_present(params))

    def _send(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ApiError(0, f"cannot reach {self.server}: {_describe(exc)}") from None
        if response.status_code >= 400:
            raise ApiError(response.status_code, _problem_detail(response))
        return response.json() if response.content else None

    def stream(self, execution_id: str) -> Iterator[dict[str, Any]]:
        """Every state of the execution, live, until it has finished."""
        for _ in range(RECONNECTS):
            last = None
            for last in self._one_stream(execution_id):
                yield last
                if last["status"] in FINISHED:
                    return
        raise ApiError(0, f"the stream of execution {execution_id} keeps ending before the execution does")

    def _one_stream(self, execution_id: str) -> Iterator[dict[str, Any]]:
        path = f"/api/v1/executions/{execution_id}/stream"
        try:
            with self._http.stream("GET", path, timeout=httpx.Timeout(30.0, read=None)) as response:
                if response.status_code >= 400:
                    response.read()
                    raise ApiError(response.status_code, _problem_detail(response))
                yield from _events(response.iter_lines())
        except httpx.HTTPError as exc:
            raise ApiError(0, f"the stream from {self.server} failed: {_describe(exc)}") from None


def _events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """The ``data`` of each ``execution`` event of a server-sent event stream."""
    event, data = "message", []
    for line in lines:
        if not line:
            if data and event == "execution":
                yield json.loads("\n".join(data))
            event, data = "message", []
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                event = value
            elif field == "data":
                data.append(value)


def _problem_detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("detail"):
        return str(body["detail"])
    return f"HTTP {response.status_code} {response.reason_phrase}"


def _describe(exc: httpx.HTTPError) -> str:
    return str(exc) or type(exc).__name__


def _present(params: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return {key: value for key, value in params.items() if value is not None} if params else None
