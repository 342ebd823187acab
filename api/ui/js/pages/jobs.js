// /ui/: your jobs, filtered by status and method, paged, updated live; select runs to compare,
// cancel a queued or running one.

import { api, apiOr, watchJob } from "../api.js";
import { ACTIVE, STATUSES, clear, every, h, percent, progressCell, progressOf, shortId, statusBadge, toast, when } from "../dom.js";
import { navigate } from "../main.js";

const PAGE_SIZE = 25;
const POLL_MS = 4000;
// Event streams held at once: a browser opens only a few connections per server, across tabs.
const MAX_FOLLOWED = 3;
// Kept while the tab lives, so that a trip to a run page and back keeps the selection.
const selected = new Set();
let methodNames = null;

export async function render(main, { query, signal }) {
  document.title = "Jobs · cssl";
  const filters = { status: query.get("status") || "", method: query.get("method") || "", offset: Math.max(0, Number(query.get("offset")) || 0) };
  const rows = new Map(); // job id -> {tr, job, cells}
  const followed = new Map(); // job id -> AbortController

  const statusSelect = h("select", { id: "filter-status", name: "status" },
    h("option", { value: "" }, "any"), STATUSES.map((s) => h("option", { value: s, selected: s === filters.status }, s)));
  const methodSelect = h("select", { id: "filter-method", name: "method" }, h("option", { value: "" }, "any"));
  const compareButton = h("button", { type: "button", class: "secondary", onclick: () => navigate(`/ui/compare?jobs=${[...selected].join(",")}`) });
  const tbody = h("tbody");
  const emptyNote = h("p", { class: "empty", hidden: true });
  const pageNote = h("span", { class: "muted" });
  const previous = h("button", { type: "button", class: "secondary small", onclick: () => page(-1) }, "Previous page");
  const next = h("button", { type: "button", class: "secondary small", onclick: () => page(1) }, "Next page");
  const updated = h("span", { class: "muted", "aria-live": "off" });

  clear(main,
    h("h1", {}, "Jobs"),
    h("div", { class: "toolbar" },
      h("div", { class: "field" }, h("label", { for: "filter-status" }, "Status"), statusSelect),
      h("div", { class: "field" }, h("label", { for: "filter-method" }, "Method"), methodSelect),
      h("span", { class: "spacer" }),
      compareButton,
      h("a", { class: "button", href: "/ui/submit" }, "Submit a job")),
    h("div", { class: "table-wrap" },
      h("table", { id: "jobs-table" },
        h("caption", {}, "Your jobs, newest first"),
        h("thead", {}, h("tr", {},
          h("th", { scope: "col" }, h("span", { class: "sr" }, "Compare")),
          ["Job", "Status", "Method", "Dataset", "Backbone", "Progress"].map((t) => h("th", { scope: "col" }, t)),
          h("th", { scope: "col", class: "num" }, "kNN top-1"),
          h("th", { scope: "col", class: "num" }, "Linear top-1"),
          h("th", { scope: "col" }, "Submitted"),
          h("th", { scope: "col" }, "Actions"))),
        tbody)),
    emptyNote,
    h("div", { class: "toolbar" }, previous, next, pageNote, h("span", { class: "spacer" }), updated));

  const syncCompare = () => {
    compareButton.textContent = `Compare selected (${selected.size})`;
    compareButton.disabled = selected.size < 1;
  };
  syncCompare();

  const setFilters = () => {
    filters.status = statusSelect.value;
    filters.method = methodSelect.value;
    filters.offset = 0;
    const q = new URLSearchParams(Object.entries(filters).filter(([k, v]) => v && !(k === "offset" && v === 0)));
    history.replaceState({}, "", `/ui/${q.size ? `?${q}` : ""}`);
    load();
  };
  statusSelect.addEventListener("change", setFilters);
  methodSelect.addEventListener("change", setFilters);

  function page(direction) {
    filters.offset = Math.max(0, filters.offset + direction * PAGE_SIZE);
    const q = new URLSearchParams(Object.entries(filters).filter(([, v]) => v));
    history.replaceState({}, "", `/ui/${q.size ? `?${q}` : ""}`);
    load();
  }

  methodNames ??= (await apiOr([], "/v1/methods", { signal })).map((m) => m.name);
  for (const name of methodNames) methodSelect.append(h("option", { value: name, selected: name === filters.method }, name));

  async function load() {
    const params = new URLSearchParams({ limit: PAGE_SIZE, offset: filters.offset });
    if (filters.status) params.set("status", filters.status);
    if (filters.method) params.set("method", filters.method);
    const list = await api(`/v1/jobs?${params}`, { signal });
    if (signal.aborted) return;
    const ids = list.items.map((job) => job.id);
    for (const [id, row] of rows) {
      if (!ids.includes(id)) {
        row.tr.remove();
        rows.delete(id);
      }
    }
    list.items.forEach((job, index) => {
      let row = rows.get(job.id);
      if (!row) {
        row = makeRow(job);
        rows.set(job.id, row);
      }
      row.job = { ...job, progress: newer(row.job?.progress, job.progress) };
      fill(row);
      if (tbody.children[index] !== row.tr) tbody.insertBefore(row.tr, tbody.children[index] || null);
    });
    emptyNote.hidden = list.items.length > 0;
    emptyNote.textContent = filters.status || filters.method ? "No jobs match these filters." : "No jobs yet: submit one.";
    previous.disabled = filters.offset === 0;
    next.disabled = !list.next;
    pageNote.textContent = list.items.length ? `Jobs ${filters.offset + 1}–${filters.offset + list.items.length}` : "";
    updated.textContent = `Updated ${new Date().toLocaleTimeString("en-GB")}`;
    follow(list.items.filter((job) => job.status === "running").map((job) => job.id));
  }

  function follow(running) {
    const wanted = new Set(running.slice(0, MAX_FOLLOWED));
    for (const [id, controller] of followed) {
      if (!wanted.has(id)) {
        controller.abort();
        followed.delete(id);
      }
    }
    for (const id of wanted) {
      if (followed.has(id)) continue;
      const controller = new AbortController();
      signal.addEventListener("abort", () => controller.abort(), { once: true });
      followed.set(id, controller);
      watchJob(id, {
        signal: controller.signal,
        onEvent: (event) => onEvent(id, event),
        onEnd: () => followed.delete(id),
      });
    }
  }

  function onEvent(id, { event, data }) {
    const row = rows.get(id);
    if (!row) return;
    const job = row.job;
    if (event === "progress") {
      job.progress = newer(job.progress, data);
      job.latest_metrics = { ...job.latest_metrics, loss: data.loss, lr: data.lr, images_per_second: data.images_per_second };
    } else if (event === "evaluation") {
      job.latest_metrics = { ...job.latest_metrics, [`${data.protocol}_top1`]: data.top1 };
    } else if (event === "state") {
      job.status = data.status;
    } else if (event === "cancel_requested") {
      job.cancel_requested = true;
    }
    fill(row);
  }

  function makeRow(job) {
    const checkbox = h("input", { type: "checkbox", checked: selected.has(job.id), "aria-label": `Select job ${shortId(job.id)} to compare` });
    checkbox.addEventListener("change", () => {
      if (checkbox.checked) selected.add(job.id);
      else selected.delete(job.id);
      syncCompare();
    });
    const cancel = h("button", { type: "button", class: "danger small", "aria-label": `Cancel job ${shortId(job.id)}` }, "Cancel");
    let armed = null;
    cancel.addEventListener("click", async () => {
      // Two steps, so that a stray click does not stop a day's run.
      if (!armed) {
        cancel.textContent = "Confirm cancel";
        cancel.setAttribute("aria-label", `Confirm cancel of job ${shortId(job.id)}`);
        armed = setTimeout(() => {
          armed = null;
          cancel.textContent = "Cancel";
          cancel.setAttribute("aria-label", `Cancel job ${shortId(job.id)}`);
        }, 5000);
        return;
      }
      clearTimeout(armed);
      armed = null;
      cancel.disabled = true;
      try {
        const updatedJob = await api(`/v1/jobs/${job.id}/cancel`, { method: "POST" });
        const row = rows.get(job.id);
        if (row) {
          row.job = { ...row.job, status: updatedJob.status, cancel_requested: updatedJob.cancel_requested };
          fill(row);
        }
        toast(updatedJob.status === "cancelled" ? `Job ${shortId(job.id)} cancelled.` : `Job ${shortId(job.id)} stops at its next step.`);
      } catch (error) {
        toast(`Could not cancel ${shortId(job.id)}: ${error.message}`);
      }
      cancel.textContent = "Cancel";
      cancel.disabled = false;
    });
    const cells = Array.from({ length: 11 }, () => h("td"));
    cells[0].append(checkbox);
    cells[7].className = "num";
    cells[8].className = "num";
    cells[10].append(cancel);
    const tr = h("tr", { dataset: { job: job.id } }, cells);
    return { tr, cells, cancel, signatures: [], job };
  }

  function fill(row) {
    const job = row.job;
    const set = (i, signature, ...content) => {
      if (row.signatures[i] === signature) return;
      row.signatures[i] = signature;
      clear(row.cells[i], ...content);
    };
    set(1, job.id, h("a", { href: `/ui/jobs/${job.id}`, class: "mono", title: job.id }, shortId(job.id)), job.kind === "eval" ? " (eval)" : "");
    set(2, `${job.status}${job.cancel_requested}`, statusBadge(job));
    set(3, job.method, job.method);
    set(4, job.dataset?.name, job.dataset?.name || "");
    set(5, job.config?.backbone, job.config?.backbone || "");
    const progress = progressOf(job);
    set(6, `${progress.fraction}${progress.text}`, progressCell(job));
    set(7, job.latest_metrics?.knn_top1, percent(job.latest_metrics?.knn_top1));
    set(8, job.latest_metrics?.linear_top1, percent(job.latest_metrics?.linear_top1));
    set(9, job.timings?.created_at, when(job.timings?.created_at));
    row.cancel.hidden = !ACTIVE.has(job.status) || job.cancel_requested;
  }

  every(POLL_MS, load, signal);
}

/** The later of two progress reports (a poll can answer after a newer event). */
function newer(a, b) {
  if (!a) return b;
  if (!b) return a;
  return (b.step ?? 0) >= (a.step ?? 0) ? b : a;
}
