// /ui/jobs/{id}: one run. Charts of its metrics (updated from its progress events while it
// trains), its config, events, log, evaluations and checkpoints, and per checkpoint an embedding plot
// and, for a ViT, its attention maps on a few test images.

import { api, apiOr, download, watchJob } from "../api.js";
import { attentionHeatmap, embeddingPlot, lineChart } from "../charts.js";
import { ACTIVE, bytes, clear, debounce, every, h, number, percent, progressCell, shortId, statusBadge, toast, when } from "../dom.js";

// Points per series asked of the server; past four times that, live points are folded back into a fresh sample.
const POINTS = 2000;
const LOG_LINES = 200;
const LOG_POLL_MS = 5000;
const MAX_EVENTS_SHOWN = 300;

export async function render(main, { params: [jobId], signal }) {
  // The series is the slowest answer: asked for at once, beside the job.
  const firstMetrics = metricsOf(jobId, signal);
  firstMetrics.catch(() => {});
  let job = await api(`/v1/jobs/${jobId}`, { signal });
  document.title = `${job.method} ${shortId(job.id)} · cssl`;

  const badge = h("span");
  const progressBox = h("div", { class: "progress-box" });
  const errorBox = h("p", { class: "error", role: "alert", hidden: true });
  const actions = h("div", { class: "actions" });
  const figures = {
    loss: h("figure", { class: "chart", id: "chart-loss" }, h("figcaption", {}, "Loss")),
    lr: h("figure", { class: "chart", id: "chart-lr" }, h("figcaption", {}, "Learning rate")),
    ips: h("figure", { class: "chart", id: "chart-ips" }, h("figcaption", {}, "Images per second")),
    knn: h("figure", { class: "chart", id: "chart-knn" }, h("figcaption", {}, "kNN top-1 over epochs (periodic kNN)")),
  };
  const evaluationsBox = h("div", { class: "table-wrap" });
  const checkpointsBox = h("div", { class: "table-wrap" });
  const embeddingBox = h("section", { id: "embedding", "aria-labelledby": "embedding-title" });
  const isVit = String(job.config?.backbone || "").startsWith("vit");
  const attentionBox = h("section", { id: "attention", "aria-labelledby": "attention-title", hidden: !isVit });
  const eventsList = h("ol", { class: "events", id: "events", "aria-label": "Events, oldest first" });
  const logBox = h("pre", { id: "log", tabindex: "0", "aria-label": `Last ${LOG_LINES} lines of the job's log` });

  clear(main,
    h("h1", {}, `${job.method} on ${job.dataset?.name || "?"} `, badge),
    h("div", { class: "meta" },
      h("span", {}, "Job ", h("b", { class: "mono" }, job.id)),
      h("span", {}, "Kind ", h("b", {}, job.kind)),
      h("span", {}, "Backbone ", h("b", {}, job.config?.backbone || "–")),
      h("span", {}, "Submitted ", h("b", {}, when(job.timings.created_at)))),
    actions,
    errorBox,
    progressBox,
    h("h2", {}, "Training curves"),
    h("div", { class: "grid" }, Object.values(figures)),
    h("h2", {}, "Evaluations"), evaluationsBox,
    h("h2", {}, "Checkpoints"), checkpointsBox,
    embeddingBox,
    attentionBox,
    h("h2", {}, "Resolved config"), configTable(job.config),
    h("h2", {}, "Events"), eventsList,
    h("h2", {}, "Log"), logBox);

  const charts = {
    loss: lineChart(figures.loss, { xLabel: "step", series: [{ label: "loss" }], signal }),
    lr: lineChart(figures.lr, { xLabel: "step", series: [{ label: "learning rate" }], signal }),
    ips: lineChart(figures.ips, { xLabel: "step", series: [{ label: "images/s" }], signal }),
    knn: lineChart(figures.knn, { xLabel: "epoch", series: [{ label: "kNN top-1 %", points: true }], signal,
      empty: "No periodic kNN: set knn_every in the config to measure it during training." }),
  };
  let lastStep = 0;
  let refolding = false;

  function showJob() {
    clear(badge, statusBadge(job));
    clear(progressBox, progressCell(job),
      job.latest_metrics?.loss !== undefined ? h("small", { class: "muted" },
        `loss ${number(job.latest_metrics.loss)} · lr ${number(job.latest_metrics.lr)} · ${number(job.latest_metrics.images_per_second, 1)} images/s`) : null);
    errorBox.hidden = !job.error;
    errorBox.textContent = job.error ? `Failed: ${job.error}` : "";
    const buttons = [];
    if (ACTIVE.has(job.status) && !job.cancel_requested) {
      buttons.push(h("button", { type: "button", class: "danger", onclick: cancel }, "Cancel job"));
    }
    if (job.kind === "pretrain") {
      buttons.push(h("a", { class: "button", href: `/ui/submit?from=${job.id}` }, "Run again with changes"));
    }
    buttons.push(h("a", { class: "button secondary", href: `/ui/compare?jobs=${job.id}` }, "Compare…"));
    clear(actions, buttons);
  }

  async function cancel(event) {
    event.target.disabled = true;
    try {
      job = await api(`/v1/jobs/${job.id}/cancel`, { method: "POST" });
      toast(job.status === "cancelled" ? "Cancelled." : "Cancel requested: the job stops at its next step and keeps a checkpoint.");
    } catch (error) {
      toast(`Could not cancel: ${error.message}`);
    }
    showJob();
  }

  async function loadMetrics(pending = null) {
    const metrics = await (pending || metricsOf(job.id, signal));
    const series = metrics.series || {};
    const byStep = (name) => {
      const points = (series[name] || []).filter((p) => p.step !== null && p.value !== null);
      return [points.map((p) => p.step), points.map((p) => p.value)];
    };
    charts.loss.set(byStep("loss"));
    charts.lr.set(byStep("lr"));
    charts.ips.set(byStep("images_per_second"));
    const knn = (series.knn_top1 || []).filter((p) => p.value !== null);
    charts.knn.set([knn.map((p) => p.epoch), knn.map((p) => p.value)]);
    const steps = charts.loss.length ? byStep("loss")[0] : [];
    lastStep = Math.max(lastStep, steps.length ? steps[steps.length - 1] : 0);
  }

  async function loadEvaluations() {
    const evaluations = await api(`/v1/evaluations?job=${job.id}`, { signal });
    if (!evaluations.length) {
      clear(evaluationsBox, h("p", { class: "empty" }, ACTIVE.has(job.status) ? "None yet: the final evaluations run when training ends." : "None."));
      return;
    }
    clear(evaluationsBox, h("table", { id: "evaluations" },
      h("thead", {}, h("tr", {}, ["Protocol", "Top-1", "Top-5", "Epoch", "Checkpoint", "Parameters", "Recorded"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, evaluations.map((e) => h("tr", {},
        h("td", {}, e.protocol), h("td", { class: "num" }, percent(e.top1)), h("td", { class: "num" }, percent(e.top5)),
        h("td", { class: "num" }, e.epoch ?? "–"), h("td", {}, e.checkpoint_id ?? "periodic"),
        h("td", { class: "mono" }, compact(e.parameters)), h("td", {}, when(e.created_at)))))));
  }

  let shownEmbedding = null;
  async function loadCheckpoints() {
    const checkpoints = await api(`/v1/checkpoints?job=${job.id}`, { signal });
    if (!checkpoints.length) {
      clear(checkpointsBox, h("p", { class: "empty" }, "No checkpoints yet."));
      return;
    }
    clear(checkpointsBox, h("table", { id: "checkpoints" },
      h("thead", {}, h("tr", {}, ["Id", "Epoch", "Step", "Final", "Size", "Written", "Download", "Embedding"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, checkpoints.map((c) => h("tr", {},
        h("td", {}, c.id), h("td", { class: "num" }, c.epoch), h("td", { class: "num" }, c.step), h("td", {}, c.final ? "yes" : "no"),
        h("td", { class: "num" }, bytes(c.size_bytes)), h("td", {}, when(c.created_at)),
        h("td", { class: "actions" },
          h("button", { type: "button", class: "secondary small", "aria-label": `Full checkpoint ${c.id}`,
            onclick: (e) => save(e.target, c.download, `${c.job_id}-epoch${c.epoch}.pt`) }, "Full"),
          h("button", { type: "button", class: "secondary small", "aria-label": `torchvision backbone of checkpoint ${c.id}`,
            onclick: (e) => save(e.target, `${c.download}?format=torchvision`, `${c.job_id}-epoch${c.epoch}-backbone.pt`) }, "torchvision")),
        h("td", {}, h("button", { type: "button", class: "secondary small",
          "aria-label": `Show embedding${isVit ? " and attention maps" : ""} of checkpoint ${c.id}`,
          onclick: () => showCheckpoint(c) }, "Show")))))));
    if (!shownEmbedding) showCheckpoint(checkpoints.find((c) => c.final) || checkpoints[0]);
  }

  function showCheckpoint(checkpoint) {
    showEmbedding(checkpoint);
    if (isVit) showAttention(checkpoint);
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

  async function showEmbedding(checkpoint) {
    shownEmbedding = checkpoint;
    const body = h("div", { class: "embedding" }, h("p", { class: "muted" }, "Loading…"));
    clear(embeddingBox, h("h2", { id: "embedding-title" }, `Embedding of checkpoint ${checkpoint.id} (epoch ${checkpoint.epoch})`), body);
    const extra = await newestExtra(checkpoint, "embedding");
    if (shownEmbedding !== checkpoint) return;
    if (extra?.points?.length) {
      embeddingPlot(body, { points: extra.points, classes: extra.classes || [], title: `${extra.reduction || "2-D"} of test-set features` });
      body.prepend(h("p", { class: "muted" }, `${(extra.reduction || "").toUpperCase()} of ${extra.points.length} test images' features, coloured by class.`));
      return;
    }
    clear(body, h("div", {}, h("p", {}, "No embedding of this checkpoint yet."),
      ...computeButton(checkpoint, "embedding", { id: "compute-embedding", label: "Compute embedding", what: "Embedding", shows: "the plot appears",
        onDone: () => shownEmbedding === checkpoint && showEmbedding(checkpoint) })));
  }

  let shownAttention = null;
  async function showAttention(checkpoint) {
    shownAttention = checkpoint;
    const body = h("div", { class: "attention" }, h("p", { class: "muted" }, "Loading…"));
    clear(attentionBox, h("h2", { id: "attention-title" }, `Attention maps of checkpoint ${checkpoint.id} (epoch ${checkpoint.epoch})`), body);
    const extra = await newestExtra(checkpoint, "attention");
    if (shownAttention !== checkpoint) return;
    if (extra?.maps?.length) {
      clear(body, extra.images.map((src, i) => attentionFigure(src, extra.maps[i], extra.classes?.[extra.labels[i]] ?? extra.labels[i], i)));
      attentionBox.insertBefore(h("p", { class: "muted" }, `The [CLS] token's attention to each patch in the last block: `
        + `each test image, the mean of the ${extra.heads} heads, then each head; brighter is more attention.`), body);
      return;
    }
    clear(body, h("div", {}, h("p", {}, "No attention maps of this checkpoint yet."),
      ...computeButton(checkpoint, "attention", { id: "compute-attention", label: "Attention maps", what: "Attention maps", shows: "they appear",
        onDone: () => shownAttention === checkpoint && showAttention(checkpoint) })));
  }

  // The newest evaluation of `protocol` on the checkpoint: its extra, asked for on its own if the list leaves it out.
  async function newestExtra(checkpoint, protocol) {
    const found = (await api(`/v1/evaluations?checkpoint=${checkpoint.id}`, { signal })).filter((e) => e.protocol === protocol);
    const newest = found[found.length - 1];
    let extra = newest?.extra;
    if (newest && !extra?.[protocol === "embedding" ? "points" : "maps"]) extra = (await apiOr(newest, `/v1/evaluations/${newest.id}`, { signal })).extra;
    return extra;
  }

  // A button that queues an evaluation job of `protocol` on the checkpoint, and the note that follows it.
  function computeButton(checkpoint, protocol, { id, label, what, shows, onDone }) {
    const button = h("button", { type: "button", id }, label);
    const note = h("p", { class: "muted", role: "status" });
    button.addEventListener("click", async () => {
      button.disabled = true;
      const finalOfSucceeded = checkpoint.final && job.status === "succeeded";
      const request = finalOfSucceeded ? { kind: "eval", job: job.id, evaluate: [protocol] }
        : { kind: "eval", checkpoint: checkpoint.id, evaluate: [protocol] };
      try {
        const evalJob = await api("/v1/jobs", { method: "POST", body: request });
        clear(note, `${what} job `, h("a", { href: `/ui/jobs/${evalJob.id}` }, shortId(evalJob.id)), ` queued; ${shows} here when it is done.`);
        watchJob(evalJob.id, { signal, onEvent: () => {}, onEnd: onDone });
      } catch (error) {
        note.textContent = `Could not start it: ${error.message}`;
        button.disabled = false;
      }
    });
    return [button, note];
  }

  async function loadLog() {
    const text = await api(`/v1/jobs/${job.id}/logs?tail=${LOG_LINES}`, { signal });
    const atBottom = logBox.scrollTop + logBox.clientHeight >= logBox.scrollHeight - 4;
    logBox.textContent = text || "(empty)";
    if (atBottom) logBox.scrollTop = logBox.scrollHeight;
  }

  function addEvent({ id, event, data }) {
    if (event === "progress") return;
    const text = describeEvent(event, data);
    eventsList.append(h("li", {}, h("span", { class: "muted" }, `${when(data.at)} `), text));
    while (eventsList.children.length > MAX_EVENTS_SHOWN) eventsList.firstChild.remove();
    eventsList.scrollTop = eventsList.scrollHeight;
  }

  async function refold() {
    if (refolding) return;
    refolding = true;
    try {
      await loadMetrics();
    } finally {
      refolding = false;
    }
  }

  function onEvent(event) {
    const { event: type, data } = event;
    addEvent(event);
    if (type === "progress") {
      if ((data.step ?? 0) >= (job.progress?.step ?? 0)) {
        job.progress = { ...job.progress, ...data };
        job.latest_metrics = { ...job.latest_metrics, loss: data.loss, lr: data.lr, images_per_second: data.images_per_second };
        showJob();
      }
      if (data.step > lastStep) {
        lastStep = data.step;
        charts.loss.append(data.step, data.loss);
        charts.lr.append(data.step, data.lr);
        charts.ips.append(data.step, data.images_per_second);
        if (charts.loss.length > 4 * POINTS) refold();
      }
    } else if (type === "state") {
      job.status = data.status;
      if (data.error) job.error = data.error;
      showJob();
      if (!ACTIVE.has(data.status)) finished();
    } else if (type === "cancel_requested") {
      job.cancel_requested = true;
      showJob();
    } else if (type === "checkpoint") {
      checkpointsChanged();
    } else if (type === "evaluation") {
      if (data.checkpoint_id === null && data.protocol === "knn") charts.knn.append(data.epoch, data.top1);
      evaluationsChanged();
    }
  }

  async function refresh() {
    job = await api(`/v1/jobs/${job.id}`, { signal });
    showJob();
    await Promise.all([loadEvaluations(), loadCheckpoints(), loadLog()]);
  }

  const checkpointsChanged = debounce(loadCheckpoints, 400);
  const evaluationsChanged = debounce(loadEvaluations, 400);
  const finished = debounce(refresh, 400);

  showJob();
  await loadMetrics(firstMetrics);
  Promise.all(Object.values(charts).map((c) => c.drawn)).then(() => {
    window.csslChartsReady = performance.now();
  });
  await Promise.all([loadEvaluations(), loadCheckpoints()]);
  watchJob(job.id, { signal, onEvent });
  every(LOG_POLL_MS, async () => {
    if (ACTIVE.has(job.status) || !logBox.textContent) await loadLog();
  }, signal);
}

// One test image beside its attention: the mean over heads, then each head; the caption names the class.
function attentionFigure(src, heads, className, index) {
  const rows = heads[0].length;
  const cols = rows ? heads[0][0].length : 0;
  const mean = heads[0].map((row, y) => row.map((_, x) => heads.reduce((sum, head) => sum + head[y][x], 0) / heads.length));
  const cell = Math.max(1, Math.round(96 / Math.max(cols, 1)));
  return h("figure", {},
    h("div", { class: "pair" },
      h("img", { src, alt: `Test image ${index + 1}, class ${className}` }),
      attentionHeatmap(mean, { cell, label: `Mean attention over heads on test image ${index + 1} (${className})` })),
    h("div", { class: "heads" }, heads.map((map, k) => attentionHeatmap(map, { cell, className: "head",
      label: `Head ${k + 1} attention on test image ${index + 1} (${className})` }))),
    h("figcaption", {}, String(className)));
}

function metricsOf(jobId, signal) {
  return apiOr({ series: {} }, `/v1/jobs/${jobId}/metrics?points=${POINTS}`, { signal });
}

function configTable(config) {
  const keys = Object.keys(config || {}).sort();
  return h("div", { class: "table-wrap" }, h("table", { class: "config-table", id: "config" },
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Key"), h("th", { scope: "col" }, "Value"))),
    h("tbody", {}, keys.map((key) => h("tr", {}, h("td", {}, key), h("td", { class: "mono" }, compact(config[key])))))));
}

function compact(value) {
  if (value === null || value === undefined) return "none";
  return typeof value === "object" ? JSON.stringify(value) : String(value);
}

function describeEvent(type, data) {
  switch (type) {
    case "state":
      return `${data.status}${data.worker ? ` on ${data.worker}` : ""}${data.attempt ? ` (attempt ${data.attempt})` : ""}${data.message ? `: ${data.message}` : ""}${data.error ? `: ${data.error}` : ""}`;
    case "checkpoint":
      return `checkpoint ${data.id} at epoch ${data.epoch}, step ${data.step}${data.final ? " (final)" : ""}`;
    case "evaluation":
      return `${data.protocol} top-1 ${percent(data.top1)}${data.epoch !== null && data.epoch !== undefined ? ` at epoch ${data.epoch}` : ""}`;
    case "cancel_requested":
      return "cancel requested";
    default:
      return `${type} ${JSON.stringify(data)}`;
  }
}
