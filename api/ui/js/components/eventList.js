// A job's events as they arrive, oldest first, in words (progress events are the charts').

import { h, percent, when } from "../dom.js";

const MAX_EVENTS_SHOWN = 300;

export function eventList() {
  const list = h("ol", { class: "events", id: "events", "aria-label": "Events, oldest first" });
  const element = h("section", { "aria-labelledby": "events-title" }, h("h2", { id: "events-title" }, "Events"), list);

  function add({ event, data }) {
    if (event === "progress") return;
    list.append(h("li", {}, h("span", { class: "muted" }, `${when(data.at)} `), describeEvent(event, data)));
    while (list.children.length > MAX_EVENTS_SHOWN) list.firstChild.remove();
    list.scrollTop = list.scrollHeight;
  }

  return { element, add };
}

function describeEvent(type, data) {
  switch (type) {
    case "state":
      return (
        `${data.status}${data.worker ? ` on ${data.worker}` : ""}${data.attempt ? ` (attempt ${data.attempt})` : ""}` +
        `${data.message ? `: ${data.message}` : ""}${data.error ? `: ${data.error}` : ""}`
      );
    case "checkpoint":
      return `checkpoint ${data.id} at epoch ${data.epoch}, step ${data.step}${data.final ? " (final)" : ""}`;
    case "evaluation": {
      const at = data.epoch !== null && data.epoch !== undefined ? ` at epoch ${data.epoch}` : "";
      return data.top1 === null || data.top1 === undefined
        ? `${data.protocol} done${at}`
        : `${data.protocol} top-1 ${percent(data.top1)}${at}`;
    }
    case "warning":
      return `warning at step ${data.step}: ${data.message}`;
    case "cancel_requested":
      return "cancel requested";
    default:
      return `${type} ${JSON.stringify(data)}`;
  }
}
