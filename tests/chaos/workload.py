"""The clients: each flow of the plan drives one execution through the REST API of the slots its
plan names, as an operator would, and every request is recorded with what it was told.

A request without a definite answer (no answer, or a 5xx) is sent again (a start with its
Idempotency-Key, if it has one; an event with the same payload), to the next slot of the flow.
Each request carries a unique tag: a control's reason, an approval's comment, an event's payload
``uid``, a start's input ``tag``. Once its actions are sent, a flow drives its execution to its end
like an operator who lost track of an uncertain pause: it resumes a paused execution and approves a
waiting approval.

A start sent again without an Idempotency-Key may have made an execution the first time too:
nothing tells the engine the two are one (that is what the key is for). Each such attempt has a
tag and a correlation key of its own, so a stray waits on a key nobody publishes to instead of
taking the flow's events; once the flows are done, ``cancel_strays`` cancels the strays, as an
operator tidying up would.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import httpx
import trio

from tests.chaos.cluster import Cluster
from tests.chaos.final import FINISHED, ExecutionRow, Snapshot
from tests.chaos.history import History, Request, RequestKind
from tests.chaos.plan import Flow

USER = {"X-User-Id": "ops"}
BOSS = {"X-User-Id": "boss"}
EVENT_TYPE = "chaos.go"
TRIES = 6  # at least this many sends of a request without a definite answer...
PATIENCE_S = 20.0  # ...and until this long has passed (every process may be down for a while)
REQUEST_TIMEOUT_S = 4.0
POLL_S = 0.1

RUNBOOKS: tuple[dict[str, Any], ...] = (
    {"id": "gate", "steps": [
        {"id": "first", "type": "call-service", "config": {"url": "/first", "method": "POST"}},
        {"id": "approve", "type": "human-approval", "config": {"approvers": ["boss"]}},
        {"id": "deploy", "type": "call-service", "config": {"url": "/deploy", "method": "POST"}}]},
    {"id": "events", "steps": [
        {"id": "a", "type": "wait-for-event", "config": {"eventType": EVENT_TYPE, "correlationKey": "${input.key}"}},
        {"id": "b", "type": "wait-for-event", "config": {"eventType": EVENT_TYPE, "correlationKey": "${input.key}"}},
        {"id": "after", "type": "call-service", "config": {"url": "/after", "method": "POST"}}]},
    {"id": "child", "steps": [
        {"id": "work", "type": "call-service", "config": {"url": "/slow?ms=800", "method": "POST"}},
        {"id": "approve", "type": "human-approval", "config": {"approvers": ["nobody"]}}]},
    {"id": "parent", "steps": [
        {"id": "child", "type": "run-runbook", "config": {"runbookId": "child", "input": {}}}]},
    {"id": "flaky", "steps": [
        {"id": "call", "type": "call-service", "config": {"url": "/flaky", "method": "POST"},
         "retryPolicy": {"maxRetries": 0}}]},
    {"id": "slow", "steps": [
        {"id": "hold", "type": "call-service", "config": {"url": "/slow?ms=1500", "method": "POST"}},
        {"id": "after", "type": "call-service", "config": {"url": "/after", "method": "POST"}}]},
)


@attrs.define
class Client:
    cluster: Cluster
    http: httpx.AsyncClient
    seed: int
    sent: int = 0
    inputs: dict[str, dict[str, Any]] = attrs.Factory(dict)  # execution -> the input it was started with

    def url(self, slot: int) -> tuple[str, str] | None:
        node = self.cluster.slots[slot].node
        return (node.instance, node.url) if node else None

    async def send(self, kind: RequestKind, slot: int, path: str, body: Any, *, execution: str | None = None,
                   tag: str = "", headers: dict[str, str] | None = None, step: str | None = None,
                   key: str | None = None, params: dict[str, str] | None = None) -> Request:
        self.sent += 1
        target = self.url(slot)
        request = Request(kind, target[0] if target else f"p{slot}", execution, tag, self.cluster.now(),
                          idempotency_key=key, step=step)
        self.cluster.history.requests.append(request)
        all_headers = {**(headers or USER), **({"Idempotency-Key": key} if key else {})}
        try:
            if target is None:
                raise httpx.ConnectError("the slot has no process right now")
            answer = await self.http.post(f"{target[1]}{path}", json=body, headers=all_headers, params=params,
                                          timeout=REQUEST_TIMEOUT_S)
            request.status = answer.status_code
            try:
                request.body = answer.json()
            except ValueError:
                request.body = answer.text[:200]
        except httpx.HTTPError as exc:
            request.error = type(exc).__name__
        request.ended = self.cluster.now()
        return request

    async def until_definite(self, flow: Flow, first: int, make: Callable[[int], Any]) -> Request:
        """Send ``make(slot)`` to the flow's slots from ``first`` on until one answers definitely
        (``TRIES`` times at least, for ``PATIENCE_S`` at most)."""
        return await _until_definite(lambda n: make(flow.slot(first + n)))

    async def read(self, slot: int, execution: str) -> dict[str, Any] | None:
        return await self.get(slot, f"/api/v1/executions/{execution}")

    async def get(self, slot: int, path: str) -> dict[str, Any] | None:
        target = self.url(slot)
        if target is None:
            return None
        try:
            answer = await self.http.get(f"{target[1]}{path}", headers=USER, timeout=REQUEST_TIMEOUT_S)
        except httpx.HTTPError:
            return None
        if answer.status_code != 200:
            return None
        found: dict[str, Any] = answer.json()
        return found

    async def poll(self, flow: Flow, execution: str, predicate: Callable[[dict[str, Any]], bool],
                   within_s: float) -> dict[str, Any] | None:
        with trio.move_on_after(within_s):
            n = 0
            while True:
                found = await self.read(flow.slot(n), execution)
                if found is not None and predicate(found):
                    return found
                n += 1
                await trio.sleep(POLL_S)
        return None

    def tag(self, flow: Flow, what: str) -> str:
        return f"s{self.seed}-f{flow.index}-{what}-{self.sent}"


async def run_flow(client: Client, flow: Flow, origin: float, settle_s: float) -> None:
    await trio.sleep_until(origin + flow.at_s)
    execution = await _start(client, flow, _runbook(flow))
    if execution is None:
        return
    await FLOWS[flow.kind](client, flow, execution)
    await _drive_to_end(client, flow, execution, settle_s)


def _runbook(flow: Flow) -> str:
    return flow.kind


def _input(flow: Flow, tag: str, correlation: str) -> dict[str, Any]:
    return {"key": correlation, "n": flow.index, "tag": tag}


async def _start(client: Client, flow: Flow, runbook: str) -> str | None:
    key = f"idem-{client.seed}-{flow.index}" if flow.idempotent else None
    first = client.tag(flow, "start")
    keyed = _input(flow, first, f"k{client.seed}-{flow.index}")  # with a key: the same body every time

    def body(tag: str) -> dict[str, Any]:
        return {"runbookId": runbook, "input": keyed if key else _input(flow, tag, tag)}

    def attempt(slot: int) -> Any:
        tag = first if key else client.tag(flow, "start")
        return client.send("start", slot, "/api/v1/executions", body(tag), key=key, tag=tag,
                           params={"force": "true"})
    answer = await client.until_definite(flow, 0, attempt)
    if not answer.ok:
        return None
    execution = str(answer.body["id"])
    answer.execution = execution
    client.inputs[execution] = dict(answer.body["input"])
    if key:  # the same start again elsewhere, as a client that lost the answer would
        again = await client.send("start", flow.slot(1), "/api/v1/executions", body(first), key=key,
                                  tag=first, params={"force": "true"})
        again.execution = execution
    return execution


async def _control(client: Client, flow: Flow, first: int, kind: RequestKind, execution: str, path: str,
                   body_key: str = "reason", headers: dict[str, str] | None = None,
                   step: str | None = None, extra: dict[str, Any] | None = None) -> Request:
    async def make(slot: int) -> Request:
        tag = client.tag(flow, kind)
        return await client.send(kind, slot, f"/api/v1/executions/{execution}{path}",
                                 {body_key: tag, **(extra or {})}, execution=execution, tag=tag,
                                 headers=headers, step=step)
    return await client.until_definite(flow, first, make)


def _step(name: str, status: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e["steps"].get(name, {}).get("status") == status or e["status"] in FINISHED


async def _gate(client: Client, flow: Flow, execution: str) -> None:
    if flow.pause:
        paused = await _control(client, flow, 1, "pause", execution, "/pause")
        if paused.status is None or paused.status < 400:
            await _control(client, flow, 2, "resume", execution, "/resume")
    await client.poll(flow, execution, _step("approve", "awaiting_approval"), 20)
    await _approve(client, flow, execution)


async def _approve(client: Client, flow: Flow, execution: str) -> Request:
    return await _control(client, flow, 3, "approve", execution, "/steps/approve/approvals", "comment",
                          BOSS, "approve", {"decision": "approve"})


async def _events(client: Client, flow: Flow, execution: str) -> None:
    if flow.wait_first:
        await client.poll(flow, execution, _step("a", "waiting"), 20)
    key = client.inputs[execution]["key"]

    async def publish(n: int, name: str) -> None:
        uid = f"s{client.seed}-f{flow.index}-event-{name}"
        body = {"type": EVENT_TYPE, "correlationKey": key, "payload": {"uid": uid}}
        await client.until_definite(flow, 2 + n, lambda slot: client.send(
            "publish", slot, "/api/v1/events", body, execution=execution, tag=uid))

    if flow.overlap:  # the second goes out while the first is in flight
        async with trio.open_nursery() as both:
            both.start_soon(publish, 0, "a")
            await trio.sleep(0.005)
            both.start_soon(publish, 1, "b")
    else:  # back to back: the second as soon as the first was answered
        await publish(0, "a")
        await publish(1, "b")


async def _parent(client: Client, flow: Flow, execution: str) -> None:
    await client.poll(flow, execution, lambda e: bool(e["steps"]["child"].get("childExecutionId"))
                      or e["status"] in FINISHED, 20)
    await trio.sleep(flow.delay_s)
    await _control(client, flow, 2, "cancel", execution, "/cancel")


async def _flaky(client: Client, flow: Flow, execution: str) -> None:
    if await client.poll(flow, execution, lambda e: e["status"] in FINISHED, 20) is None:
        return
    await _control(client, flow, 1, "retry", execution, "/steps/call/retry", step="call")
    done = await client.poll(flow, execution, lambda e: e["status"] in FINISHED, 20)
    if done is not None and flow.replay:
        replayed = await client.until_definite(flow, 3, lambda slot: client.send(
            "replay", slot, f"/api/v1/executions/{execution}/replay", {}, execution=execution,
            tag=client.tag(flow, "replay")))
        if replayed.ok and isinstance(replayed.body, dict):
            await _drive_to_end(client, flow, str(replayed.body["id"]), 20)


async def _slow(client: Client, flow: Flow, execution: str) -> None:
    return None


async def _drive_to_end(client: Client, flow: Flow, execution: str, within_s: float) -> None:
    with trio.move_on_after(within_s):
        n = 0
        while True:
            found = await client.read(flow.slot(n), execution)
            n += 1
            if found is not None:
                if found["status"] in FINISHED:
                    return
                if found["status"] == "paused":
                    await _control(client, flow, n, "resume", execution, "/resume")
                approve = found["steps"].get("approve", {})
                if flow.kind == "gate" and approve.get("status") == "awaiting_approval" and not approve.get("approvals"):
                    await _approve(client, flow, execution)
            await trio.sleep(0.3)


def strays(history: History, final: Snapshot) -> list[ExecutionRow]:
    """Unfinished executions no client was told of, made by a start without an Idempotency-Key
    whose answer was lost."""
    told = {str(r.body.get("id")) for r in history.requests
            if r.kind in ("start", "replay") and r.ok and isinstance(r.body, dict)}
    lost = {r.tag for r in history.of("start") if not r.idempotency_key and not r.ok}
    return [e for e in final.executions.values()
            if not e.finished and e.id not in told and e.tag in lost and e.replay_of is None]


async def cancel_strays(client: Client, final: Snapshot) -> None:
    for n, execution in enumerate(strays(client.cluster.history, final)):
        async def make(slot: int, execution: str = execution.id) -> Request:
            tag = f"s{client.seed}-stray-cancel-{client.sent}"
            return await client.send("cancel", slot, f"/api/v1/executions/{execution}/cancel", {"reason": tag},
                                     execution=execution, tag=tag)
        await _until_definite(lambda tries, n=n: make((n + tries) % len(client.cluster.slots)))


async def _until_definite(send: Callable[[int], Any]) -> Request:
    give_up = trio.current_time() + PATIENCE_S
    n = 0
    while True:
        request: Request = await send(n)
        n += 1
        if (request.status is not None and request.status < 500) or (n >= TRIES and trio.current_time() > give_up):
            return request
        await trio.sleep(0.3)


FLOWS = {"gate": _gate, "events": _events, "parent": _parent, "flaky": _flaky, "slow": _slow}
