// Line charts (uPlot, vendored), the embedding scatter plot and attention heatmaps (plain canvases).

import uPlot from "../vendor/uplot/uPlot.esm.js";
import { clear, h } from "./dom.js";

// Okabe-Ito: told apart with the common colour-vision deficiencies.
export const PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#8C6D1F", "#6A3D9A", "#B15928"];
const HEIGHT = 220;
// Inferno, sampled: dark for no attention, bright yellow for the most; it reads in greyscale too.
const HEAT = [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]];

function axisValue(value) {
  if (value === null || value === undefined) return "";
  const abs = Math.abs(value);
  if (abs !== 0 && (abs < 1e-3 || abs >= 1e5)) return value.toExponential(1);
  return String(Number(value.toPrecision(4)));
}

/**
 * A chart in `figure` (which holds its caption): one x array shared by every series (use
 * alignSeries for series sampled at different x). Returns {set(data), append(x, ...ys), drawn}
 * where `drawn` resolves once the first frame is on the canvas.
 */
export function lineChart(figure, { xLabel, series, yLabel = "", empty = "No points yet.", signal }) {
  const box = h("div", { class: "chart-box", role: "img" });
  const note = h("p", { class: "empty" }, empty);
  figure.append(box, note);
  let plot = null;
  let data = null;
  let pending = false;
  let resolveDrawn;
  const drawn = new Promise((resolve) => { resolveDrawn = resolve; });

  const describe = () => {
    const last = data && data[0].length ? data[0].length - 1 : -1;
    const parts = series.map((s, i) => {
      const y = last >= 0 ? data[i + 1][last] : null;
      return `${s.label}${y === null || y === undefined ? "" : ` ${axisValue(y)}`}`;
    });
    box.setAttribute("aria-label", `${figure.querySelector("figcaption")?.textContent || "chart"}: ${data?.[0].length || 0} points against ${xLabel}; last: ${parts.join(", ")}`);
  };

  const create = () => {
    const width = Math.max(280, figure.clientWidth - 20);
    plot = new uPlot({
      width,
      height: HEIGHT,
      scales: { x: { time: false } },
      axes: [
        { label: xLabel, values: (u, ticks) => ticks.map(axisValue), stroke: "#1b1f24", grid: { stroke: "#e6e9ed" } },
        { label: yLabel, values: (u, ticks) => ticks.map(axisValue), stroke: "#1b1f24", grid: { stroke: "#e6e9ed" }, size: 60 },
      ],
      series: [
        { label: xLabel, value: (u, v) => axisValue(v) },
        ...series.map((s, i) => ({
          label: s.label,
          stroke: s.color || PALETTE[i % PALETTE.length],
          width: 1.5,
          spanGaps: true,
          points: { show: s.points ?? false },
          value: (u, v) => axisValue(v),
        })),
      ],
      legend: { live: true },
      cursor: { drag: { x: true, y: false } },
      hooks: { draw: [() => resolveDrawn()] },
    }, data, box);
    const observer = new ResizeObserver(() => {
      const w = Math.max(280, figure.clientWidth - 20);
      if (plot && Math.abs(plot.width - w) > 4) plot.setSize({ width: w, height: HEIGHT });
    });
    observer.observe(figure);
    signal?.addEventListener("abort", () => {
      observer.disconnect();
      plot.destroy();
      plot = null;
    }, { once: true });
  };

  const render = () => {
    pending = false;
    if (signal?.aborted) return;
    const has = data && data[0].length > 0;
    figure.dataset.points = has ? data[0].length : 0;
    note.hidden = has;
    box.hidden = !has;
    if (!has) {
      resolveDrawn();
      return;
    }
    if (!plot) create();
    else plot.setData(data);
    describe();
  };

  return {
    drawn,
    get length() {
      return data ? data[0].length : 0;
    },
    /** Replace the data: [xs, ys1, ys2, ...]. */
    set(next) {
      data = next;
      render();
    },
    /** Add one point; drawn at the next animation frame, however many arrive before it. */
    append(x, ...ys) {
      if (!data) data = [[], ...series.map(() => [])];
      const xs = data[0];
      if (xs.length && x <= xs[xs.length - 1]) return;
      xs.push(x);
      ys.forEach((y, i) => data[i + 1].push(y ?? null));
      if (!pending) {
        pending = true;
        requestAnimationFrame(render);
      }
    },
  };
}

/** Series sampled at different x as one table for uPlot: [[x1, y1], [x2, y2]] -> [xs, y1s, y2s]. */
export function alignSeries(tables) {
  const usable = tables.filter((t) => t[0].length);
  if (!usable.length) return [[], ...tables.map(() => [])];
  if (usable.length === tables.length) return uPlot.join(tables);
  // uPlot.join needs rows in every table: fill the empty ones after joining the rest.
  const joined = uPlot.join(usable);
  let next = 1;
  return [joined[0], ...tables.map((t) => (t[0].length ? joined[next++] : joined[0].map(() => null)))];
}

/**
 * The 2-D embedding of test-set features, coloured by class: `points` are [x, y, label]
 * (label an index into `classes`). Returns the legend beside the canvas.
 */
export function embeddingPlot(container, { points, classes, title }) {
  const size = 420;
  const ratio = window.devicePixelRatio || 1;
  const canvas = h("canvas", { width: size * ratio, height: size * ratio, role: "img",
    "aria-label": `${title}: ${points.length} test images in ${classes.length} classes` });
  canvas.style.width = `${size}px`;
  canvas.style.height = `${size}px`;
  const ctx = canvas.getContext("2d");
  ctx.scale(ratio, ratio);
  const xs = points.map((p) => p[0]);
  const ys = points.map((p) => p[1]);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  const [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  const pad = 12;
  const sx = (x) => pad + ((x - x0) / (x1 - x0 || 1)) * (size - 2 * pad);
  const sy = (y) => size - pad - ((y - y0) / (y1 - y0 || 1)) * (size - 2 * pad);
  ctx.fillStyle = "#ffffff";
  ctx.fillRect(0, 0, size, size);
  ctx.globalAlpha = 0.75;
  for (const [x, y, label] of points) {
    ctx.fillStyle = PALETTE[label % PALETTE.length];
    ctx.beginPath();
    ctx.arc(sx(x), sy(y), 2.6, 0, 2 * Math.PI);
    ctx.fill();
  }
  const legend = h("ul", { class: "legend", "aria-label": "Classes" },
    classes.map((name, i) => h("li", {}, h("span", { class: "swatch", style: `background:${PALETTE[i % PALETTE.length]}` }), String(name))));
  clear(container, canvas, legend);
}

/**
 * An attention map as a heatmap: `map` is rows of non-negative weights, one per patch, coloured
 * from its smallest to its largest. The canvas has `cell` pixels a patch; CSS sets its shown size.
 */
export function attentionHeatmap(map, { cell, label, className }) {
  const rows = map.length;
  const cols = rows ? map[0].length : 0;
  const canvas = h("canvas", { width: cols * cell, height: rows * cell, role: "img", "aria-label": label, class: className });
  const ctx = canvas.getContext("2d");
  const low = Math.min(...map.flat());
  const range = Math.max(...map.flat()) - low || 1;
  map.forEach((row, y) => row.forEach((value, x) => {
    ctx.fillStyle = heat((value - low) / range);
    ctx.fillRect(x * cell, y * cell, cell, cell);
  }));
  return canvas;
}

function heat(t) {
  const x = Math.min(1, Math.max(0, t)) * (HEAT.length - 1);
  const i = Math.min(HEAT.length - 2, Math.floor(x));
  const rgb = HEAT[i].map((a, k) => Math.round(a + (HEAT[i + 1][k] - a) * (x - i)));
  return `rgb(${rgb.join(",")})`;
}
