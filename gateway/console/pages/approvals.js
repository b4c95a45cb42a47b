// The approvals inbox: every step waiting for my decision, with its message, the decisions
// so far, how many approvals are still needed and the digest of what it shows; approve or
// reject with a comment (the decision carries the digest shown).
import { api } from "../api.js";
import { el, when, attempt, confirmAction } from "../ui.js";

const REFRESH_MS = 5000;

export function approvalsPage(view) {
  const list = el("div", { "aria-live": "polite" });
  view.append(el("h1", { text: "Approvals" }), el("p", { class: "muted", text: "Steps waiting for your decision." }), list);
  let timer = null, stopped = false;

  async function refresh(force = false) {
    clearTimeout(timer);
    const page = await attempt(() => api("/api/v1/approvals?limit=200"));
    if (stopped) return;
    if (page && (force || !list.contains(document.activeElement))) {  // never rebuild under a user typing
      list.replaceChildren(...page.items.map((item, i) => card(item, i, () => refresh(true))));
      if (!page.items.length) list.append(el("p", { text: "Nothing waits for your decision." }));
    }
    timer = setTimeout(() => refresh(), REFRESH_MS);
  }
  refresh();
  return () => { stopped = true; clearTimeout(timer); };
}

function card(item, index, refresh) {
  const comment = el("textarea", { id: `comment-${index}`, rows: 2 });
  const decide = (choice, label) => async () => {
    if (await confirmAction(`${label} ${item.stepId}?`, item.message || `Step ${item.stepId} of ${item.runbookId}.`) === null) return;
    const done = await attempt(() => api(`/api/v1/executions/${encodeURIComponent(item.executionId)}/steps/${encodeURIComponent(item.stepId)}/approvals`,
      { method: "POST", body: { decision: choice, comment: comment.value || null, digest: item.digest } }));
    if (done) refresh();
  };
  const decided = item.approvals.map((a) => `${a.approver} ${a.decision}d${a.comment ? ` (“${a.comment}”)` : ""}`).join(", ");
  return el("article", { class: "card", "aria-labelledby": `approval-${index}` },
    el("h2", { id: `approval-${index}` }, `${item.runbookId} · ${item.stepId}`),
    item.message ? el("p", { class: "message", text: item.message }) : null,
    el("p", {}, el("strong", { text: `${item.approvalsNeeded} more approval${item.approvalsNeeded === 1 ? "" : "s"} needed` }),
      ` (of ${item.minApprovals}; approvers ${item.approvers.join(", ")})`, decided ? ` · so far: ${decided}` : ""),
    item.digest ? el("p", {}, el("strong", { text: "Digest: " }), el("code", { class: "digest", text: item.digest })) : null,
    el("p", { class: "muted" }, `Waiting since ${when(item.startedAt)}`, item.deadlineAt ? ` · until ${when(item.deadlineAt)}` : "", " · ",
      el("a", { href: `/executions/${item.executionId}`, text: `execution ${item.executionId.slice(0, 12)}` })),
    el("div", { class: "field" }, el("label", { for: `comment-${index}`, text: "Comment" }), comment),
    el("div", { class: "row" }, el("button", { type: "button", class: "primary", onclick: decide("approve", "Approve") }, "Approve"),
      el("button", { type: "button", class: "danger", onclick: decide("reject", "Reject") }, "Reject")));
}
