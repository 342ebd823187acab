// The last lines of a job's log (GET /v1/jobs/{id}/logs?tail=N), kept scrolled to the bottom
// while the reader is there.

import { api } from "../api.js";
import { clear, h } from "../dom.js";
import { loadError } from "./loadError.js";

const LOG_LINES = 200;

export function logTail(jobId, { signal }) {
  const pre = h("pre", { id: "log", role: "log", "aria-live": "off", tabindex: "0", "aria-label": `Last ${LOG_LINES} lines of the job's log` });
  const problem = h("div");
  const element = h("section", { "aria-labelledby": "log-title" }, h("h2", { id: "log-title" }, "Log"), problem, pre);

  async function load() {
    let text;
    try {
      text = await api(`/v1/jobs/${jobId}/logs?tail=${LOG_LINES}`, { signal });
    } catch (error) {
      if (!signal.aborted) clear(problem, loadError("the log", error, load));
      return;
    }
    clear(problem);
    const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    pre.textContent = text || "(empty)";
    if (atBottom) pre.scrollTop = pre.scrollHeight;
  }

  return { element, load, loaded: () => pre.textContent !== "" };
}
