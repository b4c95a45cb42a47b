"""A small synchronous client of a running gateway's REST API (one ``httpx.Client``).

``ApiClient`` sends the identity of the caller with every request (``Authorization: Bearer``
with a token; in development mode ``X-User-Id``/``X-Tenant-Id``) and turns every refusal
into ``ApiError`` carrying the problem's ``detail`` (or a one-line description of a
transport failure). ``control`` posts a command to an execution and answers the execution,
or ``Queued`` when the process that runs it did not answer in time (``202``). ``stream``
yields the ``execution`` events of ``GET /api/v1/executions/{id}/stream`` as the API's
JSON; when a stream ends or breaks before the execution did (the server restarts, the
connection drops) it connects again with ``Last-Event-ID``, up to ``RECONNECTS`` times in a
row without a new event, telling ``notice`` each time; ``get_while_following`` is a GET that
waits for the server the same way.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import attrs
import httpx

FINISHED = ("completed", "failed", "cancelled", "timed_out")
RECONNECTS = 12
BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 3.0)  # then 3 s each: about half a minute in all
RETRIED = (0, 502, 503, 504)  # nobody answered, or a proxy found no server: tried again while following


class ApiError(Exception):
    """The server refused (``status`` is its HTTP status) or could not be reached (``status`` 0)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = " ".join(detail.split())  # always one line


@attrs.frozen
class Queued:
    """A command accepted as ``202 {commandId, status: "queued"}``: applied by the execution's next owner."""

    command_id: str
    body: dict[str, Any]


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


def server_url(text: str) -> str:
    """``localhost:3137`` means ``http://localhost:3137``; a URL with a scheme is kept."""
    text = text.strip().rstrip("/")
    return text if "://" in text else f"http://{text}"


class ApiClient:
    def __init__(self, server: str, identity: Identity, *, transport: httpx.BaseTransport | None = None,
                 timeout: float = 30.0, notice: Callable[[str], None] | None = None) -> None:
        self.server = server_url(server)
        self._notice = notice or (lambda text: None)
        self._http = httpx.Client(base_url=self.server, headers=identity.headers(), timeout=timeout,
                                  transport=transport)

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    def get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        return _body(self._send("GET", path, params=_present(params)))

    def post(self, path: str, body: Any = None, params: Mapping[str, Any] | None = None) -> Any:
        return _body(self._send("POST", path, json=body, params=_present(params)))

    def control(self, path: str, body: Any = None) -> dict[str, Any] | Queued:
        """POST a command to an execution: the execution, or ``Queued`` (202)."""
        response = self._send("POST", path, json=body)
        answer = _body(response)
        if response.status_code == 202 and isinstance(answer, dict) and "commandId" in answer:
            return Queued(str(answer["commandId"]), answer)
        return dict(answer)

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ApiError(0, f"cannot reach {self.server}: {_describe(exc)}") from None
        if response.status_code >= 400:
            raise ApiError(response.status_code, _problem_detail(response))
        return response

    def stream(self, execution_id: str) -> Iterator[dict[str, Any]]:
        """Every state of the execution, live, until it has finished."""
        last_id: str | None = None
        failures = 0
        while True:
            try:
                for event_id, state in self._one_stream(execution_id, last_id):
                    last_id, failures = event_id, 0
                    yield state
                    if state["status"] in FINISHED:
                        return
                reason = "the stream ended"
            except ApiError as exc:
                if exc.status not in RETRIED:
                    raise
                reason = exc.detail
            failures += 1
            if failures > RECONNECTS:
                raise ApiError(0, f"gave up following execution {execution_id} after {RECONNECTS} attempts to "
                                  f"reconnect: {reason}")
            self._wait_to_reconnect(reason, failures)

    def get_while_following(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        """A GET made beside a ``stream``, tried again as the stream is when nobody answers (the
        server restarting): a state the stream gave just before the server went away must not
        end the follower."""
        failures = 0
        while True:
            try:
                return self.get(path, params)
            except ApiError as exc:
                failures += 1
                if exc.status not in RETRIED or failures > RECONNECTS:
                    raise
                self._wait_to_reconnect(exc.detail, failures)

    def _wait_to_reconnect(self, reason: str, failures: int) -> None:
        self._notice(f"{reason}; reconnecting to {self.server} ({failures}/{RECONNECTS})...")
        time.sleep(BACKOFF_S[min(failures, len(BACKOFF_S)) - 1])

    def _one_stream(self, execution_id: str, last_id: str | None) -> Iterator[tuple[str | None, dict[str, Any]]]:
        path = f"/api/v1/executions/{execution_id}/stream"
        headers = {"Last-Event-ID": last_id} if last_id else None
        try:
            with self._http.stream("GET", path, headers=headers,
                                   timeout=httpx.Timeout(30.0, read=None)) as response:
                if response.status_code >= 400:
                    response.read()
                    raise ApiError(response.status_code, _problem_detail(response))
                for event_id, data in _events(response.iter_lines()):
                    yield event_id or last_id, data
        except httpx.HTTPError as exc:
            raise ApiError(0, f"the stream from {self.server} failed: {_describe(exc)}") from None


def _events(lines: Iterator[str]) -> Iterator[tuple[str | None, dict[str, Any]]]:
    """The ``id`` and ``data`` of each ``execution`` event of a server-sent event stream."""
    event, event_id, data = "message", None, []
    for line in lines:
        if not line:
            if data and event == "execution":
                yield event_id, json.loads("\n".join(data))
            event, event_id, data = "message", None, []
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                event = value
            elif field == "id":
                event_id = value
            elif field == "data":
                data.append(value)


def _body(response: httpx.Response) -> Any:
    return response.json() if response.content else None


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
