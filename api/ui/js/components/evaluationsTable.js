// A run's evaluations (GET /v1/evaluations?job=): protocol, accuracy, epoch, checkpoint, parameters.

import { api } from "../api.js";
import { h, percent, when } from "../dom.js";
import { fill } from "./loadError.js";
import { compact } from "./configView.js";

const COLUMNS = ["Protocol", "Top-1", "Top-5", "Epoch", "Checkpoint", "Parameters", "Recorded"];

export function evaluationsTable(jobId, { signal }) {
  const box = h("div", { class: "table-wrap" });
  const element = h(
    "section",
    { "aria-labelledby": "evaluations-title" },
    h("h2", { id: "evaluations-title" }, "Evaluations"),
    box,
  );

  /** `training`: the job has not finished, so its final evaluations are still to come. */
  function load(training) {
    return fill(
      box,
      "the evaluations",
      async () => {
        const evaluations = await api(`/v1/evaluations?job=${jobId}`, { signal });
        if (!evaluations.length) {
          return h(
            "p",
            { class: "empty" },
            training ? "None yet: the final evaluations run when training ends." : "None.",
          );
        }
        return h(
          "table",
          { id: "evaluations" },
          h(
            "thead",
            {},
            h(
              "tr",
              {},
              COLUMNS.map((t) => h("th", { scope: "col" }, t)),
            ),
          ),
          h(
            "tbody",
            {},
            evaluations.map((e) =>
              h(
                "tr",
                {},
                h("td", {}, e.protocol),
                h("td", { class: "num" }, percent(e.top1)),
                h("td", { class: "num" }, percent(e.top5)),
                h("td", { class: "num" }, e.epoch ?? "–"),
                h("td", {}, e.checkpoint_id ?? "periodic"),
                h("td", { class: "mono" }, compact(e.parameters)),
                h("td", {}, when(e.created_at)),
              ),
            ),
          ),
        );
      },
      signal,
    );
  }

  return { element, load };
}
