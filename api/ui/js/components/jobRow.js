// A row of the jobs table: select to compare, id, status, method, data set, backbone, progress,
// results, when submitted, and a two-step cancel. fill() redraws only the cells that changed.

import { api } from "../api.js";
import { ACTIVE, clear, h, percent, progressCell, progressOf, shortId, statusBadge, toast, when } from "../dom.js";

export const JOB_COLUMNS = ["Job", "Status", "Method", "Dataset", "Backbone", "Progress"];
const CELLS = 11;

/** onSelect(id, selected) follows the checkbox; onCancelled(job) gets the cancel's answer. */
export function jobRow(job, { selected, onSelect, onCancelled }) {
  const checkbox = h("input", {
    type: "checkbox",
    checked: selected,
    "aria-label": `Select job ${shortId(job.id)} to compare`,
  });
  checkbox.addEventListener("change", () => onSelect(job.id, checkbox.checked));
  const cancel = cancelButton(job.id, onCancelled);
  const cells = Array.from({ length: CELLS }, () => h("td"));
  cells[0].append(checkbox);
  cells[7].className = "num";
  cells[8].className = "num";
  cells[10].append(cancel);
  const row = { tr: h("tr", { dataset: { job: job.id } }, cells), job, fill };
  const signatures = [];

  function fill() {
    const current = row.job;
    const set = (i, signature, ...content) => {
      if (signatures[i] === signature) return;
      signatures[i] = signature;
      clear(cells[i], ...content);
    };
    const tags = Object.entries(current.tags || {}).map(([k, v]) => `${k}:${v}`).join(" ");
    set(
      1,
      `${current.id}${current.name}${tags}`,
      h("a", { href: `/ui/jobs/${current.id}`, class: "mono", title: current.id }, shortId(current.id)),
      current.kind === "eval" ? " (eval)" : "",
      current.name ? h("div", { class: "job-name" }, current.name) : "",
      tags ? h("div", { class: "muted tag-list" }, tags) : "",
    );
    set(2, `${current.status}${current.cancel_requested}`, statusBadge(current));
    set(3, current.method, current.method);
    set(4, current.dataset?.name, current.dataset?.name || "");
    set(5, current.config?.backbone, current.config?.backbone || "");
    const progress = progressOf(current);
    set(6, `${progress.fraction}${progress.text}`, progressCell(current));
    set(7, current.latest_metrics?.knn_top1, percent(current.latest_metrics?.knn_top1));
    set(8, current.latest_metrics?.linear_top1, percent(current.latest_metrics?.linear_top1));
    set(9, current.timings?.created_at, when(current.timings?.created_at));
    cancel.hidden = !ACTIVE.has(current.status) || current.cancel_requested;
  }

  return row;
}

// Two steps, so that a stray click does not stop a day's run.
function cancelButton(jobId, onCancelled) {
  const label = `Cancel job ${shortId(jobId)}`;
  const button = h("button", { type: "button", class: "danger small", "aria-label": label }, "Cancel");
  let armed = null;
  const disarm = () => {
    clearTimeout(armed);
    armed = null;
    button.textContent = "Cancel";
    button.setAttribute("aria-label", label);
  };
  button.addEventListener("click", async () => {
    if (!armed) {
      button.textContent = "Confirm cancel";
      button.setAttribute("aria-label", `Confirm cancel of job ${shortId(jobId)}`);
      armed = setTimeout(disarm, 5000);
      return;
    }
    disarm();
    button.disabled = true;
    try {
      const answer = await api(`/v1/jobs/${jobId}/cancel`, { method: "POST" });
      onCancelled(answer);
      toast(
        answer.status === "cancelled"
          ? `Job ${shortId(jobId)} cancelled.`
          : `Job ${shortId(jobId)} stops at its next step.`,
      );
    } catch (error) {
      toast(`Could not cancel ${shortId(jobId)}: ${error.message}`);
    }
    button.disabled = false;
  });
  return button;
}
