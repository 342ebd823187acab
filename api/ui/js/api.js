// The API as the pages use it: the token (kept in this tab's sessionStorage, never in a URL),
// JSON requests that turn problem+json answers into ApiError, and Server-Sent Events read
// through fetch() so that they carry the Authorization header.

const TOKEN_KEY = "cssl.token";

export const service = { authOff: false };

export function getToken() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
}

export function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

export class ApiError extends Error {
  constructor(status, problem, path) {
    super(problem?.detail || `${status} from ${path}`);
    this.status = status;
    this.problem = problem || {};
    // [{loc: ["body", "config", "temperature"], msg: "..."}] on a 422
    this.errors = problem?.errors || [];
  }
}

function headers(extra) {
  const h = new Headers(extra);
  const token = getToken();
  if (token && !service.authOff) h.set("Authorization", `Bearer ${token}`);
  return h;
}

async function failure(response, path, announce = true) {
  let problem = null;
  try {
    problem = await response.json();
  } catch {
    // not a problem document (a proxy's error page): the status says enough
  }
  if (response.status === 401 && !service.authOff && announce) {
    forgetToken();
    window.dispatchEvent(new CustomEvent("cssl:unauthorized", { detail: problem?.detail }));
  }
  return new ApiError(response.status, problem, path);
}

/**
 * GET (or `method`) an API path; JSON in and out. Throws ApiError on a non-2xx answer; a 401
 * also forgets the token and has the page ask for another, unless `signIn` (checking one).
 */
export async function api(path, { method = "GET", body, signal, headers: extra, signIn = false } = {}) {
  const h = headers(extra);
  if (body !== undefined) h.set("Content-Type", "application/json");
  const response = await fetch(path, { method, headers: h, body: body === undefined ? undefined : JSON.stringify(body), signal });
  if (!response.ok) throw await failure(response, path, !signIn);
  if (response.status === 204) return null;
  const type = response.headers.get("content-type") || "";
  return type.includes("json") ? response.json() : response.text();
}

/** {value} once `request` resolves, or {error} when it fails: for a part of a page that shows its own error. */
export function settle(request) {
  return request.then((value) => ({ value }), (error) => ({ error }));
}

/** Fetch a file with the token and hand it to the browser as a download. */
export async function download(path, fallbackName) {
  const response = await fetch(path, { headers: headers() });
  if (!response.ok) throw await failure(response, path);
  const blob = await response.blob();
  const disposition = response.headers.get("content-disposition") || "";
  const match = disposition.match(/filename\*?=(?:UTF-8'')?"?([^";]+)"?/i);
  const name = match ? decodeURIComponent(match[1]) : fallbackName;
  const url = URL.createObjectURL(blob);
  const link = Object.assign(document.createElement("a"), { href: url, download: name });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
  return { name, size: blob.size };
}

/**
 * Follow a job's events (GET /v1/jobs/{id}/events) until the stream ends or `signal` aborts.
 * EventSource cannot send headers, so this reads the stream with fetch(): each event goes to
 * onEvent({id, event, data}); a dropped connection is resumed with Last-Event-ID after the
 * server's `retry` delay (doubling up to 30 s while it keeps failing). Resolves when the job
 * has finished (the `end` event), or the job is gone or not ours (404), or on abort.
 */
export async function followEvents(jobId, { onEvent, signal, lastEventId = null, onOpen } = {}) {
  let retry = 1000;
  let failures = 0;
  while (!signal?.aborted) {
    try {
      const h = headers({ Accept: "text/event-stream" });
      if (lastEventId !== null) h.set("Last-Event-ID", String(lastEventId));
      const response = await fetch(`/v1/jobs/${jobId}/events`, { headers: h, signal, cache: "no-store" });
      if (!response.ok) {
        const error = await failure(response, "events");
        if (response.status === 401 || response.status === 404 || response.status === 422) return { ended: false, error };
        throw error;
      }
      onOpen?.();
      failures = 0;
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      let current = {};
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let newline;
        while ((newline = buffer.search(/\r\n|\r|\n/)) >= 0) {
          const line = buffer.slice(0, newline);
          buffer = buffer.slice(newline + (buffer.startsWith("\r\n", newline) ? 2 : 1));
          if (line === "") {
            if (current.data !== undefined || current.event) {
              const event = { id: current.id ?? null, event: current.event || "message", data: parseData(current.data) };
              if (current.id !== undefined) lastEventId = current.id;
              if (event.event === "end") {
                reader.cancel().catch(() => {});
                return { ended: true, lastEventId };
              }
              onEvent?.(event);
            }
            current = {};
            continue;
          }
          if (line.startsWith(":")) continue;
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
          if (field === "data") current.data = current.data === undefined ? text : `${current.data}\n${text}`;
          else if (field === "event") current.event = text;
          else if (field === "id" && !text.includes("\0")) current.id = text;
          else if (field === "retry" && /^\d+$/.test(text)) retry = Number(text);
        }
      }
    } catch (error) {
      if (signal?.aborted) break;
      if (error instanceof ApiError && error.status < 500 && error.status !== 429) return { ended: false, error };
      failures += 1;
    }
    await sleep(Math.min(retry * 2 ** failures, 30_000), signal);
  }
  return { ended: false, lastEventId };
}

function parseData(text) {
  if (text === undefined) return {};
  try {
    return JSON.parse(text);
  } catch {
    return { text };
  }
}

export function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    }, { once: true });
  });
}

/**
 * followEvents while the tab is visible: a hidden tab closes its stream (browsers allow a few
 * connections per server across all tabs) and resumes after the last event it saw once shown
 * again. Calls onEnd() once the job has finished, or onEnd(error) when the stream is refused.
 */
export function watchJob(jobId, { onEvent, onEnd, signal, lastEventId = null }) {
  let current = null;
  let done = false;
  const start = () => {
    if (done || signal.aborted || current || document.hidden) return;
    const mine = new AbortController();
    current = mine;
    followEvents(jobId, {
      signal: mine.signal,
      lastEventId,
      onEvent: (event) => {
        if (event.id !== null) lastEventId = event.id;
        onEvent(event);
      },
    }).then((result) => {
      if (current === mine) current = null;
      if (result.ended || result.error) {
        done = true;
        onEnd?.(result.error);
      }
    });
  };
  const onVisibility = () => {
    if (document.hidden) {
      current?.abort();
      current = null;
    } else {
      start();
    }
  };
  document.addEventListener("visibilitychange", onVisibility);
  signal.addEventListener("abort", () => {
    current?.abort();
    document.removeEventListener("visibilitychange", onVisibility);
  }, { once: true });
  start();
}
