// /ui/: your jobs, filtered by status, method, name and tag, paged by cursor, updated live;
// select runs to compare, cancel a queued or running one.

import { api, settle } from "../api.js";
import { STATUSES, clear, every, h } from "../dom.js";
import { jobFollower } from "../components/jobFollower.js";
import { JOB_COLUMNS, jobRow } from "../components/jobRow.js";
import { loadError } from "../components/loadError.js";
import { navigate } from "../router.js";

const PAGE_SIZE = 25;
const POLL_MS = 4000;
// Event streams held at once: a browser opens only a few connections per server, across tabs.
const MAX_FOLLOWED = 3;
// Kept while the tab lives, so that a trip to a run page and back keeps the selection.
const selected = new Set();
let methodNames = null; // asked for once: the registry does not change while the service runs

export async function render(main, { query, signal }) {
  document.title = "Jobs · cssl";
  const filters = {
    status: query.get("status") || "",
    method: query.get("method") || "",
    name: query.get("name") || "",
    tag: query.get("tag") || "",
  };
  // A page is named by the cursor after the previous page's last job, so it does not shift
  // while jobs arrive; the cursors of the pages before it let "Previous page" go back.
  let cursor = query.get("cursor") || "";
  const before = [];
  const rows = new Map(); // job id -> {tr, job, cells}
  const follow = jobFollower({ max: MAX_FOLLOWED, signal, onEvent });

  const statusSelect = h("select", { id: "filter-status", name: "status" },
    h("option", { value: "" }, "any"), STATUSES.map((s) => h("option", { value: s, selected: s === filters.status }, s)));
  const methodSelect = h("select", { id: "filter-method", name: "method" }, h("option", { value: "" }, "any"));
  const nameInput = h("input", { id: "filter-name", name: "name", type: "search", value: filters.name, maxlength: 200, placeholder: "part of a name" });
  const tagInput = h("input", { id: "filter-tag", name: "tag", value: filters.tag, maxlength: 265, placeholder: "key:value", pattern: "[A-Za-z0-9_.\\-]{1,64}(:.*)?" });
  const compareButton = h("button", { type: "button", class: "secondary", onclick: () => navigate(`/ui/compare?jobs=${[...selected].join(",")}`) });
  const tbody = h("tbody");
  const emptyNote = h("p", { class: "empty", hidden: true });
  const pageNote = h("span", { class: "muted" });
  const previous = h("button", { type: "button", class: "secondary small", onclick: () => page(-1) }, "Previous page");
  const next = h("button", { type: "button", class: "secondary small", onclick: () => page(1) }, "Next page");
  const updated = h("span", { class: "muted", "aria-live": "off" });
  const problem = h("div");

  clear(main,
    h("h1", {}, "Jobs"),
    h("div", { class: "toolbar" },
      h("div", { class: "field" }, h("label", { for: "filter-status" }, "Status"), statusSelect),
      h("div", { class: "field" }, h("label", { for: "filter-method" }, "Method"), methodSelect),
      h("div", { class: "field" }, h("label", { for: "filter-name" }, "Name"), nameInput),
      h("div", { class: "field" }, h("label", { for: "filter-tag" }, "Tag"), tagInput),
      h("span", { class: "spacer" }),
      compareButton,
      h("a", { class: "button", href: "/ui/submit" }, "Submit a job")),
    h("div", { class: "table-wrap" },
      h("table", { id: "jobs-table" },
        h("caption", {}, "Your jobs, newest first"),
        h("thead", {}, h("tr", {},
          h("th", { scope: "col" }, h("span", { class: "sr" }, "Compare")),
          JOB_COLUMNS.map((t) => h("th", { scope: "col" }, t)),
          h("th", { scope: "col", class: "num" }, "kNN top-1"),
          h("th", { scope: "col", class: "num" }, "Linear top-1"),
          h("th", { scope: "col" }, "Submitted"),
          h("th", { scope: "col" }, "Actions"))),
        tbody)),
    problem,
    emptyNote,
    h("div", { class: "toolbar" }, previous, next, pageNote, h("span", { class: "spacer" }), updated));

  const syncCompare = () => {
    compareButton.textContent = `Compare selected (${selected.size})`;
    compareButton.disabled = selected.size < 1;
  };
  syncCompare();

  const keepInUrl = () => {
    const q = new URLSearchParams(Object.entries({ ...filters, cursor }).filter(([, v]) => v));
    history.replaceState({}, "", `/ui/${q.size ? `?${q}` : ""}`);
  };
  const setFilters = () => {
    if (!tagInput.checkValidity()) {
      tagInput.reportValidity();
      return;
    }
    filters.status = statusSelect.value;
    filters.method = methodSelect.value;
    filters.name = nameInput.value.trim();
    filters.tag = tagInput.value.trim();
    cursor = "";
    before.length = 0;
    keepInUrl();
    load();
  };
  for (const control of [statusSelect, methodSelect, nameInput, tagInput]) control.addEventListener("change", setFilters);

  let nextCursor = "";
  function page(direction) {
    if (direction > 0) {
      before.push(cursor);
      cursor = nextCursor;
    } else {
      cursor = before.pop() || "";
    }
    keepInUrl();
    load();
  }

  if (!methodNames) {
    const methods = await settle(api("/v1/methods", { signal }));
    if (methods.error) methodSelect.after(loadError("the methods to filter by", methods.error));
    else methodNames = methods.value.map((m) => m.name);
  }
  for (const name of methodNames || []) {
    methodSelect.append(h("option", { value: name, selected: name === filters.method }, name));
  }

  async function load() {
    const params = new URLSearchParams({ limit: PAGE_SIZE });
    for (const key of ["status", "method", "name", "tag"]) if (filters[key]) params.set(key, filters[key]);
    if (cursor) params.set("cursor", cursor);
    let list;
    try {
      list = await api(`/v1/jobs?${params}`, { signal });
    } catch (error) {
      // The rows shown stay (they may be stale), with why they could not be refreshed.
      if (!signal.aborted) clear(problem, loadError("the jobs", error, load));
      return;
    }
    if (signal.aborted) return;
    clear(problem);
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
        row = jobRow(job, { selected: selected.has(job.id), onSelect: select, onCancelled: cancelled });
        rows.set(job.id, row);
      }
      row.job = { ...job, progress: newer(row.job?.progress, job.progress) };
      row.fill();
      if (tbody.children[index] !== row.tr) tbody.insertBefore(row.tr, tbody.children[index] || null);
    });
    emptyNote.hidden = list.items.length > 0;
    const filtered = filters.status || filters.method || filters.name || filters.tag;
    emptyNote.textContent = filtered ? "No jobs match these filters." : cursor ? "No more jobs." : "No jobs yet: submit one.";
    nextCursor = list.next ? new URL(list.next, location.origin).searchParams.get("cursor") : "";
    previous.disabled = !cursor;
    next.disabled = !nextCursor;
    pageNote.textContent = list.items.length ? `Page ${before.length + 1}` : "";
    updated.textContent = `Updated ${new Date().toLocaleTimeString("en-GB")}`;
    follow(list.items.filter((job) => job.status === "running").map((job) => job.id));
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
    row.fill();
  }

  function select(id, on) {
    if (on) selected.add(id);
    else selected.delete(id);
    syncCompare();
  }

  function cancelled(answer) {
    const row = rows.get(answer.id);
    if (!row) return;
    row.job = { ...row.job, status: answer.status, cancel_requested: answer.cancel_requested };
    row.fill();
  }

  every(POLL_MS, load, signal);
}

/** The later of two progress reports (a poll can answer after a newer event). */
function newer(a, b) {
  if (!a) return b;
  if (!b) return a;
  return (b.step ?? 0) >= (a.step ?? 0) ? b : a;
}
