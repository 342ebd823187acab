// The top of a run's page: its method, data set and status, ids, actions (cancel, run again,
// compare, delete), progress with the latest metrics, and why it failed.

import { api } from "../api.js";
import { ACTIVE, clear, h, number, progressCell, statusBadge, toast, when } from "../dom.js";

/** update(job) shows the job as it is now; onCancelled(job) gets the job a cancel answered. */
export function jobHeader(job, { onCancelled }) {
  const badge = h("span");
  const actions = h("div", { class: "actions" });
  const errorBox = h("p", { class: "error", role: "alert", hidden: true });
  const progressBox = h("div", { class: "progress-box" });
  const element = h(
    "div",
    { class: "job-header" },
    h("h1", {}, `${job.method} on ${job.dataset?.name || "?"} `, badge),
    h(
      "div",
      { class: "meta" },
      h("span", {}, "Job ", h("b", { class: "mono" }, job.id)),
      h("span", {}, "Kind ", h("b", {}, job.kind)),
      h("span", {}, "Backbone ", h("b", {}, job.config?.backbone || "–")),
      h("span", {}, "Submitted ", h("b", {}, when(job.timings.created_at))),
    ),
    actions,
    errorBox,
    progressBox,
  );

  function update(current) {
    job = current;
    clear(badge, statusBadge(job));
    const latest = job.latest_metrics;
    clear(
      progressBox,
      progressCell(job),
      job.status === "queued" && job.waiting_reason
        ? h("p", { class: "muted", role: "status" }, `Not started: ${job.waiting_reason}.`)
        : null,
      latest?.loss !== undefined
        ? h(
            "small",
            { class: "muted" },
            `loss ${number(latest.loss)} · lr ${number(latest.lr)} · ${number(latest.images_per_second, 1)} images/s`,
          )
        : null,
    );
    errorBox.hidden = !job.error;
    errorBox.textContent = job.error ? `Failed: ${job.error}` : "";
    clear(
      actions,
      ACTIVE.has(job.status) && !job.cancel_requested
        ? h("button", { type: "button", class: "danger", onclick: cancel }, "Cancel job")
        : null,
      job.kind === "pretrain"
        ? h("a", { class: "button", href: `/ui/submit?from=${job.id}` }, "Run again with changes")
        : null,
      h("a", { class: "button secondary", href: `/ui/compare?jobs=${job.id}` }, "Compare…"),
      ACTIVE.has(job.status) ? null : deleter,
    );
  }

  // Two clicks: the first arms it for five seconds, the second deletes the job and its files.
  // One button for the page's life, so that an update (each event of the job) keeps it armed.
  function deleteButton() {
    const button = h("button", { type: "button", class: "danger" }, "Delete job");
    let armed = null;
    button.addEventListener("click", async () => {
      if (!armed) {
        button.textContent = "Confirm delete: checkpoints and results too";
        armed = setTimeout(() => {
          armed = null;
          button.textContent = "Delete job";
        }, 5000);
        return;
      }
      clearTimeout(armed);
      armed = null;
      button.disabled = true;
      try {
        await api(`/v1/jobs/${job.id}`, { method: "DELETE" });
        window.location.assign("/ui/");
      } catch (error) {
        toast(`Could not delete: ${error.message}`);
        button.textContent = "Delete job";
        button.disabled = false;
      }
    });
    return button;
  }

  async function cancel(event) {
    event.target.disabled = true;
    try {
      const answer = await api(`/v1/jobs/${job.id}/cancel`, { method: "POST" });
      toast(
        answer.status === "cancelled"
          ? "Cancelled."
          : "Cancel requested: the job stops at its next step and keeps a checkpoint.",
      );
      onCancelled(answer);
    } catch (error) {
      toast(`Could not cancel: ${error.message}`);
      update(job);
    }
  }

  const deleter = deleteButton();
  update(job);
  return { element, update };
}
