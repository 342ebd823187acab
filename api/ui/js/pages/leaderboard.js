// /ui/leaderboard: per data set and protocol, each method's best result and what it cost.

import { apiOr } from "../api.js";
import { clear, duration, h, number, percent, shortId } from "../dom.js";

export async function render(main, { query, signal }) {
  document.title = "Leaderboard · cssl";
  const chosen = { dataset: query.get("dataset") || "", protocol: query.get("protocol") || "" };
  const [datasets, protocols] = await Promise.all([
    apiOr([], "/v1/datasets", { signal }),
    apiOr([{ name: "knn" }, { name: "linear" }], "/v1/protocols", { signal }),
  ]);
  const datasetSelect = h("select", { id: "lb-dataset" }, h("option", { value: "" }, "all"),
    datasets.map((d) => h("option", { value: d.name, selected: d.name === chosen.dataset }, d.name)));
  const protocolSelect = h("select", { id: "lb-protocol" }, h("option", { value: "" }, "all"),
    protocols.filter((p) => p.name !== "embedding").map((p) => h("option", { value: p.name, selected: p.name === chosen.protocol }, p.name)));
  const results = h("div", { id: "leaderboard", "aria-live": "polite" });
  clear(main,
    h("h1", {}, "Leaderboard"),
    h("p", { class: "muted" }, "Each method's best result on a data set under a protocol, among your runs, with what it cost to train."),
    h("div", { class: "toolbar" },
      h("div", { class: "field" }, h("label", { for: "lb-dataset" }, "Data set"), datasetSelect),
      h("div", { class: "field" }, h("label", { for: "lb-protocol" }, "Protocol"), protocolSelect)),
    results);

  async function load() {
    const params = new URLSearchParams(Object.entries(chosen).filter(([, v]) => v));
    history.replaceState({}, "", `/ui/leaderboard${params.size ? `?${params}` : ""}`);
    let rows;
    try {
      rows = await apiOr(null, `/v1/leaderboard?${params}`, { signal });
    } catch (error) {
      if (signal.aborted) return;
      clear(results, h("p", { class: "error", role: "alert" }, error.message));
      return;
    }
    if (rows === null) {
      clear(results, h("p", { class: "empty" }, "This server has no leaderboard yet (GET /v1/leaderboard)."));
      return;
    }
    const list = Array.isArray(rows) ? rows : rows.items || rows.rows || [];
    if (!list.length) {
      clear(results, h("p", { class: "empty" }, "No evaluated runs here yet."));
      return;
    }
    const groups = new Map();
    for (const row of list) {
      const key = `${row.dataset} · ${row.protocol}`;
      if (!groups.has(key)) groups.set(key, []);
      groups.get(key).push(row);
    }
    clear(results, [...groups].map(([key, group]) => h("div", { class: "table-wrap" }, h("table", { class: "leaderboard" },
      h("caption", {}, key),
      h("thead", {}, h("tr", {},
        ["Rank", "Method", "Backbone"].map((t) => h("th", { scope: "col" }, t)),
        ["Top-1", "Top-5", "Training time", "Images/s", "Epochs", "Batch"].map((t) => h("th", { scope: "col", class: "num" }, t)),
        h("th", { scope: "col" }, "Run"))),
      h("tbody", {}, group.sort((a, b) => b.top1 - a.top1).map((row, i) => h("tr", {},
        h("td", { class: "num" }, i + 1), h("td", {}, row.method), h("td", {}, row.backbone || "–"),
        h("td", { class: "num" }, percent(row.top1)), h("td", { class: "num" }, percent(row.top5)),
        h("td", { class: "num" }, duration(row.train_seconds)), h("td", { class: "num" }, number(row.images_per_second, 1)),
        h("td", { class: "num" }, number(row.epochs, 2)), h("td", { class: "num" }, row.batch_size ?? "–"),
        h("td", {}, row.job_id ? h("a", { href: `/ui/jobs/${row.job_id}`, class: "mono" }, shortId(row.job_id)) : "–"))))))));
  }

  for (const [select, key] of [[datasetSelect, "dataset"], [protocolSelect, "protocol"]]) {
    select.addEventListener("change", () => {
      chosen[key] = select.value;
      load();
    });
  }
  await load();
}
