// A run's training curves: loss, learning rate and images/s by step, the collapse guard's feature
// spread, and the periodic kNN by epoch. Drawn from GET /v1/jobs/{id}/metrics, then grown from the progress events while it
// trains. The section is aria-busy until the charts are drawn (or their request has failed).

import { api } from "../api.js";
import { lineChart } from "../charts.js";
import { clear, h } from "../dom.js";
import { loadError } from "./loadError.js";

// Points per series asked of the server; past four times that, live points are folded back into a fresh sample.
const POINTS = 2000;

/** The metrics request, started before anything else on the page: it is the slowest answer. */
export function requestMetrics(jobId, signal) {
  const pending = api(`/v1/jobs/${jobId}/metrics?points=${POINTS}`, { signal });
  pending.catch(() => {}); // shown once trainingCharts.load awaits it
  return pending;
}

export function trainingCharts(jobId, { signal }) {
  const figure = (id, caption) => h("figure", { class: "chart", id }, h("figcaption", {}, caption));
  const figures = {
    loss: figure("chart-loss", "Loss"),
    lr: figure("chart-lr", "Learning rate"),
    ips: figure("chart-ips", "Images per second"),
    knn: figure("chart-knn", "kNN top-1 over epochs (periodic kNN)"),
    spread: figure("chart-spread", "Feature spread of a fixed probe (near cosine 1 and std 0: collapsed)"),
  };
  const problem = h("div");
  const element = h(
    "section",
    { id: "charts", "aria-labelledby": "charts-title", "aria-busy": "true" },
    h("h2", { id: "charts-title" }, "Training curves"),
    problem,
    h("div", { class: "grid" }, Object.values(figures)),
  );
  const byStep = { xLabel: "step", signal };
  const charts = {
    loss: lineChart(figures.loss, { ...byStep, series: [{ label: "loss" }] }),
    lr: lineChart(figures.lr, { ...byStep, series: [{ label: "learning rate" }] }),
    ips: lineChart(figures.ips, { ...byStep, series: [{ label: "images/s" }] }),
    spread: lineChart(figures.spread, {
      ...byStep,
      series: [{ label: "mean pairwise cosine" }, { label: "std per dimension" }],
      empty: "Measured every 50 steps and at each epoch's end.",
    }),
    knn: lineChart(figures.knn, {
      xLabel: "epoch",
      series: [{ label: "kNN top-1 %", points: true }],
      signal,
      empty: "No periodic kNN: set knn_every in the config to measure it during training.",
    }),
  };
  const drawn = () => element.setAttribute("aria-busy", "false");
  Promise.all(Object.values(charts).map((c) => c.drawn)).then(drawn);
  let lastStep = 0;
  let refolding = false;

  /** Draw the series of `pending` (a requestMetrics answer), or a fresh one. */
  async function load(pending = requestMetrics(jobId, signal)) {
    let metrics;
    try {
      metrics = await pending;
    } catch (error) {
      if (signal.aborted) return;
      clear(
        problem,
        loadError("the training curves", error, () => load()),
      );
      drawn();
      return;
    }
    clear(problem);
    const series = metrics.series || {};
    const stepSeries = (name) => {
      const points = (series[name] || []).filter((p) => p.step !== null && p.value !== null);
      return [points.map((p) => p.step), points.map((p) => p.value)];
    };
    const loss = stepSeries("loss");
    charts.loss.set(loss);
    charts.lr.set(stepSeries("lr"));
    charts.ips.set(stepSeries("images_per_second"));
    // Measured together, so the two series share their steps.
    const [cosineSteps, cosine] = stepSeries("feature_cosine");
    charts.spread.set([cosineSteps, cosine, stepSeries("feature_std")[1]]);
    const knn = (series.knn_top1 || []).filter((p) => p.value !== null);
    charts.knn.set([knn.map((p) => p.epoch), knn.map((p) => p.value)]);
    lastStep = Math.max(lastStep, loss[0].length ? loss[0][loss[0].length - 1] : 0);
  }

  async function refold() {
    if (refolding) return;
    refolding = true;
    try {
      await load();
    } finally {
      refolding = false;
    }
  }

  /** A progress event's point on the step charts. */
  function progress(data) {
    if (!(data.step > lastStep)) return;
    lastStep = data.step;
    charts.loss.append(data.step, data.loss);
    charts.lr.append(data.step, data.lr);
    charts.ips.append(data.step, data.images_per_second);
    if (data.feature_cosine !== undefined) charts.spread.append(data.step, data.feature_cosine, data.feature_std);
    if (charts.loss.length > 4 * POINTS) refold();
  }

  return { element, load, progress, knn: (epoch, top1) => charts.knn.append(epoch, top1) };
}
