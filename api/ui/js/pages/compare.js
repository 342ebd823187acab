// /ui/compare?jobs=a,b,c: runs' loss and kNN curves overlaid by step, epoch or wall time, and
// a table of where their configs differ and what they reached.

import { ApiError, api, settle } from "../api.js";
import { PALETTE, alignSeries, lineChart } from "../charts.js";
import { clear, h, shortId } from "../dom.js";
import { configDifferences, runsTable } from "../components/compareTables.js";
import { loadError } from "../components/loadError.js";
import { navigate } from "../router.js";

const POINTS = 2000;
const AXES = { step: "step", epoch: "epoch", time: "wall time (s)" };

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
        settle(api(`/v1/jobs/${id}/metrics?points=${POINTS}`, { signal })),
      ]);
      return { job, series: metrics.value?.series || {}, error: metrics.error };
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
  const reload = () => navigate(location.pathname + location.search, { replace: true });
  const remove = (job) => navigate(`/ui/compare?jobs=${ids.filter((id) => id !== job.id).join(",")}&x=${axis}`);
  main.append(
    h("fieldset", {}, h("legend", {}, "X axis"), h("div", { class: "actions" }, radios), axisNote),
    runs.filter((r) => r.error).map((r) => loadError(`the curves of ${shortId(r.job.id)}`, r.error, reload)),
    chartsBox,
    h("h2", {}, "Runs"),
    runsTable(runs, { onRemove: remove }),
    h("h2", {}, "Where their configs differ"),
    configDifferences(runs));

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
    const series = runs.map((r, i) => ({ label: r.job.name ? `${r.job.name} (${shortId(r.job.id)})` : `${r.job.method} ${shortId(r.job.id)}`, color: PALETTE[i % PALETTE.length] }));
    lineChart(loss, { xLabel: AXES[axis], series, signal: drawSignal.signal })
      .set(alignSeries(runs.map((r) => curve(r, "loss", axis))));
    lineChart(knn, { xLabel: AXES[axis], series: series.map((s) => ({ ...s, points: true })), signal: drawSignal.signal,
      empty: "None of these runs measured kNN during training (knn_every)." })
      .set(alignSeries(runs.map((r) => curve(r, "knn_top1", axis))));
  }
  draw();
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
