// A run's checkpoints (GET /v1/checkpoints?job=) with their downloads (the full training state,
// or the torchvision backbone) and, where the run has views of a checkpoint, a button to show them.

import { api, download } from "../api.js";
import { bytes, h, toast, when } from "../dom.js";
import { fill } from "./loadError.js";

const COLUMNS = ["Id", "Epoch", "Step", "Final", "Size", "Written", "Download"];

/** `views`: what Show displays ("embedding", ...); onShow(checkpoint) displays it. */
export function checkpointsTable(jobId, { signal, views = [], onShow }) {
  const box = h("div", { class: "table-wrap" });
  const element = h(
    "section",
    { "aria-labelledby": "checkpoints-title" },
    h("h2", { id: "checkpoints-title" }, "Checkpoints"),
    box,
  );
  let list = [];

  function row(c) {
    const file = `${c.job_id}-epoch${c.epoch}`;
    return h(
      "tr",
      {},
      h("td", {}, c.id),
      h("td", { class: "num" }, c.epoch),
      h("td", { class: "num" }, c.step),
      h("td", {}, c.final ? "yes" : "no"),
      h("td", { class: "num" }, bytes(c.size_bytes)),
      h("td", {}, when(c.created_at)),
      h(
        "td",
        { class: "actions" },
        h(
          "button",
          {
            type: "button",
            class: "secondary small",
            "aria-label": `Full checkpoint ${c.id}`,
            onclick: (e) => save(e.target, c.download, `${file}.pt`),
          },
          "Full",
        ),
        h(
          "button",
          {
            type: "button",
            class: "secondary small",
            "aria-label": `torchvision backbone of checkpoint ${c.id}`,
            onclick: (e) => save(e.target, `${c.download}?format=torchvision`, `${file}-backbone.pt`),
          },
          "torchvision",
        ),
      ),
      views.length
        ? h(
            "td",
            {},
            h(
              "button",
              {
                type: "button",
                class: "secondary small",
                "aria-label": `Show ${views.join(" and ")} of checkpoint ${c.id}`,
                onclick: () => onShow(c),
              },
              "Show",
            ),
          )
        : null,
    );
  }

  /** Resolves to the checkpoints listed (none when the request failed). */
  async function load() {
    list = [];
    await fill(
      box,
      "the checkpoints",
      async () => {
        const checkpoints = await api(`/v1/checkpoints?job=${jobId}`, { signal });
        list = checkpoints;
        if (!checkpoints.length) return h("p", { class: "empty" }, "No checkpoints yet.");
        const headings = [...COLUMNS, ...(views.length ? [views.length > 1 ? "Views" : capitalised(views[0])] : [])];
        return h(
          "table",
          { id: "checkpoints" },
          h(
            "thead",
            {},
            h(
              "tr",
              {},
              headings.map((t) => h("th", { scope: "col" }, t)),
            ),
          ),
          h("tbody", {}, checkpoints.map(row)),
        );
      },
      signal,
    );
    return list;
  }

  return { element, load };
}

async function save(button, path, name) {
  button.disabled = true;
  try {
    const file = await download(path, name);
    toast(`Saved ${file.name} (${bytes(file.size)}).`);
  } catch (error) {
    toast(`Download failed: ${error.message}`);
  } finally {
    button.disabled = false;
  }
}

function capitalised(text) {
  return text.charAt(0).toUpperCase() + text.slice(1);
}
