"""Signed decision links: ``/decide/<token>``, the pages an approver reaches from a notification.

``GET`` never decides: it shows what the link would decide (the step, the execution, who
decides, the message, the digest and everything the step shows) with a form whose button
says the decision; ``?decision=approve`` or ``reject`` picks the one the link was for, and
without it both are offered. The form's ``POST`` decides, once. A link that cannot be used
(``invalid``, ``disabled``, ``expired``, ``used``, ``closed``, ``stale``, ``refused``) gets a
page that says why. The token is the credential: these pages sit outside ``/api/v1`` and
need no other identity. They are plain HTML with the console's stylesheet, under the
console's Content-Security-Policy (nothing from another origin, no script at all).
"""

from __future__ import annotations

import json
from html import escape

from quart import Response, request
from quart_trio import QuartTrio

from gateway.routes_console import HEADERS
from gateway.state import state
from runtime import CommandQueued, DecisionLink, Execution, LinkRefused
from runtime.kinds.approval_rules import DECISIONS

STATUS_OF = {"invalid": 404, "disabled": 404, "expired": 410, "used": 409, "closed": 409, "stale": 409,
             "refused": 409}
TITLES = {"invalid": "This link is not valid", "disabled": "Decision links are not enabled",
          "expired": "This link has expired", "used": "This link has been used", "closed": "Nothing to decide",
          "stale": "What you would decide on has changed", "refused": "The decision was refused"}
LABELS = {"approve": "Approve", "reject": "Reject"}
PAGE_HEADERS = {**HEADERS, "Cache-Control": "no-store",
                "Content-Security-Policy": HEADERS["Content-Security-Policy"] + "; form-action 'self'"}


def register_links(app: QuartTrio) -> None:
    app.add_url_rule("/decide/<token>", endpoint="decision_link", view_func=show_link, methods=["GET"])
    app.add_url_rule("/decide/<token>", endpoint="decision_link_post", view_func=decide, methods=["POST"])


async def show_link(token: str) -> Response:
    try:
        link = await state().runtime.decision_link(token)
    except LinkRefused as refused:
        return _refused(refused)
    chosen = request.args.get("decision")
    return _page("Confirm your decision", _confirmation(link, chosen if chosen in DECISIONS else None))


async def decide(token: str) -> Response:
    form = await request.form
    decision, comment = form.get("decision", ""), form.get("comment") or None
    try:
        execution = await state().runtime.decide_by_link(token, decision, comment)
    except LinkRefused as refused:
        return _refused(refused)
    except CommandQueued:
        return _page("Decision accepted", "<p>Your decision was accepted and is applied as soon as the process "
                                          "that runs the execution takes it.</p>", 202)
    return _page("Decision recorded", _recorded(execution, decision))


def _confirmation(link: DecisionLink, chosen: str | None) -> str:
    claims, shown = link.claims, link.request.shown
    what = f"<strong>{LABELS[chosen]}</strong>" if chosen else "<strong>approve or reject</strong>"
    buttons = [chosen] if chosen else list(DECISIONS)
    return "".join([
        f"<p>You are about to {what} step <code>{escape(claims.step)}</code> of execution "
        f"<code>{escape(claims.execution)}</code> (runbook <code>{escape(shown['runbook']['id'])}</code> "
        f"version {escape(str(shown['runbook']['version']))}) as <strong>{escape(claims.approver)}</strong>.</p>",
        f"<h2>Message</h2><p>{escape(shown.get('message') or 'a decision is waiting')}</p>",
        f"<h2>Digest</h2><p><code class=\"digest\">{escape(link.request.digest)}</code> "
        "(SHA-256 of what is shown below, as canonical JSON)</p>",
        f"<h2>What you are shown</h2><pre>{escape(json.dumps(shown, indent=2, ensure_ascii=False))}</pre>",
        '<form method="post"><div class="field"><label for="comment">Comment</label>'
        '<textarea id="comment" name="comment" rows="2"></textarea></div><div class="row">',
        *(f'<button type="submit" name="decision" value="{d}" class="{_style(d)}">{LABELS[d]}</button>'
          for d in buttons),
        "</div></form>",
        f"<p>This link can be used once, until {escape(claims.expires.isoformat())}.</p>",
    ])


def _style(decision: str) -> str:
    return "primary" if decision == "approve" else "danger"


def _recorded(execution: Execution, decision: str) -> str:
    done = "approved" if decision == "approve" else "rejected"
    return (f"<p>You {done}. Execution <code>{escape(execution.id)}</code> is now "
            f"<strong>{escape(execution.status.value)}</strong>.</p>")


def _refused(refused: LinkRefused) -> Response:
    body = f'<p class="refused" data-reason="{escape(refused.reason)}">{escape(str(refused))}</p>'
    return _page(TITLES.get(refused.reason, "This link cannot be used"), body, STATUS_OF.get(refused.reason, 409))


def _page(title: str, body: str, status: int = 200) -> Response:
    html = ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{escape(title)} - Runbooks</title><link rel=\"icon\" href=\"data:,\">"
            "<link rel=\"stylesheet\" href=\"/console/style.css\"></head><body>"
            "<header class=\"top\"><span class=\"brand\">Runbooks</span></header>"
            f"<main><h1>{escape(title)}</h1>{body}</main></body></html>")
    response = Response(html, status=status, content_type="text/html; charset=utf-8")
    response.headers.update(PAGE_HEADERS)
    return response
