// Moving to another page of the console: the URL changes and the shell (app.js) shows the
// page it names. Pages call this without knowing the shell, so nothing imports app.js.
export const NAVIGATED = "console:navigated";

export function navigate(path) {
  history.pushState({}, "", path);
  window.dispatchEvent(new Event(NAVIGATED));
}
