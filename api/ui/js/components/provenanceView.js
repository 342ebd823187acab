// What a run ran with (the job's provenance, recorded by the worker when an attempt starts): code,
// libraries, device, host, determinism flags and the data's fingerprint, one row each.

import { clear, h } from "../dom.js";
import { compact } from "./configView.js";

/** update(job) shows the job's provenance as it is now. */
export function provenanceView(job) {
  const body = h("div");
  const element = h(
    "section",
    { "aria-labelledby": "provenance-title" },
    h("h2", { id: "provenance-title" }, "Provenance"),
    body,
  );

  function update(current) {
    const provenance = current.provenance;
    if (!provenance) {
      clear(body, h("p", { class: "muted" }, "Recorded when a worker starts the run."));
      return;
    }
    // Nested values (data, determinism) get a row per entry: data.fingerprint, determinism.cudnn_benchmark.
    const rows = Object.entries(provenance).flatMap(([key, value]) =>
      value && typeof value === "object" && !Array.isArray(value)
        ? Object.entries(value).map(([name, inner]) => [`${key}.${name}`, inner])
        : [[key, value]],
    );
    clear(
      body,
      h(
        "div",
        { class: "table-wrap" },
        h(
          "table",
          { class: "config-table", id: "provenance" },
          h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Key"), h("th", { scope: "col" }, "Value"))),
          h(
            "tbody",
            {},
            rows.map(([key, value]) => h("tr", {}, h("td", {}, key), h("td", { class: "mono" }, compact(value)))),
          ),
        ),
      ),
    );
  }

  update(job);
  return { element, update };
}
