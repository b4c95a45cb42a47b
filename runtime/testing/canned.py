"""``CannedReplies``: the stand-in for the network in a runbook test (``runtime.io.stand_in``).

Each outbound call of a step (HTTP, gRPC, an approval's notification) is recorded as a
``Call`` and answered from the case's replies for that step: a single reply answers every
call; a list answers one call per entry, in order, skipping entries whose ``match`` the
request does not fit. A call nothing answers fails its step (code ``no_canned_reply``, not
retried) and is kept in ``missing``, which fails the case: naming the step and the request.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import parse_qsl

import attrs
import httpx
import trio

from runtime.io.context import StepContext
from runtime.io.stand_in import GrpcAnswer, GrpcCall
from runtime.model.errors import StepFailed
from runtime.testing.match import request_differences
from runtime.testing.spec import Reply, StepReplies

NO_REPLY: Final = "no_canned_reply"
_SHOWN_CHARS: Final = 200  # of a request body in a message


@attrs.frozen
class Call:
    """One outbound call: the step (as a test file names it), its request and its answer."""

    key: str
    kind: str  # "http" | "grpc"
    request: Mapping[str, Any]
    at_ms: int  # virtual time since the execution started
    answer: str | None  # "200", "UNAVAILABLE", "connection error", "timeout"; None: no reply
    notification: bool = False


def request_of(request: httpx.Request) -> dict[str, Any]:
    """What a test file can say of an HTTP request."""
    return {"method": request.method, "url": str(request.url.copy_with(query=None)),
            "query": dict(parse_qsl(request.url.query.decode())), "headers": dict(request.headers.items()),
            "body": _body_of(request)}


def _body_of(request: httpx.Request) -> Any:
    content = request.content
    if not content:
        return None
    try:
        return json.loads(content)
    except ValueError:
        return content.decode("utf-8", "replace")


def describe(kind: str, request: Mapping[str, Any]) -> str:
    """One line: ``POST http://... {"a": 1}`` or ``pkg.Service/Method at host:port {...}``."""
    if kind == "grpc":
        head, payload = f"{request['service']}/{request['method']} at {request['target']}", request["message"]
    else:
        query = "&".join(f"{k}={v}" for k, v in request["query"].items())
        head, payload = f"{request['method']} {request['url']}{'?' + query if query else ''}", request["body"]
    if payload in (None, {}):
        return head
    text = json.dumps(payload, ensure_ascii=False, sort_keys=True)
    return f"{head} {text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS - 1] + '…'}"


class CannedReplies:
    """Answers every call of one case from its replies; records each call."""

    def __init__(self, replies: Mapping[str, StepReplies], runbook_id: str) -> None:
        self._replies = replies
        self._runbook_id = runbook_id
        self._used: dict[str, set[int]] = {}
        self.t0 = 0.0  # the Trio time the execution started at
        self.calls: list[Call] = []
        self.missing: list[str] = []

    async def http(self, ctx: StepContext, request: httpx.Request) -> httpx.Response:
        reply = await self._answer(ctx, "http", request_of(request))
        if reply.error == "connection":
            raise httpx.ConnectError("connection refused (a canned reply)", request=request)
        if reply.error == "timeout":
            await trio.sleep_forever()  # the attempt's timeoutMs ends it, as a silent service
        return _response(reply, request)

    async def grpc(self, ctx: StepContext, call: GrpcCall) -> GrpcAnswer:
        request = {"target": call.target, "service": call.service, "method": call.method,
                   "message": dict(call.message), "metadata": dict(call.metadata)}
        reply = await self._answer(ctx, "grpc", request)
        if reply.code == "OK":
            return GrpcAnswer("OK", reply.message if reply.message is not None else {})
        return GrpcAnswer(reply.code, details=str(reply.message or ""))

    def key_of(self, ctx: StepContext) -> str:
        """``step`` for a step of the runbook under test, ``runbook/step`` for a sub-runbook's."""
        execution = ctx.scope.get("execution")
        runbook_id = execution.get("runbookId") if isinstance(execution, Mapping) else None
        return ctx.step_id if runbook_id in (None, self._runbook_id) else f"{runbook_id}/{ctx.step_id}"

    async def _answer(self, ctx: StepContext, kind: str, request: dict[str, Any]) -> Reply:
        key = self.key_of(ctx)
        reply = self._choose(key, request)
        answer = None if reply is None else _answer_text(reply)
        at_ms = round((trio.current_time() - self.t0) * 1000)
        self.calls.append(Call(key, kind, request, at_ms, answer, ctx.step_type == "notify"))
        if reply is None:
            message = self._no_reply(key, kind, request)
            self.missing.append(message)
            raise StepFailed(f"no canned reply: {message}", code=NO_REPLY)
        if reply.delay_ms:
            await trio.sleep(reply.delay_ms / 1000)
        return reply

    def _choose(self, key: str, request: Mapping[str, Any]) -> Reply | None:
        replies = self._replies.get(key)
        if replies is None:
            return None
        used = self._used.setdefault(key, set())
        for index, reply in enumerate(replies.entries):
            if index in used or (reply.match is not None and request_differences(reply.match, request)):
                continue
            if not replies.reusable:
                used.add(index)
            return reply
        return None

    def _no_reply(self, key: str, kind: str, request: Mapping[str, Any]) -> str:
        replies = self._replies.get(key)
        number = sum(1 for call in self.calls if call.key == key)
        if replies is None:
            why = f"the case has no replies for '{key}'"
        elif len(self._used.get(key, ())) == len(replies.entries):
            count = len(replies.entries)
            why = f"its list of {count} {'reply' if count == 1 else 'replies'} is used up (one call per reply)"
        else:
            why = "no reply left has a match this request fits"
        return f"step '{key}' call {number} ({why}): {describe(kind, request)}"


def _answer_text(reply: Reply) -> str:
    if reply.kind == "grpc":
        return reply.code
    return {"connection": "connection error", "timeout": "no answer (timeout)"}.get(reply.error or "", str(reply.status))


def _response(reply: Reply, request: httpx.Request) -> httpx.Response:
    headers = httpx.Headers(dict(reply.headers))
    if isinstance(reply.body, str):
        content, media = reply.body.encode(), "text/plain; charset=utf-8"
    elif reply.body is None:
        content, media = b"", "application/json"
    else:
        content, media = json.dumps(reply.body).encode(), "application/json"
    headers.setdefault("Content-Type", media)
    return httpx.Response(reply.status, headers=headers, content=content, request=request)
