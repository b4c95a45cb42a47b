// Triggers: every schedule and event rule of the runbooks I see, with its next and last run;
// Enable / Disable switch one (audited, with a reason).
import { api } from "../api.js";
import { el, when, attempt, confirmAction } from "../ui.js";

const REFRESH_MS = 5000;

export function triggersPage(view) {
  const body = el("tbody");
  const table = el("table", { "aria-label": "Triggers" },
    el("thead", {}, el("tr", {}, ...["Runbook", "Trigger", "When", "Enabled", "Next run", "Last run", ""].map((h) => el("th", { scope: "col", text: h })))),
    body);
  const empty = el("p", { text: "No runbook has triggers.", hidden: true });
  view.append(el("h1", { text: "Triggers" }),
    el("p", { class: "muted", text: "Schedules and event rules of the latest version of each runbook." }), table, empty);
  let timer = null, stopped = false;

  async function refresh() {
    clearTimeout(timer);
    const page = await attempt(() => api("/api/v1/triggers"));
    if (stopped) return;
    if (page) {
      body.replaceChildren(...page.items.map((item) => row(item, refresh)));
      empty.hidden = page.items.length > 0;
    }
    timer = setTimeout(refresh, REFRESH_MS);
  }
  refresh();
  return () => { stopped = true; clearTimeout(timer); };
}

function row(item, refresh) {
  const what = item.kind === "schedule" ? `${item.schedule} (${item.timezone})` : `on event ${item.eventType}`;
  const label = item.enabled ? "Disable" : "Enable";
  const path = `/api/v1/runbooks/${encodeURIComponent(item.runbookId)}/triggers/${encodeURIComponent(item.triggerId)}/${label.toLowerCase()}`;
  const toggle = async () => {
    const reason = await confirmAction(`${label} ${item.triggerId}?`, `Trigger ${item.triggerId} of ${item.runbookId}.`, { reason: true });
    if (reason === null) return;
    if (await attempt(() => api(path, { method: "POST", body: reason ? { reason } : {} }))) refresh();
  };
  return el("tr", { "data-trigger": `${item.runbookId}/${item.triggerId}` },
    el("td", { text: item.runbookId }), el("td", { text: item.triggerId }), el("td", { text: what }),
    el("td", { text: item.enabled ? "yes" : "no" }), el("td", { text: when(item.nextRunAt) }),
    el("td", {}, when(item.lastRunAt), item.lastExecutionId ? " · " : "",
      item.lastExecutionId ? el("a", { href: `/executions/${item.lastExecutionId}`, text: item.lastExecutionId.slice(0, 12) }) : null),
    el("td", {}, el("button", { type: "button", class: item.enabled ? "danger" : "primary", onclick: toggle }, label)));
}
