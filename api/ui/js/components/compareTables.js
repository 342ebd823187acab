// The tables of a comparison: the runs with their cost and results, and the config keys where
// they differ (evaluation parameters as protocol.parameter, from each job's evaluation_parameters).

import { PALETTE } from "../charts.js";
import { duration, h, number, percent, shortId, statusBadge } from "../dom.js";

const RUN_COLUMNS = [
  "Run",
  "Status",
  "Method",
  "Dataset",
  "Backbone",
  "Epochs",
  "Training time",
  "Images/s",
  "Final loss",
  "kNN top-1",
  "Linear top-1",
];
// Not worth a row in the differences: the same for every run of a job, or said elsewhere.
const IGNORED = new Set(["device", "data"]);

/** onRemove(job) takes a run out of the comparison. */
export function runsTable(runs, { onRemove }) {
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      { id: "compare-runs" },
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          RUN_COLUMNS.map((t) => h("th", { scope: "col" }, t)),
          h("th", { scope: "col" }, h("span", { class: "sr" }, "Actions")),
        ),
      ),
      h(
        "tbody",
        {},
        runs.map(({ job: j }, i) =>
          h(
            "tr",
            {},
            h(
              "td",
              {},
              h("span", { class: "swatch", style: `background:${PALETTE[i % PALETTE.length]}` }),
              " ",
              h("a", { href: `/ui/jobs/${j.id}`, class: "mono" }, shortId(j.id)),
            ),
            h("td", {}, statusBadge(j)),
            h("td", {}, j.method),
            h("td", {}, j.dataset?.name || ""),
            h("td", {}, j.config?.backbone || ""),
            h("td", { class: "num" }, number(j.result?.epochs_completed ?? j.progress?.epoch ?? null, 2)),
            h("td", { class: "num" }, duration(j.result?.train_seconds ?? j.progress?.elapsed ?? null)),
            h(
              "td",
              { class: "num" },
              number(j.result?.images_per_second ?? j.latest_metrics?.images_per_second ?? null, 1),
            ),
            h("td", { class: "num" }, number(j.latest_metrics?.loss ?? null)),
            h("td", { class: "num" }, percent(j.latest_metrics?.knn_top1)),
            h("td", { class: "num" }, percent(j.latest_metrics?.linear_top1)),
            h(
              "td",
              {},
              h(
                "button",
                {
                  type: "button",
                  class: "secondary small",
                  "aria-label": `Remove ${shortId(j.id)} from the comparison`,
                  onclick: () => onRemove(j),
                },
                "Remove",
              ),
            ),
          ),
        ),
      ),
    ),
  );
}

export function configDifferences(runs) {
  if (runs.length < 2) return h("p", { class: "muted" }, "Add another run to see where the configs differ.");
  const settings = runs.map(({ job }) => settingsOf(job));
  const keys = new Set(settings.flatMap((s) => [...s.keys()]));
  const value = (s, key) => (s.has(key) ? s.get(key) : "(not set)");
  const differing = [...keys].filter((key) => new Set(settings.map((s) => value(s, key))).size > 1);
  if (!differing.length) return h("p", { class: "muted" }, "Their configs are the same.");
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      { id: "compare-config" },
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          h("th", { scope: "col" }, "Key"),
          runs.map((r) => h("th", { scope: "col", class: "mono" }, shortId(r.job.id))),
        ),
      ),
      h(
        "tbody",
        {},
        differing.map((key) =>
          h(
            "tr",
            {},
            h("th", { scope: "row", class: "mono" }, key),
            settings.map((s) => h("td", { class: "mono" }, value(s, key))),
          ),
        ),
      ),
    ),
  );
}

// A job's settings as text by key: method, data set, the run's config, then its evaluation parameters.
function settingsOf(job) {
  const text = (v) => (v === null ? "none" : typeof v === "object" ? JSON.stringify(v) : String(v));
  const evaluation = job.evaluation_parameters || {};
  const out = new Map([
    ["method", job.method],
    ["dataset", job.dataset?.name],
  ]);
  for (const [key, v] of Object.entries(job.config || {}))
    if (!IGNORED.has(key) && !(key in evaluation)) out.set(key, text(v));
  for (const [protocol, params] of Object.entries(evaluation)) {
    for (const [name, v] of Object.entries(params)) out.set(`${protocol}.${name}`, text(v));
  }
  return out;
}
