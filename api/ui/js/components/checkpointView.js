// One protocol's picture of a checkpoint: the newest evaluation of that protocol on it, drawn by a
// view (embeddingView, attentionView), or a button that queues that evaluation. Which views a run
// offers comes from the protocols' facts: results without accuracy whose extra has what a view draws,
// on a backbone the protocol takes.

import { api, watchJob } from "../api.js";
import { clear, h, shortId } from "../dom.js";
import { hasExtra, takesBackbone } from "../protocols.js";
import { attentionView } from "./attentionView.js";
import { embeddingView } from "./embeddingView.js";
import { loadError } from "./loadError.js";

const VIEWS = [embeddingView, attentionView];

/** [{protocol, view}] for a job's checkpoints. */
export function viewsFor(job, protocols) {
  const found = [];
  for (const protocol of protocols) {
    if (protocol.accuracy !== false || !takesBackbone(protocol, job.config?.backbone)) continue;
    const view = VIEWS.find((v) => hasExtra(protocol, v.draws));
    if (view) found.push({ protocol, view });
  }
  return found;
}

export function checkpointView(job, { protocol, view }, { signal }) {
  const name = protocol.name;
  const element = h("section", { id: name, "aria-labelledby": `${name}-title` });
  let shown = null;

  async function show(checkpoint) {
    shown = checkpoint;
    const body = h("div", { class: view.className }, h("p", { class: "muted" }, "Loading…"));
    clear(
      element,
      h("h2", { id: `${name}-title` }, `${view.title} of checkpoint ${checkpoint.id} (epoch ${checkpoint.epoch})`),
      body,
    );
    let extra;
    try {
      extra = await newestExtra(checkpoint);
    } catch (error) {
      if (!signal.aborted && shown === checkpoint)
        clear(
          body,
          loadError(`the ${view.what}`, error, () => show(checkpoint)),
        );
      return;
    }
    if (shown !== checkpoint) return;
    if (extra) {
      view.draw(body, extra);
      return;
    }
    clear(body, h("div", {}, h("p", {}, `No ${view.what} of this checkpoint yet.`), computeButton(checkpoint)));
  }

  // The newest evaluation's extra, asked for on its own when the list leaves out what the view draws.
  async function newestExtra(checkpoint) {
    const found = (await api(`/v1/evaluations?checkpoint=${checkpoint.id}`, { signal })).filter(
      (e) => e.protocol === name,
    );
    const newest = found[found.length - 1];
    if (!newest) return null;
    const has = (extra) => view.draws.every((key) => key in (extra || {}));
    if (has(newest.extra)) return newest.extra;
    const full = (await api(`/v1/evaluations/${newest.id}`, { signal })).extra;
    return has(full) ? full : null;
  }

  // Queues an eval job of the protocol on the checkpoint; the picture appears once it is done.
  function computeButton(checkpoint) {
    const button = h("button", { type: "button", id: `compute-${name}` }, view.button);
    const note = h("p", { class: "muted", role: "status" });
    button.addEventListener("click", async () => {
      button.disabled = true;
      const whole = checkpoint.final && job.status === "succeeded";
      const request = whole
        ? { kind: "eval", job: job.id, evaluate: [name] }
        : { kind: "eval", checkpoint: checkpoint.id, evaluate: [name] };
      try {
        const evalJob = await api("/v1/jobs", { method: "POST", body: request });
        clear(
          note,
          `${view.title} job `,
          h("a", { href: `/ui/jobs/${evalJob.id}` }, shortId(evalJob.id)),
          ` queued; ${view.shows} here when it is done.`,
        );
        watchJob(evalJob.id, { signal, onEvent: () => {}, onEnd: () => shown === checkpoint && show(checkpoint) });
      } catch (error) {
        note.textContent = `Could not start it: ${error.message}`;
        button.disabled = false;
      }
    });
    return [button, note];
  }

  return { element, show, what: view.what };
}
