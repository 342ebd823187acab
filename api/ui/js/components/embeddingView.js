// The embedding view: a checkpoint's test-set features in 2-D, coloured by class.

import { embeddingPlot } from "../charts.js";
import { h } from "../dom.js";

export const embeddingView = {
  draws: ["points", "classes"],
  title: "Embedding",
  what: "embedding",
  button: "Compute embedding",
  shows: "the plot appears",
  className: "embedding",
  draw(body, extra) {
    const reduction = extra.reduction || "2-D";
    embeddingPlot(body, { points: extra.points, classes: extra.classes, title: `${reduction} of test-set features` });
    body.prepend(
      h(
        "p",
        { class: "muted" },
        `${reduction.toUpperCase()} of ${extra.points.length} test images' features, coloured by class.`,
      ),
    );
  },
};
