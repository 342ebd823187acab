// Building elements and formatting numbers, shared by the pages.

/** h("a", {href: "/ui/"}, "Jobs"): an element with attributes (on* as listeners) and children. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key === "text") el.textContent = value;
    else if (key in el && typeof value !== "string") el[key] = value;
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

export function clear(el, ...children) {
  el.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

export const STATUSES = ["queued", "running", "succeeded", "failed", "cancelled"];
export const ACTIVE = new Set(["queued", "running"]);

export function statusBadge(job) {
  const text = job.cancel_requested && job.status === "running" ? "cancelling" : job.status;
  return h("span", { class: `status status-${job.status}` }, text);
}

export function shortId(id) {
  return id ? id.slice(0, 8) : "";
}

export function percent(value) {
  return value === null || value === undefined ? "–" : `${Number(value).toFixed(1)}%`;
}

export function number(value, digits = 3) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  const v = Number(value);
  if (Number.isInteger(v)) return v.toLocaleString("en");
  const abs = Math.abs(v);
  if (abs !== 0 && (abs < 1e-3 || abs >= 1e6)) return v.toExponential(2);
  return v.toLocaleString("en", { maximumSignificantDigits: digits + 1 });
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "–";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${String(s % 60).padStart(2, "0")}s`;
  const hours = Math.floor(m / 60);
  return `${hours}h ${String(m % 60).padStart(2, "0")}m`;
}

export function bytes(n) {
  if (!Number.isFinite(n)) return "–";
  const units = ["B", "KB", "MB", "GB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

export function when(iso) {
  if (!iso) return "–";
  const date = new Date(iso);
  return date.toLocaleString("en-GB", { dateStyle: "short", timeStyle: "medium" });
}

/**
 * Progress of a job from its `progress` (step, total_steps, elapsed training seconds) and
 * config: {fraction, text}. The ETA assumes the rest of the run goes at the speed so far, and
 * stops at the time budget when there is one.
 */
export function progressOf(job) {
  const p = job.progress;
  if (!p || !p.total_steps) {
    return { fraction: job.status === "succeeded" ? 1 : 0, text: job.status === "queued" ? "waiting for a worker" : "" };
  }
  const fraction = Math.min(1, p.step / p.total_steps);
  const elapsed = p.elapsed ?? job.timings?.run_seconds ?? null;
  let text = `step ${p.step.toLocaleString("en")}/${p.total_steps.toLocaleString("en")} · epoch ${Math.min(p.epoch + 1, p.epochs)}/${p.epochs}`;
  if (job.status === "running" && elapsed && p.step > 0 && p.step < p.total_steps) {
    let eta = (elapsed * (p.total_steps - p.step)) / p.step;
    const budget = job.config?.time_budget;
    if (budget) eta = Math.min(eta, Math.max(0, budget - elapsed));
    text += ` · ${duration(elapsed)} elapsed · ETA ${duration(eta)}`;
  } else if (elapsed) {
    text += ` · ${duration(elapsed)}`;
  }
  return { fraction, text };
}

/** A <progress> with its text, labelled for screen readers. */
export function progressCell(job) {
  const { fraction, text } = progressOf(job);
  const label = `Progress of job ${shortId(job.id)}`;
  return h("div", { class: "progress" },
    h("progress", { max: 1, value: fraction, "aria-label": label, "aria-valuetext": `${Math.round(fraction * 100)}%` }),
    h("small", {}, text));
}

let toastTimer;
export function toast(message) {
  const box = document.getElementById("toast");
  clear(box, h("p", {}, message));
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => clear(box), 6000);
}

export function errorText(error) {
  return error?.message || String(error);
}

/** Run `fn` now and every `ms` while the tab is visible; the returned function stops it. */
export function every(ms, fn, signal) {
  let timer = null;
  let running = false;
  const tick = async () => {
    timer = null;
    if (signal.aborted) return;
    if (!document.hidden && !running) {
      running = true;
      try {
        await fn();
      } catch (error) {
        console.warn(error);
      } finally {
        running = false;
      }
    }
    if (!signal.aborted) timer = setTimeout(tick, ms);
  };
  const onVisible = () => {
    if (!document.hidden && timer !== null) {
      clearTimeout(timer);
      tick();
    }
  };
  document.addEventListener("visibilitychange", onVisible);
  signal.addEventListener("abort", () => {
    clearTimeout(timer);
    document.removeEventListener("visibilitychange", onVisible);
  });
  tick();
}

/** `fn` called once, `ms` after the last of a burst of calls (events replayed on connecting). */
export function debounce(fn, ms) {
  let timer = null;
  return () => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      timer = null;
      Promise.resolve(fn()).catch((error) => console.warn(error));
    }, ms);
  };
}
