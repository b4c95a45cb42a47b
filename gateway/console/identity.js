// Who the console acts as, kept for the tab (sessionStorage): in development mode a user
// and a tenant (sent as X-User-Id / X-Tenant-Id), with a tokens file a bearer token.
const KEY = "runbooks.identity";

export function identity() {
  try { return JSON.parse(sessionStorage.getItem(KEY)) || {}; } catch { return {}; }
}

export function setIdentity(value) { sessionStorage.setItem(KEY, JSON.stringify(value)); }

export function clearIdentity() { sessionStorage.removeItem(KEY); }

// "development" or "tokens": an /api/v1 request without credentials is 401 only with tokens.
export async function serverMode() {
  const response = await fetch("/api/v1/runbooks?limit=1");
  return response.status === 401 ? "tokens" : "development";
}
