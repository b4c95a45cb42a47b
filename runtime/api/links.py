"""The embedded API's signed decision links: what a link would decide, and deciding with it.

A link (``runtime.security.links``) names one approver of one waiting step, on one digest,
until the step's deadline. ``decision_link`` reads it without changing anything (the page a
``GET`` shows); ``decide_by_link`` decides with it, once: the store records its use first
(the first claim wins, whichever process it reaches: ``runtime.store.decision_links``), and
the decision then goes where the execution runs, carrying the link's digest, so a step that
shows something else by then refuses it. A link that cannot be used raises ``LinkRefused``
with the reason (``invalid``, ``disabled``, ``expired``, ``used``, ``closed``, ``stale``,
``refused``) and a sentence for the person who opened it.
"""

from __future__ import annotations

import uuid

import attrs

from runtime.api.parts import Parts
from runtime.core.messages import DecideApproval
from runtime.io.notify import link_key
from runtime.kinds.approval_rules import DECISIONS
from runtime.model import ApprovalRequest, Execution, StepStatus
from runtime.model.errors import Conflict, Forbidden, NotFound, StaleDigest
from runtime.model.wire import format_time
from runtime.security.links import LinkClaims, LinkRefused, read, token_id


@attrs.frozen
class DecisionLink:
    """What a usable link decides on: who, which step, and what the step shows."""

    claims: LinkClaims
    execution: Execution
    request: ApprovalRequest


class DecisionLinks(Parts):
    async def decision_link(self, token: str) -> DecisionLink:
        """What the link decides on, if it can be used now (``LinkRefused`` otherwise)."""
        claims = read(token, lambda tenant: link_key(self.secrets, tenant), self.clock.now())
        used = await self.read(self.store.link_used, token_id(token))
        if used is not None:
            raise LinkRefused("used", f"this link was already used, at {format_time(used)}")
        return await self._waiting(claims)

    async def decide_by_link(self, token: str, decision: str, comment: str | None = None) -> Execution:
        """Decide with the link, once: the execution as committed (``LinkRefused`` if the link
        cannot be used, or the step refused the decision)."""
        if decision not in DECISIONS:
            raise LinkRefused("invalid", f"the decision must be {' or '.join(DECISIONS)}")
        link = await self.decision_link(token)
        claims = link.claims
        used = await self.read(self.store.claim_link, token_id(token), uuid.uuid4().hex, claims.execution,
                               claims.step, claims.approver, self.clock.now())
        if used is not None:
            raise LinkRefused("used", f"this link was already used, at {format_time(used)}")
        request = DecideApproval(claims.step, claims.approver, decision, comment, digest=claims.digest, via="link")
        try:
            return await self.routing.apply(claims.execution, claims.tenant, request)
        except StaleDigest as exc:
            raise _stale(exc.current_digest) from None
        except (Conflict, Forbidden, NotFound) as exc:
            raise LinkRefused("refused", f"the decision was refused: {exc}") from None

    async def _waiting(self, claims: LinkClaims) -> DecisionLink:
        """The link's step, if it still waits for a decision on the link's digest."""
        try:
            execution = await self.routing.fetch(claims.execution, claims.tenant)
        except NotFound:
            raise LinkRefused("invalid", "the execution of this link does not exist") from None
        state = execution.steps.get(claims.step)
        if state is None or state.status is not StepStatus.AWAITING_APPROVAL:
            now = state.status.value if state is not None else "gone"
            raise LinkRefused("closed", f"step '{claims.step}' no longer waits for a decision (it is {now})")
        if state.attempts != claims.round:
            raise LinkRefused("closed", f"step '{claims.step}' started a new round of decisions since this "
                                        "link was sent")
        request = state.approval_request
        if request is None or request.digest != claims.digest:
            raise _stale(request.digest if request is not None else None)
        return DecisionLink(claims, execution, request)


def _stale(current: str | None) -> LinkRefused:
    return LinkRefused("stale", "what the step shows has changed since this link was sent "
                                f"(its digest is now {current}): review it in the console and decide there")
