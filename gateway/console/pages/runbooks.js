// Runbooks: the list (with versions), a document to paste or upload, Validate (problems
// by path) and Register; Start with an input form generated from inputSchema (a JSON box
// when there is none or it is not a flat object).
import { api } from "../api.js";
import { el, when, attempt, showError } from "../ui.js";
import { navigate } from "../navigation.js";

// Each problem: its path, what is wrong, and where (the step, the line of the text sent).
function problemList(problems) {
  const where = (p) => [p.stepId ? `step '${p.stepId}'` : "", p.line ? `line ${p.line}` : ""].filter(Boolean).join(", ");
  return el("ul", { class: "problems", "aria-label": "Problems" },
    problems.map((p) => el("li", {}, el("code", { text: p.path }), `: ${p.message}${where(p) ? ` (${where(p)})` : ""}`)));
}

export function runbooksPage(view) {
  const body = el("tbody");
  const source = el("textarea", { id: "rb-source", rows: 14, spellcheck: "false", placeholder: "id: my-runbook\nsteps:\n  - ..." });
  const file = el("input", { id: "rb-file", type: "file", accept: ".yaml,.yml,.json" });
  const report = el("div", { "aria-live": "polite" });
  const starter = el("section", { "aria-label": "Start an execution" });
  file.addEventListener("change", async () => { if (file.files[0]) source.value = await file.files[0].text(); });
  const send = (path) => {
    const text = source.value;
    const isJson = /^\s*[{[]/.test(text);
    return api(path, { method: "POST", text, contentType: isJson ? "application/json" : "application/yaml" });
  };
  const validate = async () => {
    const result = await attempt(() => send("/api/v1/runbooks/validate"));
    if (!result) return;
    report.replaceChildren(result.valid ? el("p", { class: "ok", text: "Valid." })
      : problemList(result.errors));
  };
  const register = async () => {
    try {
      const result = await send("/api/v1/runbooks");
      report.replaceChildren(el("p", { class: "ok", text: `Registered ${result.id} version ${result.version}.` }));
      showError(null);
      load();
    } catch (error) {
      showError(error);
      if (error.errors && error.errors.length) report.replaceChildren(problemList(error.errors));
    }
  };
  view.append(el("h1", { text: "Runbooks" }),
    el("table", { "aria-label": "Runbooks" }, el("thead", {}, el("tr", {}, ["Runbook", "Version", "Steps", "Shared", "Registered", ""].map((h) => el("th", { scope: "col", text: h })))), body),
    starter,
    el("h2", { text: "Register a runbook" }),
    el("div", { class: "field" }, el("label", { for: "rb-file", text: "Upload a YAML or JSON file" }), file),
    el("div", { class: "field wide" }, el("label", { for: "rb-source", text: "Runbook document (YAML or JSON)" }), source),
    el("div", { class: "row" }, el("button", { type: "button", onclick: validate }, "Validate"),
      el("button", { type: "button", class: "primary", onclick: register }, "Register")), report);

  async function load() {
    const page = await attempt(() => api("/api/v1/runbooks?limit=1000"));
    if (!page) return;
    body.replaceChildren(...page.items.map((rb) => el("tr", {},
      el("td", {}, el("strong", { text: rb.id }), rb.name ? el("div", { class: "muted", text: rb.name }) : null),
      el("td", { text: `v${rb.version}` }), el("td", { text: String(rb.stepCount) }), el("td", { text: rb.shared ? "yes" : "no" }),
      el("td", { text: when(rb.createdAt) }),
      el("td", {}, el("button", { type: "button", "aria-label": `Start ${rb.id}`, onclick: () => startForm(starter, rb.id, rb.version) }, "Start…")))));
  }
  load();
  return () => {};
}

async function startForm(box, id, latest) {
  const version = el("select", { id: "start-version" }, Array.from({ length: latest }, (_, i) => latest - i).map((v) => el("option", { value: v, text: `v${v}` })));
  const inputs = el("div");
  const legal = el("input", { id: "start-legal", size: 40 });
  const reason = el("input", { id: "start-reason", size: 40 });
  let read = () => ({});
  const render = async () => {
    const runbook = await attempt(() => api(`/api/v1/runbooks/${encodeURIComponent(id)}?version=${version.value}`));
    if (!runbook) return;
    read = inputForm(inputs, runbook.document.inputSchema);
    legal.required = Boolean(runbook.document.requireLegalBasis);
  };
  version.addEventListener("change", render);
  const form = el("form", { class: "card", "aria-labelledby": "start-title" },
    el("h2", { id: "start-title", text: `Start ${id}` }),
    el("div", { class: "field" }, el("label", { for: "start-version", text: "Version" }), version), inputs,
    el("div", { class: "field" }, el("label", { for: "start-legal", text: "Legal basis" }), legal),
    el("div", { class: "field" }, el("label", { for: "start-reason", text: "Reason" }), reason),
    el("div", { class: "row" }, el("button", { type: "submit", class: "primary" }, "Start")));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    let input;
    try { input = read(); } catch (error) { showError(error); return; }
    const context = {};
    if (legal.value.trim()) context.legalBasis = legal.value.trim();
    if (reason.value.trim()) context.reason = reason.value.trim();
    const execution = await attempt(() => api("/api/v1/executions", { method: "POST", body: { runbookId: id, version: Number(version.value), input, context } }));
    if (execution) navigate(`/executions/${execution.id}`);
  });
  box.replaceChildren(form);
  await render();
  form.querySelector("input, select, textarea").focus();
}

// A schema's `pattern` is an ECMA-262 regular expression that may match anywhere in the
// value; an HTML `pattern` attribute is anchored and compiled with the `v` flag, under which
// ordinary schema patterns such as `[a-z0-9-]` do not compile (the browser then logs an error
// and checks nothing). So the field checks the schema's own meaning itself, through the
// browser's constraint validation: the form is not sent while a value does not match.
function checkPattern(control, pattern) {
  let expression;
  try { expression = new RegExp(pattern, "u"); } catch { return; }  // the server's check still applies
  const check = () => control.setCustomValidity(control.value && !expression.test(control.value) ? `Must match ${pattern}` : "");
  control.title = `Must match ${pattern}`;
  control.addEventListener("input", check);
  check();
}

// Fields for a flat object schema; else one JSON box. Returns a function reading the input.
function inputForm(box, schema) {
  const props = schema && schema.type === "object" && schema.properties;
  const flat = props && Object.values(props).every((p) => ["string", "integer", "number", "boolean"].includes(p.type) || p.enum || (p.type === "array" && p.items && p.items.type === "string"));
  if (!flat) {
    const text = el("textarea", { id: "start-input", rows: 6 }, "{}");
    box.replaceChildren(el("div", { class: "field" }, el("label", { for: "start-input", text: "Input (JSON)" }), text));
    return () => { try { return JSON.parse(text.value || "{}"); } catch (error) { throw new Error(`Input is not JSON: ${error.message}`); } };
  }
  const required = new Set(schema.required || []);
  const fields = Object.entries(props).map(([name, p]) => {
    const fid = `input-${name}`;
    let control;
    if (p.enum) control = el("select", { id: fid }, required.has(name) ? null : el("option", { value: "", text: "—" }), p.enum.map((v) => el("option", { value: v, text: String(v) })));
    else if (p.type === "boolean") control = el("input", { id: fid, type: "checkbox" });
    else control = el("input", { id: fid, type: ["integer", "number"].includes(p.type) ? "number" : "text", step: p.type === "integer" ? "1" : "any", required: required.has(name) });
    if (p.pattern && control.tagName === "INPUT") checkPattern(control, p.pattern);
    const hint = p.type === "array" ? " (comma-separated)" : "";
    box.append();
    return { name, p, control, node: el("div", { class: "field" }, el("label", { for: fid, text: `${name}${required.has(name) ? " *" : ""}${hint}` }), control,
      p.description ? el("span", { class: "muted", text: p.description }) : null) };
  });
  box.replaceChildren(...fields.map((f) => f.node));
  return () => {
    const input = {};
    for (const { name, p, control } of fields) {
      if (p.type === "boolean") { input[name] = control.checked; continue; }
      const raw = control.value;
      if (raw === "" && !required.has(name)) continue;
      if (p.type === "integer" || p.type === "number") input[name] = Number(raw);
      else if (p.type === "array") input[name] = raw.split(",").map((s) => s.trim()).filter(Boolean);
      else input[name] = raw;
    }
    return input;
  };
}
