// Executions: the live list (newest first), filtered by status and runbook, paginated,
// with counts by status. Refreshed every few seconds while the tab is visible.
import { api, query, STATUSES } from "../api.js";
import { el, badge, when, attempt } from "../ui.js";

const REFRESH_MS = 3000;
const COUNT_LIMIT = 100;

export function executionsPage(view) {
  const params = new URLSearchParams(location.search);
  const state = { status: params.get("status") || "", runbook: params.get("runbook") || "", cursors: [null] };
  const status = el("select", { id: "f-status" }, el("option", { value: "", text: "any" }),
    STATUSES.map((s) => el("option", { value: s, text: s.replace("_", " "), selected: s === state.status })));
  const runbook = el("select", { id: "f-runbook" }, el("option", { value: "", text: "any" }));
  const counts = el("div", { class: "counts", role: "group", "aria-label": "Executions by status" });
  const body = el("tbody");
  const prev = el("button", { type: "button", disabled: true }, "Newer");
  const next = el("button", { type: "button", disabled: true }, "Older");
  view.append(
    el("h1", { text: "Executions" }), counts,
    el("div", { class: "row" }, el("label", { for: "f-status", text: "Status" }), status,
       el("label", { for: "f-runbook", text: "Runbook" }), runbook),
    el("table", { "aria-label": "Executions" }, el("thead", {}, el("tr", {},
      ["Execution", "Runbook", "Status", "Started", "Created"].map((h) => el("th", { scope: "col", text: h })))), body),
    el("div", { class: "row" }, prev, next));

  let timer = null;
  let stopped = false;
  const reload = () => { state.cursors = [null]; refresh(); };
  status.addEventListener("change", () => { state.status = status.value; reload(); });
  runbook.addEventListener("change", () => { state.runbook = runbook.value; reload(); });
  next.addEventListener("click", () => { state.cursors.push(state.next); refresh(); });
  prev.addEventListener("click", () => { state.cursors.pop(); refresh(); });

  async function refresh() {
    clearTimeout(timer);
    const cursor = state.cursors[state.cursors.length - 1];
    const page = await attempt(() => api(`/api/v1/executions${query({ status: state.status, runbookId: state.runbook, cursor, limit: 20 })}`));
    if (stopped) return;
    if (page) {
      body.replaceChildren(...page.items.map(row));
      if (!page.items.length) body.append(el("tr", {}, el("td", { colspan: 5, class: "muted", text: "No executions." })));
      state.next = page.nextCursor;
      next.disabled = !page.nextCursor;
      prev.disabled = state.cursors.length < 2;
      history.replaceState({}, "", `/executions${query({ status: state.status, runbook: state.runbook })}`);
    }
    await countAll();
    if (!stopped) timer = setTimeout(refresh, document.hidden ? REFRESH_MS * 5 : REFRESH_MS);
  }

  async function countAll() {
    const answers = await Promise.all(STATUSES.map((s) =>
      api(`/api/v1/executions${query({ status: s, runbookId: state.runbook, limit: COUNT_LIMIT })}`).catch(() => null)));
    if (stopped) return;
    counts.replaceChildren(...STATUSES.map((s, i) => {
      const a = answers[i];
      const n = a ? `${a.items.length}${a.nextCursor ? "+" : ""}` : "?";
      return el("button", { type: "button", class: `badge st-${s}`, "aria-pressed": String(state.status === s),
        onclick: () => { state.status = state.status === s ? "" : s; status.value = state.status; reload(); } },
        `${s.replace("_", " ")}: ${n}`);
    }));
  }

  attempt(() => api("/api/v1/runbooks?limit=1000")).then((page) => {
    if (!page) return;
    for (const rb of page.items) runbook.append(el("option", { value: rb.id, text: rb.id, selected: rb.id === state.runbook }));
  });
  refresh();
  return () => { stopped = true; clearTimeout(timer); };
}

function row(ex) {
  return el("tr", {},
    el("td", {}, el("a", { href: `/executions/${ex.id}`, class: "mono", text: ex.id.slice(0, 12) })),
    el("td", { text: `${ex.runbookId} v${ex.runbookVersion}` }),
    el("td", {}, badge(ex.status)),
    el("td", { text: when(ex.startedAt) }),
    el("td", { text: when(ex.createdAt) }));
}
