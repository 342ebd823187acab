// /ui/compare?jobs=a,b,c: runs' loss and kNN curves overlaid by step, epoch or wall time, and
// a table of where their configs differ and what they reached.

import { ApiError, api, apiOr } from "../api.js";
import { PALETTE, alignSeries, lineChart } from "../charts.js";
import { clear, duration, h, number, percent, shortId, statusBadge } from "../dom.js";
import { navigate } from "../main.js";

const POINTS = 2000;
const AXES = { step: "step", epoch: "epoch", time: "wall time (s)" };
// Not worth a row in the differences: the same for every run of a job, or said elsewhere.
const IGNORED = new Set(["device", "data"]);

export async function render(main, { query, signal }) {
  document.title = "Compare · cssl";
  const ids = [...new Set((query.get("jobs") || "").split(",").map((s) => s.trim().toLowerCase()).filter((s) => /^[0-9a-f]{32}$/.test(s)))];
  let axis = AXES[query.get("x")] ? query.get("x") : "step";

  clear(main, h("h1", {}, "Compare runs"));
  if (!ids.length) {
    main.append(h("p", { class: "empty" }, "No runs chosen: tick runs in the ", h("a", { href: "/ui/" }, "jobs table"),
      " and press Compare selected."));
    return;
  }

  const loaded = await Promise.all(ids.map(async (id) => {
    try {
      const [job, metrics] = await Promise.all([
        api(`/v1/jobs/${id}`, { signal }),
        apiOr({ series: {} }, `/v1/jobs/${id}/metrics?points=${POINTS}`, { signal }),
      ]);
      return { job, series: metrics.series || {} };
    } catch (error) {
      if (error instanceof ApiError && error.status === 404) return { missing: id };
      throw error;
    }
  }));
  const runs = loaded.filter((r) => r.job);
  const missing = loaded.filter((r) => r.missing).map((r) => r.missing);
  if (missing.length) main.append(h("p", { class: "error" }, `Not found (or not yours): ${missing.map(shortId).join(", ")}`));
  if (!runs.length) return;

  const hasTime = runs.some((r) => (r.series.loss || []).some((p) => p.time !== undefined && p.time !== null));
  const radios = Object.entries(AXES).map(([value, label]) => h("label", { class: "radio" },
    h("input", { type: "radio", name: "x-axis", value, checked: value === axis, disabled: value === "time" && !hasTime }), ` ${label}`));
  const axisNote = h("p", { class: "muted" }, hasTime ? "" : "This server does not record wall time per point yet; compare by step or epoch.");
  const chartsBox = h("div", { class: "grid" });
  main.append(
    h("fieldset", {}, h("legend", {}, "X axis"), h("div", { class: "actions" }, radios), axisNote),
    chartsBox,
    h("h2", {}, "Runs"),
    runsTable(runs),
    h("h2", {}, "Where their configs differ"),
    differences(runs));

  for (const radio of main.querySelectorAll('input[name="x-axis"]')) {
    radio.addEventListener("change", () => {
      axis = radio.value;
      history.replaceState({}, "", `/ui/compare?jobs=${ids.join(",")}&x=${axis}`);
      draw();
    });
  }

  let drawSignal = null;
  function draw() {
    drawSignal?.abort();
    drawSignal = new AbortController();
    signal.addEventListener("abort", () => drawSignal.abort(), { once: true });
    const loss = h("figure", { class: "chart", id: "compare-loss" }, h("figcaption", {}, `Loss by ${AXES[axis]}`));
    const knn = h("figure", { class: "chart", id: "compare-knn" }, h("figcaption", {}, `kNN top-1 by ${AXES[axis]}`));
    clear(chartsBox, loss, knn);
    const series = runs.map((r, i) => ({ label: `${r.job.method} ${shortId(r.job.id)}`, color: PALETTE[i % PALETTE.length] }));
    lineChart(loss, { xLabel: AXES[axis], series, signal: drawSignal.signal })
      .set(alignSeries(runs.map((r) => curve(r, "loss", axis))));
    lineChart(knn, { xLabel: AXES[axis], series: series.map((s) => ({ ...s, points: true })), signal: drawSignal.signal,
      empty: "None of these runs measured kNN during training (knn_every)." })
      .set(alignSeries(runs.map((r) => curve(r, "knn_top1", axis))));
  }
  draw();

  function runsTable(list) {
    return h("div", { class: "table-wrap" }, h("table", { id: "compare-runs" },
      h("thead", {}, h("tr", {}, ["Run", "Status", "Method", "Dataset", "Backbone", "Epochs", "Training time", "Images/s", "Final loss", "kNN top-1", "Linear top-1"]
        .map((t) => h("th", { scope: "col" }, t)), h("th", { scope: "col" }, h("span", { class: "sr" }, "Actions")))),
      h("tbody", {}, list.map((r, i) => {
        const j = r.job;
        return h("tr", {},
          h("td", {}, h("span", { class: "swatch", style: `background:${PALETTE[i % PALETTE.length]}` }), " ",
            h("a", { href: `/ui/jobs/${j.id}`, class: "mono" }, shortId(j.id))),
          h("td", {}, statusBadge(j)), h("td", {}, j.method), h("td", {}, j.dataset?.name || ""), h("td", {}, j.config?.backbone || ""),
          h("td", { class: "num" }, number(j.result?.epochs_completed ?? j.progress?.epoch ?? null, 2)),
          h("td", { class: "num" }, duration(j.result?.train_seconds ?? j.progress?.elapsed ?? null)),
          h("td", { class: "num" }, number(j.result?.images_per_second ?? j.latest_metrics?.images_per_second ?? null, 1)),
          h("td", { class: "num" }, number(j.latest_metrics?.loss ?? null)),
          h("td", { class: "num" }, percent(j.latest_metrics?.knn_top1)),
          h("td", { class: "num" }, percent(j.latest_metrics?.linear_top1)),
          h("td", {}, h("button", { type: "button", class: "secondary small", "aria-label": `Remove ${shortId(j.id)} from the comparison`,
            onclick: () => navigate(`/ui/compare?jobs=${ids.filter((id) => id !== j.id).join(",")}&x=${axis}`) }, "Remove")));
      }))));
  }
}

/** [xs, ys] of one series of a run against the chosen axis. */
function curve(run, name, axis) {
  const points = (run.series[name] || []).filter((p) => p.value !== null && p.value !== undefined);
  const p = run.job.progress;
  const stepsPerEpoch = p && p.total_steps && p.epochs ? p.total_steps / p.epochs : null;
  const loss = run.series.loss || [];
  const xOf = (point) => {
    // kNN points carry an epoch only: its step is where that epoch ended.
    const step = point.step ?? (stepsPerEpoch ? point.epoch * stepsPerEpoch : null);
    if (axis === "step") return step;
    if (axis === "epoch") return point.step === null || point.step === undefined ? point.epoch : stepsPerEpoch ? point.step / stepsPerEpoch : point.epoch;
    if (point.time !== undefined && point.time !== null) return point.time;
    // The wall time of the loss point nearest that step.
    if (step === null || !loss.length) return null;
    let best = loss[0];
    for (const q of loss) if (Math.abs(q.step - step) < Math.abs(best.step - step)) best = q;
    return best.time ?? null;
  };
  const pairs = points.map((q) => [xOf(q), q.value]).filter(([x]) => x !== null && Number.isFinite(x));
  pairs.sort((a, b) => a[0] - b[0]);
  const xs = [];
  const ys = [];
  for (const [x, y] of pairs) {
    if (xs.length && xs[xs.length - 1] === x) continue;
    xs.push(x);
    ys.push(y);
  }
  return [xs, ys];
}

function differences(runs) {
  const keys = new Set(["method", "dataset"]);
  for (const r of runs) for (const k of Object.keys(r.job.config || {})) if (!IGNORED.has(k)) keys.add(k);
  const value = (r, k) => {
    if (k === "method") return r.job.method;
    if (k === "dataset") return r.job.dataset?.name;
    const v = r.job.config?.[k];
    return v === undefined ? "(not set)" : v === null ? "none" : typeof v === "object" ? JSON.stringify(v) : String(v);
  };
  const differing = [...keys].filter((k) => new Set(runs.map((r) => value(r, k))).size > 1);
  if (runs.length < 2) return h("p", { class: "muted" }, "Add another run to see where the configs differ.");
  if (!differing.length) return h("p", { class: "muted" }, "Their configs are the same.");
  return h("div", { class: "table-wrap" }, h("table", { id: "compare-config" },
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Key"), runs.map((r) => h("th", { scope: "col", class: "mono" }, shortId(r.job.id))))),
    h("tbody", {}, differing.map((k) => h("tr", {}, h("th", { scope: "row", class: "mono" }, k), runs.map((r) => h("td", { class: "mono" }, value(r, k))))))));
}
