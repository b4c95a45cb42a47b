// The console's shell: identity (asked first), navigation and the router of deep links.
import { identity, setIdentity, clearIdentity, serverMode } from "./identity.js";
import { el, clearError } from "./ui.js";
import { navigate, NAVIGATED } from "./navigation.js";
import { executionsPage } from "./pages/executions.js";
import { executionPage } from "./pages/execution.js";
import { approvalsPage } from "./pages/approvals.js";
import { runbooksPage } from "./pages/runbooks.js";
import { triggersPage } from "./pages/triggers.js";

let leave = () => {};
let mode = "development";

function route() {
  const path = location.pathname.replace(/\/+$/, "") || "/executions";
  const match = path.match(/^\/executions\/([^/]+)/);
  if (match) return { nav: "executions", render: (view) => executionPage(view, decodeURIComponent(match[1])) };
  if (path.startsWith("/approvals")) return { nav: "approvals", render: approvalsPage };
  if (path.startsWith("/runbooks")) return { nav: "runbooks", render: runbooksPage };
  if (path.startsWith("/triggers")) return { nav: "triggers", render: triggersPage };
  return { nav: "executions", render: executionsPage };
}

function show() {
  leave();
  clearError();
  const view = document.getElementById("view");
  view.replaceChildren();
  if (!ready()) { askIdentity(view); return; }
  const { nav, render } = route();
  for (const link of document.querySelectorAll("[data-nav]")) {
    if (link.dataset.nav === nav) link.setAttribute("aria-current", "page"); else link.removeAttribute("aria-current");
  }
  leave = render(view) || (() => {});
  showIdentity();
}

function ready() {
  const id = identity();
  return mode === "tokens" ? Boolean(id.token) : Boolean(id.user);
}

function showIdentity() {
  const id = identity();
  const who = mode === "tokens" ? "signed in with a token" : `${id.user} @ ${id.tenant || "default"}`;
  document.getElementById("identity").replaceChildren(
    el("span", { text: who }),
    el("button", { type: "button", onclick: () => { clearIdentity(); show(); } }, "Change identity"));
}

function askIdentity(view) {
  document.getElementById("identity").replaceChildren();
  const params = new URLSearchParams(location.search);
  const form = el("form", { class: "card", "aria-labelledby": "who" });
  form.append(el("h1", { id: "who", text: mode === "tokens" ? "Sign in" : "Who are you?" }));
  if (mode === "tokens") {
    form.append(el("div", { class: "field" }, el("label", { for: "id-token", text: "Token" }),
      el("input", { id: "id-token", type: "password", required: true, autocomplete: "off" })));
  } else {
    form.append(el("p", { class: "muted", text: "Development mode: the server takes your identity from the X-User-Id and X-Tenant-Id headers." }),
      el("div", { class: "field" }, el("label", { for: "id-user", text: "User" }),
        el("input", { id: "id-user", required: true, value: params.get("user") || "" })),
      el("div", { class: "field" }, el("label", { for: "id-tenant", text: "Tenant" }),
        el("input", { id: "id-tenant", value: params.get("tenant") || "default" })));
  }
  form.append(el("button", { type: "submit", class: "primary" }, "Continue"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (mode === "tokens") setIdentity({ token: form.querySelector("#id-token").value.trim() });
    else setIdentity({ user: form.querySelector("#id-user").value.trim(), tenant: form.querySelector("#id-tenant").value.trim() || "default" });
    show();
  });
  view.append(form);
  form.querySelector("input").focus();
}

document.addEventListener("click", (event) => {
  const link = event.target.closest("a[href^='/']");
  if (!link || event.ctrlKey || event.metaKey || event.shiftKey || link.target) return;
  event.preventDefault();
  navigate(link.getAttribute("href"));
});
window.addEventListener("popstate", show);
window.addEventListener(NAVIGATED, show);

async function start() {
  mode = await serverMode().catch(() => "development");
  show();
}

start();
