// Small DOM helpers shared by the pages: element building, formatting, the confirm dialog
// and the error banner (API errors are shown as the problem's detail).
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "text") node.textContent = value;
    else if (value === true) node.setAttribute(key, "");
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) if (child !== null && child !== undefined) node.append(child);
  return node;
}

export function badge(status) { return el("span", { class: `badge st-${status}`, text: status.replace("_", " ") }); }

export function when(text) { return text ? new Date(text).toLocaleString() : "—"; }

export function took(start, end) {
  if (!start || !end) return "";
  const ms = new Date(end) - new Date(start);
  return ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(1)} s`;
}

export function json(value) { return JSON.stringify(value, null, 2); }

export function showError(error) {
  const box = document.getElementById("error");
  box.textContent = error ? String(error.message || error) : "";
  box.hidden = !error;
}

export function clearError() { showError(null); }

// Asks before an action; resolves to the reason typed (or "" when none is asked), null if refused.
export function confirmAction(title, text, { reason = false, reasonRequired = false } = {}) {
  const dialog = document.getElementById("confirm");
  const input = document.getElementById("confirm-reason");
  document.getElementById("confirm-title").textContent = title;
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-reason-box").hidden = !reason;
  input.value = "";
  input.required = reasonRequired;
  return new Promise((resolve) => {
    const form = document.getElementById("confirm-form");
    const no = document.getElementById("confirm-no");
    const done = (value) => { form.onsubmit = null; no.onclick = null; dialog.onclose = null; if (dialog.open) dialog.close(); resolve(value); };
    form.onsubmit = (event) => { event.preventDefault(); done(reason ? input.value.trim() : ""); };
    no.onclick = () => done(null);
    dialog.onclose = () => done(null);
    dialog.showModal();
    (reason ? input : document.getElementById("confirm-yes")).focus();
  });
}

// Runs an API action; shows its problem detail on failure. Resolves to the result or undefined.
export async function attempt(action) {
  clearError();
  try { return await action(); } catch (error) { showError(error); return undefined; }
}
