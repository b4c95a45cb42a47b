// One execution: its runbook as a live SVG graph, the execution's output, the selected
// step's details (attempts, timings, output, error; approve/reject or retry where the state
// allows; why it is as it is; complete or skip it by hand, or fork from it), the controls, and tabs for logs, evidence (with SHA-256) and audit. Live through
// the stream. The audit tab says whether the tenant's hash-chained audit ledger verifies. Until the user picks a step, the page follows the step that needs attention
// (one waiting for a decision first); a step waiting for a decision shows its message and
// who may decide, as the engine rendered them when it asked (its "approval requested" log
// entry, which every reader of the execution may read), the digest of what it shows and
// what that is; a decision carries the digest shown, so a decision on something that
// changed meanwhile is refused (409) instead of counted.
import { api, follow, FINISHED } from "../api.js";
import { el, badge, when, took, json, attempt, confirmAction, showError } from "../ui.js";
import { drawGraph } from "../graph.js";
import { navigate } from "../navigation.js";

const ATTENTION = ["awaiting_approval", "waiting", "failed", "rejected", "running", "retrying"];
const BY_HAND = ["failed", "waiting", "awaiting_approval"];  // what a person may complete or skip
const CONTROLS = {
  Pause: { path: "pause", allowed: (s) => ["pending", "running", "awaiting_approval"].includes(s), reason: true },
  Resume: { path: "resume", allowed: (s) => ["paused", "pausing"].includes(s), reason: true },
  Cancel: { path: "cancel", allowed: (s) => !FINISHED.includes(s), reason: true, required: true },
  Replay: { path: "replay", allowed: () => true, reason: true },
};

export function executionPage(view, id) {
  const controller = new AbortController();
  const base = `/api/v1/executions/${encodeURIComponent(id)}`;
  const ui = {
    title: el("h1", { text: `Execution ${id.slice(0, 12)}` }),
    summary: el("div", { class: "row", "aria-live": "polite" }),
    controls: el("div", { class: "row", role: "group", "aria-label": "Control" }),
    graph: el("div", { class: "graph" }),
    output: el("section", { class: "panel", "aria-label": "Output of the execution", hidden: true }),
    detail: el("section", { class: "panel", "aria-label": "Step details" }),
    tabs: el("div", { role: "tablist", "aria-label": "Records" }),
    tab: el("div", { role: "tabpanel", id: "records", tabindex: "0" }),
  };
  view.append(ui.title, ui.summary, ui.controls, ui.graph, ui.output, ui.detail, ui.tabs, ui.tab);
  let execution = null, selected = null, picked = false, update = () => {}, current = "Logs", runbookDoc = null;
  let verdict = null;  // the tenant's audit ledger checked, once (GET /api/v1/audit/verify)
  const asked = new Map();  // "step#attempt" -> {message, approvers}, from the step's "approval requested" entry

  for (const [name, { path, allowed, reason, required }] of Object.entries(CONTROLS)) {
    const button = el("button", { type: "button", "data-action": name, class: name === "Cancel" ? "danger" : null }, name);
    button.addEventListener("click", async () => {
      const answer = await confirmAction(`${name} this execution?`, `${name} execution ${id}.`, { reason, reasonRequired: required });
      if (answer === null) return;
      const result = await attempt(() => api(`${base}/${path}`, { method: "POST", body: answer ? { reason: answer } : (required ? {} : undefined) }));
      if (result && name === "Replay") navigate(`/executions/${result.id}`);
      else if (result) show(result);
    });
    ui.controls.append(button);
  }

  const tabs = { Logs: logs, Evidence: evidence, Audit: audit };
  for (const name of Object.keys(tabs)) {
    const tab = el("button", { type: "button", role: "tab", id: `tab-${name}`, "aria-controls": "records", "aria-selected": String(name === current) }, name);
    tab.addEventListener("click", () => { current = name; for (const t of ui.tabs.children) t.setAttribute("aria-selected", String(t === tab)); records(); });
    ui.tabs.append(tab);
  }

  function show(state) {
    execution = state;
    ui.summary.replaceChildren(...[badge(state.status),
      el("span", {}, "Runbook ", el("strong", { text: `${state.runbookId} v${state.runbookVersion}` })),
      el("span", { class: "muted", text: `created ${when(state.createdAt)}` }),
      state.completedAt ? el("span", { class: "muted", text: `took ${took(state.startedAt, state.completedAt)}` }) : null,
      state.replayOf ? el("a", { href: `/executions/${state.replayOf}`, text: "replay of an earlier execution" }) : null,
      state.error ? el("span", { class: "problems", text: `${state.error.code}: ${state.error.message}` }) : null].filter(Boolean));
    for (const button of ui.controls.querySelectorAll("button")) button.disabled = !CONTROLS[button.dataset.action].allowed(state.status);
    ui.output.hidden = state.output === null || state.output === undefined;
    if (!ui.output.hidden) ui.output.replaceChildren(el("h2", { text: "Output" }), el("pre", { text: json(state.output) }));
    if (!picked) selected = attention(state) || selected || Object.keys(state.steps)[0];
    update(state, selected);
    if (selected) stepDetail(selected);
  }

  function select(stepId) { picked = true; selected = stepId; update(execution, selected); stepDetail(stepId); }

  function stepDetail(stepId) {
    const step = execution.steps[stepId];
    const parts = [el("h2", { text: stepId }), el("div", { class: "row" }, badge(step.status), el("span", { text: step.type })),
      el("p", { text: `Attempts: ${step.attempts} · started ${when(step.startedAt)} · ${step.completedAt ? `ended ${when(step.completedAt)} (${took(step.startedAt, step.completedAt)})` : "not ended"}` })];
    if (step.deadlineAt) parts.push(el("p", { text: `Waits until ${when(step.deadlineAt)}` }));
    if (step.progress) parts.push(el("p", { text: `Progress: ${step.progress.done} of ${step.progress.total}` }));
    if (step.error) parts.push(el("p", { class: "problems", text: `Error ${step.error.code}: ${step.error.message}${step.error.retryable ? " (retryable)" : ""}` }));
    if (step.approvals && step.approvals.length) parts.push(el("p", { text: `Decisions: ${step.approvals.map((a) => `${a.approver} ${a.decision}${a.comment ? ` (“${a.comment}”)` : ""}`).join(", ")}` }));
    if (step.delegations && step.delegations.length) parts.push(el("p", { text: `Delegated: ${step.delegations.map((d) => `${d.delegator} to ${d.to} (“${d.reason}”)`).join(", ")}` }));
    if (step.escalations) parts.push(el("p", { text: `Escalated: ${step.escalations} stage${step.escalations === 1 ? "" : "s"} reached` }));
    if (step.output !== null && step.output !== undefined) parts.push(el("h2", { text: "Output" }), el("pre", { text: json(step.output) }));
    if (step.status === "awaiting_approval") parts.push(waitingFor(stepId, step), decision(stepId, step));
    if (execution.status === "failed" && ["failed", "rejected"].includes(step.status)) {
      parts.push(el("div", { class: "row" }, el("button", { type: "button", class: "primary", onclick: async () => {
        if (await confirmAction(`Retry ${stepId}?`, "Re-runs this step, the steps its failure cancelled and what depends on them.") === null) return;
        const result = await attempt(() => api(`${base}/steps/${encodeURIComponent(stepId)}/retry`, { method: "POST" }));
        if (result) show(result);
      } }, "Retry")));
    }
    parts.push(why(stepId), byHand(stepId, step));
    ui.detail.replaceChildren(...parts);
  }

  // "Why": the step's explanation (the engine's decision records, as sentences), fetched each time it is shown.
  function why(stepId) {
    const list = el("ul", { class: "why" });
    const box = el("section", { class: "why", "aria-label": "Why" }, el("h2", { text: "Why" }), list);
    api(`${base}/explain?stepId=${encodeURIComponent(stepId)}`).then((answer) => {
      const reasons = answer.items.length ? answer.items[0].reasons : [];
      list.replaceChildren(...(reasons.length ? reasons.map((r) => el("li", { text: r })) : [el("li", { class: "muted", text: "Nothing decided yet." })]));
    }).catch(() => {});
    return box;
  }

  // Complete or skip the step by hand (a failed, waiting or awaiting-approval step), or fork the execution from it.
  function byHand(stepId, step) {
    const takenOver = BY_HAND.includes(step.status) && (!FINISHED.includes(execution.status) || (execution.status === "failed" && step.status === "failed"));
    const output = el("textarea", { id: "by-hand-output", rows: 2, placeholder: "null" });
    const context = execution.context && execution.context.legalBasis ? { legalBasis: execution.context.legalBasis } : undefined;
    const step_ = `${base}/steps/${encodeURIComponent(stepId)}`;
    const complete = async () => {
      let value = null;
      try { value = output.value.trim() ? JSON.parse(output.value) : null; } catch (error) { showError(`Output: not JSON (${error.message})`); return; }
      const justification = await confirmAction(`Complete ${stepId} by hand?`, "The execution goes on as if this step had succeeded with the output given. Say what was done.", { reason: true, reasonRequired: true });
      if (justification === null) return;
      const result = await attempt(() => api(`${step_}/complete`, { method: "POST", body: { output: value, justification, context } }));
      if (result) show(result);
    };
    const skip = async () => {
      const justification = await confirmAction(`Skip ${stepId} by hand?`, "The execution goes on as if this step had been skipped. Say why.", { reason: true, reasonRequired: true });
      if (justification === null) return;
      const result = await attempt(() => api(`${step_}/skip`, { method: "POST", body: { justification, context } }));
      if (result) show(result);
    };
    const fork = async () => {
      const reason = await confirmAction(`Fork from ${stepId}?`, "A new execution of this version that keeps the outputs of the steps before this one and runs the rest.", { reason: true });
      if (reason === null) return;
      const result = await attempt(() => api(`${base}/fork`, { method: "POST", body: reason ? { fromStep: stepId, reason } : { fromStep: stepId } }));
      if (result) navigate(`/executions/${result.id}`);
    };
    return el("section", { class: "by-hand", "aria-label": "By hand" }, el("h2", { text: "By hand" }),
      el("div", { class: "field" }, el("label", { for: "by-hand-output", text: "Output for Complete (JSON)" }), output),
      el("div", { class: "row" },
        el("button", { type: "button", "data-action": "complete", disabled: !takenOver, onclick: complete }, "Complete by hand"),
        el("button", { type: "button", "data-action": "skip", disabled: !takenOver, onclick: skip }, "Skip by hand"),
        el("button", { type: "button", "data-action": "fork", onclick: fork }, "Fork from here")));
  }

  // The rendered message and approvers; fetched once per attempt, shown when known.
  function waitingFor(stepId, step) {
    const key = `${stepId}#${step.attempts}`;
    const request = step.approvalRequest;
    const box = el("section", { class: "waiting", "aria-label": "Waiting for a decision" }, el("h2", { text: "Waiting for a decision" }),
      request ? el("p", {}, el("strong", { text: "Digest: " }), el("code", { class: "digest", text: request.digest })) : null,
      request ? el("details", {}, el("summary", { text: "What you are shown (the digest is its SHA-256 as canonical JSON)" }),
        el("pre", { text: json(request.shown) })) : null);
    const fill = (ask) => {
      const config = ((runbookDoc && runbookDoc.steps) || []).find((s) => s.id === stepId)?.config || {};
      const approved = new Set(step.approvals.filter((a) => a.decision === "approve").map((a) => a.approver));
      const needed = Math.max((config.minApprovals || 1) - approved.size, 0);
      box.append(ask.message ? el("p", { class: "message", text: ask.message }) : null,
        el("p", {}, el("strong", { text: "May decide: " }), (ask.approvers || config.approvers || []).join(", "),
          ` · ${needed} more approval${needed === 1 ? "" : "s"} needed`));
    };
    if (asked.has(key)) fill(asked.get(key));
    else {
      api(`${base}/logs?stepId=${encodeURIComponent(stepId)}&limit=1000`).then((page) => {
        const entry = page.items.filter((e) => e.message === "approval requested").pop();
        asked.set(key, entry ? entry.data || {} : {});
        if (box.isConnected) fill(asked.get(key));
      }).catch(() => {});
    }
    return box;
  }

  function decision(stepId, step) {
    const comment = el("textarea", { id: "decision-comment", rows: 2 });
    const digest = step.approvalRequest ? step.approvalRequest.digest : null;  // what this page shows
    const decide = (choice) => async () => {
      const label = choice === "approve" ? "Approve" : "Reject";
      if (await confirmAction(`${label} ${stepId}?`, `Record your decision on step ${stepId}.`) === null) return;
      const result = await attempt(() => api(`${base}/steps/${encodeURIComponent(stepId)}/approvals`, { method: "POST", body: { decision: choice, comment: comment.value || null, digest } }));
      if (result) show(result);
    };
    return el("div", {}, el("div", { class: "field" }, el("label", { for: "decision-comment", text: "Comment" }), comment),
      el("div", { class: "row" }, el("button", { type: "button", class: "primary", onclick: decide("approve") }, "Approve"),
        el("button", { type: "button", class: "danger", onclick: decide("reject") }, "Reject")));
  }

  async function records() { await tabs[current](); }

  async function logs() {
    const page = await attempt(() => api(`${base}/logs?limit=1000`));
    if (!page || current !== "Logs") return;
    ui.tab.replaceChildren(table(["Time", "Level", "Step", "Message", "Data"], page.items.map((e) =>
      [when(e.at), e.level, e.stepId || "", e.message, e.data && Object.keys(e.data).length ? el("code", { text: JSON.stringify(e.data) }) : ""])));
  }

  async function evidence() {
    const page = await attempt(() => api(`${base}/evidence`));
    if (!page || current !== "Evidence") return;
    ui.tab.replaceChildren(table(["Time", "Step", "Kind", "SHA-256", "Data"], page.items.map((e) =>
      [when(e.createdAt), e.stepId || "", e.kind, el("code", { class: "sha", text: e.sha256 }), el("pre", { text: json(e.data) })])));
  }

  async function audit() {
    const page = await attempt(() => api(`${base}/audit`));
    if (!page || current !== "Audit") return;
    verdict ??= api("/api/v1/audit/verify").catch(() => null);  // once per page: it reads the tenant's whole ledger
    const mark = el("p", { class: "ledger", role: "status", id: "ledger-mark", text: "Checking the audit ledger…" });
    verdict.then((v) => {
      if (!v) mark.textContent = "The audit ledger could not be checked.";
      else if (v.ok) { mark.textContent = `✓ verified: the tenant's audit ledger is intact (${v.entries} entries, hash-chained)`; mark.dataset.verified = "true"; }
      else { mark.textContent = `✗ the audit ledger does not verify: seq ${v.seq}, ${v.reason}`; mark.dataset.verified = "false"; }
    });
    ui.tab.replaceChildren(mark, table(["Seq", "Time", "Actor", "Action", "Step", "Legal basis", "Reason", "Hash"], page.items.map((e) =>
      [e.seq ?? "", when(e.at), e.actor, e.action, e.stepId || "", e.legalBasis || "", e.reason || "",
        e.hash ? el("code", { class: "sha", title: e.hash, text: e.hash.slice(0, 12) }) : ""])));
  }

  (async () => {
    const first = await attempt(() => api(base));
    if (!first) return;
    const runbook = await attempt(() => api(`/api/v1/runbooks/${encodeURIComponent(first.runbookId)}?version=${first.runbookVersion}`));
    if (runbook) { runbookDoc = runbook.document; update = drawGraph(ui.graph, runbookDoc, select); }
    show(first);
    records();
    await follow(id, (state) => { show(state); records(); }, controller.signal).catch((error) => attempt(() => { throw error; }));
    if (!controller.signal.aborted) records();
  })();
  return () => controller.abort();
}

// The step that needs attention first: one waiting for a decision, then an event, a failure, a run.
function attention(state) {
  for (const status of ATTENTION) {
    const found = Object.keys(state.steps).find((id) => state.steps[id].status === status);
    if (found) return found;
  }
  return null;
}

function table(headers, rows) {
  return el("table", {}, el("thead", {}, el("tr", {}, headers.map((h) => el("th", { scope: "col", text: h })))),
    el("tbody", {}, rows.length ? rows.map((cells) => el("tr", {}, cells.map((c) => el("td", {}, c))))
      : el("tr", {}, el("td", { colspan: headers.length, class: "muted", text: "Nothing yet." }))));
}
