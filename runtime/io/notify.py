"""``Notifier``: the notifications of approval steps (``notify: {url, headers?}``).

When an approval step starts waiting, its execution's shell hands over a ``Notify`` effect
after the commit; the notifier renders the step's ``notify`` config with the execution's
scope and the tenant's secrets (the only place the values are used), and POSTs::

    {text, executionId, stepId, runbookId, message, approvers, minApprovals, deadlineAt, digest, link}

(and ``escalation: n`` for the n-th escalation stage, sent to that stage's approvers)

through the call-service executor: the same HTTP client, headers, retry rules (the step's
``retryPolicy``) and outbound checks as a call-service request. ``text`` is one readable line
(a chat webhook shows it as it is); ``link`` is the console page of the execution when
``PUBLIC_URL`` is set. With ``PUBLIC_URL`` and a signing key ``RUNBOOKS_LINK_KEY`` among the
tenant's secrets, it also carries signed decision links (``runtime.security.links``): one
token per approver named by user id, bound to the step's round, the digest and the step's
deadline (7 days from now for a step without one), as ``links: [{approver, approveUrl,
rejectUrl}]``, and as ``approveUrl``/``rejectUrl`` when one user is notified. The outcome goes back to the execution as a ``NotificationSent``
message (redacted), whose actor records it: logged and audited, and remembered on the step
so a restart does not send it again. A notification that finally fails leaves the step
waiting. This process sends one notification per (execution, step, attempt): a resume
that comes before the outcome is recorded (the outcome's own message wakes the execution)
does not send it again. ``NotifierHost`` is all it reaches of the runtime.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import attrs
import trio

from runtime.core.effects import Notify
from runtime.core.messages import NotificationSent
from runtime.io.attempts import run_attempts
from runtime.io.context import Services, StepContext
from runtime.io.http import call_service
from runtime.language.templates import TemplateError, render
from runtime.model import Evidence, LogEntry, RetryPolicy, StepError
from runtime.model.wire import parse_time
from runtime.security import links
from runtime.security.secrets import Secrets

logger = logging.getLogger("runbooks.notify")
REMEMBERED = 100_000  # notifications this process remembers having sent
LINK_TTL_WITHOUT_DEADLINE = timedelta(days=7)


def text_of(payload: dict[str, Any]) -> str:
    """The one line a chat shows."""
    approvers = ", ".join(payload.get("approvers") or []) or "nobody"
    line = (f"Approval needed in {payload['runbookId']} (execution {payload['executionId']}, step "
            f"{payload['stepId']}): {payload.get('message') or 'a decision is waiting'}; "
            f"{payload['minApprovals']} of {approvers}")
    if payload.get("deadlineAt"):
        line += f"; before {payload['deadlineAt']}"
    if payload.get("link"):
        line += f" {payload['link']}"
    return " ".join(line.split())


@attrs.frozen
class NotifierHost:
    services: Services  # the HTTP client and outbound checks of call-service
    secrets: Secrets  # the tenants' secrets the config renders with; what to redact
    public_url: str | None  # the console's address, for the link
    default_policy: RetryPolicy  # for a step without a retryPolicy of its own
    post: Callable[[str, NotificationSent], None]  # the outcome, to the execution
    now: Callable[[], datetime]  # the runtime's clock (links of a step without a deadline)


class Notifier:
    def __init__(self, host: NotifierHost, nursery: trio.Nursery) -> None:
        self._host = host
        self._nursery = nursery
        self._sent: OrderedDict[tuple[str, str, int, int], None] = OrderedDict()  # in flight or done here

    def send(self, execution_id: str, effect: Notify) -> None:
        key = (execution_id, effect.step_id, effect.attempt, effect.stage)
        if key in self._sent:
            return
        self._sent[key] = None
        if len(self._sent) > REMEMBERED:
            self._sent.popitem(last=False)
        self._nursery.start_soon(self._send, key, effect, name=f"notify {execution_id}/{effect.step_id}")

    async def _send(self, key: tuple[str, str, int, int], effect: Notify) -> None:
        execution_id = key[0]
        error, logs, evidence = await self._post(execution_id, effect)
        if error is not None:
            logger.warning("notification of step '%s' of execution %s failed: %s", effect.step_id, execution_id,
                           self._host.secrets.redact_text(error.message))
        message = NotificationSent(effect.step_id, effect.attempt, error, tuple(logs), tuple(evidence), effect.stage)
        self._host.post(execution_id, self._host.secrets.redact_report(message))

    def _links(self, tenant: str, execution_id: str, effect: Notify) -> dict[str, Any]:
        """The decision links of the notified approvers (none without a signing key)."""
        key = link_key(self._host.secrets, tenant)
        payload = effect.payload
        if not links.usable_key(key) or not payload.get("digest"):
            return {}
        assert key is not None
        deadline = payload.get("deadlineAt")
        expires = parse_time(deadline) if deadline else self._host.now() + LINK_TTL_WITHOUT_DEADLINE
        found = []
        for approver in [a for a in payload.get("approvers") or [] if not a.startswith("role:")]:
            claims = links.LinkClaims(tenant, execution_id, effect.step_id, effect.attempt, approver,
                                      str(payload["digest"]), expires)
            url = f"{self._host.public_url}/decide/{links.issue(claims, key)}"
            found.append({"approver": approver, "approveUrl": f"{url}?decision=approve",
                          "rejectUrl": f"{url}?decision=reject"})
        single = {"approveUrl": found[0]["approveUrl"], "rejectUrl": found[0]["rejectUrl"]} if len(found) == 1 else {}
        return {"links": found, **single} if found else {}

    async def _post(self, execution_id: str, effect: Notify) -> tuple[StepError | None, list[LogEntry], list[Evidence]]:
        host = self._host
        tenant = str(effect.scope.get("tenantId"))
        try:
            notify = render(effect.config, effect.scope, host.secrets.lookup(tenant))
        except TemplateError as exc:
            return StepError("template", f"notify: {exc}", False), [], []
        payload = dict(effect.payload)
        if host.public_url:
            payload["link"] = f"{host.public_url}/executions/{execution_id}"
            payload |= self._links(tenant, execution_id, effect)
        payload["text"] = text_of(payload)
        key = f"notify:{execution_id}:{effect.step_id}:{effect.attempt}" + (f":{effect.stage}" if effect.stage else "")
        config = {"url": notify.get("url"), "method": "POST", "headers": notify.get("headers") or {},
                  "body": payload, "idempotencyKey": key}
        logs: list[LogEntry] = []
        evidence: list[Evidence] = []

        def context(attempt: int) -> StepContext:
            return StepContext(config=config, scope=effect.scope, execution_id=execution_id, step_id=effect.step_id,
                               tenant_id=tenant, attempt=attempt, services=host.services, step_type="notify")

        class Kept:
            """Keep the records of the attempts that failed before the last one."""

            async def retrying(self, attempt: int, error: StepError, delay_s: float, ctx: StepContext) -> None:
                logs.extend(ctx.logs)
                evidence.extend(ctx.evidence)

            async def attempt_started(self, attempt: int) -> None:
                pass

        policy = effect.policy if isinstance(effect.policy, RetryPolicy) else host.default_policy
        # call-service's executor: the one call site of outbound HTTP (and its host checks)
        outcome, last = await run_attempts(call_service, context, policy, None, 1, Kept())
        return outcome.error, [*logs, *last.logs], [*evidence, *last.evidence]


def link_key(secrets: Secrets, tenant: str) -> str | None:
    """The tenant's ``RUNBOOKS_LINK_KEY`` (its own, else the shared one), or None."""
    try:
        return secrets.value(tenant, links.KEY_NAME)
    except TemplateError:
        return None
