// The attention view of a ViT checkpoint: each test image beside the [CLS] token's attention to
// its patches in the last block, the mean over heads and then each head.

import { attentionHeatmap } from "../charts.js";
import { clear, h } from "../dom.js";

export const attentionView = {
  draws: ["images", "maps", "labels"],
  title: "Attention maps",
  what: "attention maps",
  button: "Attention maps",
  shows: "they appear",
  className: "attention",
  draw(body, extra) {
    const className = (i) => extra.classes?.[extra.labels[i]] ?? extra.labels[i];
    clear(
      body,
      extra.images.map((src, i) => attentionFigure(src, extra.maps[i], className(i), i)),
    );
    body.before(
      h(
        "p",
        { class: "muted" },
        "The [CLS] token's attention to each patch in the last block: each test image, " +
          `the mean of the ${extra.heads ?? extra.maps[0]?.length} heads, then each head; brighter is more attention.`,
      ),
    );
  },
};

function attentionFigure(src, heads, className, index) {
  const cols = heads[0]?.[0]?.length || 1;
  const mean = heads[0].map((row, y) =>
    row.map((_, x) => heads.reduce((sum, head) => sum + head[y][x], 0) / heads.length),
  );
  const cell = Math.max(1, Math.round(96 / cols));
  const on = `test image ${index + 1} (${className})`;
  return h(
    "figure",
    {},
    h(
      "div",
      { class: "pair" },
      h("img", { src, alt: `Test image ${index + 1}, class ${className}` }),
      attentionHeatmap(mean, { cell, label: `Mean attention over heads on ${on}` }),
    ),
    h(
      "div",
      { class: "heads" },
      heads.map((map, k) =>
        attentionHeatmap(map, { cell, className: "head", label: `Head ${k + 1} attention on ${on}` }),
      ),
    ),
    h("figcaption", {}, String(className)),
  );
}
