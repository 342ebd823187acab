// One group of the leaderboard (a data set under a protocol): each method's best result, ranked
// by top-1, with what its pretraining cost and a link to the run.

import { duration, h, number, percent, shortId } from "../dom.js";

const COSTS = ["Top-1", "Top-5", "Training time", "Images/s", "Epochs", "Batch"];

export function leaderboardTable(caption, rows) {
  const ranked = [...rows].sort((a, b) => b.top1 - a.top1);
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      { class: "leaderboard" },
      h("caption", {}, caption),
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          ["Rank", "Method", "Backbone"].map((t) => h("th", { scope: "col" }, t)),
          COSTS.map((t) => h("th", { scope: "col", class: "num" }, t)),
          h("th", { scope: "col" }, "Run"),
        ),
      ),
      h(
        "tbody",
        {},
        ranked.map((row, i) =>
          h(
            "tr",
            {},
            h("td", { class: "num" }, i + 1),
            h("td", {}, row.method),
            h("td", {}, row.backbone || "–"),
            h("td", { class: "num" }, percent(row.top1)),
            h("td", { class: "num" }, percent(row.top5)),
            h("td", { class: "num" }, duration(row.train_seconds)),
            h("td", { class: "num" }, number(row.images_per_second, 1)),
            h("td", { class: "num" }, number(row.epochs, 2)),
            h("td", { class: "num" }, row.batch_size ?? "–"),
            h(
              "td",
              {},
              row.job_id ? h("a", { href: `/ui/jobs/${row.job_id}`, class: "mono" }, shortId(row.job_id)) : "–",
            ),
          ),
        ),
      ),
    ),
  );
}
