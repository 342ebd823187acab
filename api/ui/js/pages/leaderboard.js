// /ui/leaderboard: per data set and protocol, each method's best result and what it cost. The
// protocols offered are those whose results have an accuracy (their facts, GET /v1/protocols).

import { api, settle } from "../api.js";
import { clear, h } from "../dom.js";
import { fill, loadError } from "../components/loadError.js";
import { leaderboardTable } from "../components/leaderboardTable.js";
import { withAccuracy } from "../protocols.js";

export async function render(main, { query, signal }) {
  document.title = "Leaderboard · cssl";
  const chosen = {
    dataset: query.get("dataset") || "",
    protocol: query.get("protocol") || "",
    group_by: query.get("group_by") || "",
  };
  const [datasets, protocols] = await Promise.all([
    settle(api("/v1/datasets", { signal })),
    settle(api("/v1/protocols", { signal })),
  ]);
  const datasetSelect = filter(
    "lb-dataset",
    (datasets.value || []).map((d) => d.name),
    chosen.dataset,
  );
  const protocolSelect = filter(
    "lb-protocol",
    withAccuracy(protocols.value || []).map((p) => p.name),
    chosen.protocol,
  );
  // What a run's provenance records: rank each value apart (a new torch, another GPU).
  const groupSelect = h(
    "select",
    { id: "lb-group" },
    h("option", { value: "" }, "nothing"),
    ["device", "torch", "code", "cuda", "python", "host"].map((key) =>
      h("option", { value: key, selected: key === chosen.group_by }, key),
    ),
  );
  const results = h("div", { id: "leaderboard", "aria-live": "polite" });
  clear(
    main,
    h("h1", {}, "Leaderboard"),
    h(
      "p",
      { class: "muted" },
      "Each method's best result on a data set under a protocol, among your runs, with what it cost to train.",
    ),
    h(
      "div",
      { class: "toolbar" },
      h("div", { class: "field" }, h("label", { for: "lb-dataset" }, "Data set"), datasetSelect),
      h("div", { class: "field" }, h("label", { for: "lb-protocol" }, "Protocol"), protocolSelect),
      h("div", { class: "field" }, h("label", { for: "lb-group" }, "Group by"), groupSelect),
    ),
    datasets.error ? loadError("the data sets to filter by", datasets.error) : null,
    protocols.error ? loadError("the protocols to filter by", protocols.error) : null,
    results,
  );

  function load() {
    const params = new URLSearchParams(Object.entries(chosen).filter(([, v]) => v));
    history.replaceState({}, "", `/ui/leaderboard${params.size ? `?${params}` : ""}`);
    return fill(
      results,
      "the leaderboard",
      async () => {
        const rows = await api(`/v1/leaderboard?${params}`, { signal });
        if (!rows.length) return h("p", { class: "empty" }, "No evaluated runs here yet.");
        const groups = Map.groupBy(rows, (row) =>
          [row.dataset, row.protocol, chosen.group_by && `${chosen.group_by} ${row.group ?? "unknown"}`]
            .filter(Boolean)
            .join(" · "),
        );
        return [...groups].map(([caption, group]) => leaderboardTable(caption, group));
      },
      signal,
    );
  }

  for (const [select, key] of [
    [datasetSelect, "dataset"],
    [protocolSelect, "protocol"],
    [groupSelect, "group_by"],
  ]) {
    select.addEventListener("change", () => {
      chosen[key] = select.value;
      load();
    });
  }
  await load();
}

function filter(id, names, selected) {
  return h(
    "select",
    { id },
    h("option", { value: "" }, "all"),
    names.map((name) => h("option", { value: name, selected: name === selected }, name)),
  );
}
