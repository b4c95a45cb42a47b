// The console's only way to the server: the public REST API (fetch) and the execution
// stream, read with fetch() and a ReadableStream because EventSource cannot send headers.
import { identity } from "./identity.js";

export class ApiError extends Error {
  constructor(status, detail, errors) { super(detail); this.status = status; this.errors = errors || []; }
}

function headers(extra) {
  const id = identity();
  const h = { ...extra };
  if (id.token) h["Authorization"] = `Bearer ${id.token}`;
  if (id.user) h["X-User-Id"] = id.user;
  if (id.tenant) h["X-Tenant-Id"] = id.tenant;
  return h;
}

export async function api(path, { method = "GET", body, text, contentType, anonymous = false } = {}) {
  const init = { method, headers: anonymous ? {} : headers({}) };
  if (body !== undefined) { init.body = JSON.stringify(body); init.headers["Content-Type"] = "application/json"; }
  if (text !== undefined) { init.body = text; init.headers["Content-Type"] = contentType; }
  const response = await fetch(path, init);
  const data = response.status === 204 ? null : await response.json().catch(() => null);
  if (!response.ok) {
    throw new ApiError(response.status, (data && data.detail) || `HTTP ${response.status}`, data && data.errors);
  }
  return data;
}

export function query(params) {
  const q = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) if (value !== undefined && value !== null && value !== "") q.set(key, value);
  const s = q.toString();
  return s ? `?${s}` : "";
}

// Calls onState(execution) for every state of the execution until it has finished or
// `signal` aborts; reconnects (the first event of a stream is the current state).
export async function follow(executionId, onState, signal) {
  for (let attempt = 0; attempt < 20 && !signal.aborted; attempt++) {
    let last = null;
    try {
      const response = await fetch(`/api/v1/executions/${encodeURIComponent(executionId)}/stream`,
                                   { headers: headers({ Accept: "text/event-stream" }), signal });
      if (!response.ok) {
        const data = await response.json().catch(() => null);
        throw new ApiError(response.status, (data && data.detail) || `HTTP ${response.status}`);
      }
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const frame = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const data = frame.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
          if (/^event: ?execution$/m.test(frame) && data) { last = JSON.parse(data); onState(last); }
        }
      }
    } catch (error) {
      if (signal.aborted) return;
      if (error instanceof ApiError) throw error;
    }
    if (last && FINISHED.includes(last.status)) return;
    await new Promise((resolve) => setTimeout(resolve, 500 * Math.min(attempt + 1, 6)));
  }
}

export const FINISHED = ["completed", "failed", "cancelled", "timed_out"];
export const STATUSES = ["queued", "pending", "running", "awaiting_approval", "pausing", "paused", "completed", "failed", "cancelled", "timed_out"];
