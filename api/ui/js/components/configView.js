// A run's resolved config, and apart from it the parameters of its evaluations (the API names
// which keys those are: the job's evaluation_parameters).

import { h } from "../dom.js";

export function configView(job) {
  const evaluation = job.evaluation_parameters || {};
  const runKeys = Object.keys(job.config || {})
    .filter((key) => !(key in evaluation))
    .sort();
  const table = (id, rows) =>
    h(
      "div",
      { class: "table-wrap" },
      h(
        "table",
        { class: "config-table", id },
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Key"), h("th", { scope: "col" }, "Value"))),
        h(
          "tbody",
          {},
          rows.map(([key, value]) => h("tr", {}, h("td", {}, key), h("td", { class: "mono" }, compact(value)))),
        ),
      ),
    );
  return h(
    "section",
    { "aria-labelledby": "config-title" },
    h("h2", { id: "config-title" }, "Resolved config"),
    table(
      "config",
      runKeys.map((key) => [key, job.config[key]]),
    ),
    Object.keys(evaluation).length
      ? [
          h("h3", {}, "Evaluation parameters"),
          table(
            "evaluation-parameters",
            Object.entries(evaluation).flatMap(([protocol, params]) =>
              Object.entries(params).map(([name, value]) => [`${protocol}.${name}`, value]),
            ),
          ),
        ]
      : null,
  );
}

export function compact(value) {
  if (value === null || value === undefined) return "none";
  return typeof value === "object" ? JSON.stringify(value) : String(value);
}
