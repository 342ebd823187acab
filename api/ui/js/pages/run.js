// /ui/jobs/{id}: one run. Its charts (grown from its progress events while it trains), evaluations,
// checkpoints with their views (an embedding, a ViT's attention maps), config, provenance, events and log;
// each part a component of its own, fed here from the job's event stream.

import { api, settle, sleep, watchJob } from "../api.js";
import { ACTIVE, clear, debounce, every, h, shortId } from "../dom.js";
import { checkpointsTable } from "../components/checkpointsTable.js";
import { checkpointView, viewsFor } from "../components/checkpointView.js";
import { configView } from "../components/configView.js";
import { evaluationsTable } from "../components/evaluationsTable.js";
import { eventList } from "../components/eventList.js";
import { jobHeader } from "../components/jobHeader.js";
import { loadError } from "../components/loadError.js";
import { logTail } from "../components/logTail.js";
import { provenanceView } from "../components/provenanceView.js";
import { requestMetrics, trainingCharts } from "../components/trainingCharts.js";

const LOG_POLL_MS = 5000;

export async function render(main, { params: [jobId], signal }) {
  // Asked for at once, beside the job: the series is the slowest answer.
  const firstMetrics = requestMetrics(jobId, signal);
  const protocolsAsked = settle(api("/v1/protocols", { signal }));
  let job = await api(`/v1/jobs/${jobId}`, { signal });
  document.title = `${job.method} ${shortId(job.id)} · cssl`;
  const protocols = await protocolsAsked;
  if (signal.aborted) return;

  const views = (protocols.value ? viewsFor(job, protocols.value) : []).map((v) => checkpointView(job, v, { signal }));
  const header = jobHeader(job, { onCancelled: (answer) => header.update((job = { ...job, ...answer })) });
  const charts = trainingCharts(job.id, { signal });
  const evaluations = evaluationsTable(job.id, { signal });
  const showViews = (checkpoint) => views.forEach((view) => view.show(checkpoint));
  const checkpoints = checkpointsTable(job.id, { signal, views: views.map((v) => v.what), onShow: showViews });
  const provenance = provenanceView(job);
  const events = eventList();
  const log = logTail(job.id, { signal });
  clear(
    main,
    header.element,
    charts.element,
    evaluations.element,
    checkpoints.element,
    protocols.error
      ? h("div", {}, loadError("the evaluation protocols (for the views of this run's checkpoints)", protocols.error))
      : null,
    views.map((v) => v.element),
    configView(job),
    provenance.element,
    events.element,
    log.element,
  );

  let viewed = false;
  async function loadCheckpoints() {
    const list = await checkpoints.load();
    if (!viewed && list.length) {
      viewed = true;
      showViews(list.find((c) => c.final) || list[0]);
    }
  }

  const checkpointsChanged = debounce(loadCheckpoints, 400);
  const evaluationsChanged = debounce(() => evaluations.load(ACTIVE.has(job.status)), 400);
  const finished = debounce(async () => {
    try {
      job = await api(`/v1/jobs/${job.id}`, { signal });
      header.update(job);
      provenance.update(job);
    } catch {
      // the header keeps what the events said; the parts below say what failed
    }
    await Promise.all([evaluations.load(false), loadCheckpoints(), log.load()]);
  }, 400);
  // The worker writes an attempt's provenance just after it claims the job: read it then, and
  // again a few times while the job runs without one.
  const started = debounce(async () => {
    for (let tries = 0; tries < 5; tries++) {
      try {
        const current = await api(`/v1/jobs/${job.id}`, { signal });
        provenance.update(current);
        if (current.provenance || !ACTIVE.has(current.status)) return;
        await sleep(2000, signal);
      } catch {
        return; // shown once the job ends, when the page reads the job again
      }
    }
  }, 400);

  function onEvent(event) {
    const { event: type, data } = event;
    events.add(event);
    if (type === "progress") {
      if ((data.step ?? 0) >= (job.progress?.step ?? 0)) {
        job.progress = { ...job.progress, ...data };
        job.latest_metrics = {
          ...job.latest_metrics,
          loss: data.loss,
          lr: data.lr,
          images_per_second: data.images_per_second,
        };
        header.update(job);
      }
      charts.progress(data);
    } else if (type === "state") {
      job.status = data.status;
      if (data.error) job.error = data.error;
      header.update(job);
      if (data.status === "running") started();
      if (!ACTIVE.has(data.status)) finished();
    } else if (type === "cancel_requested") {
      job.cancel_requested = true;
      header.update(job);
    } else if (type === "checkpoint") {
      checkpointsChanged();
    } else if (type === "evaluation") {
      if (data.checkpoint_id === null) charts.knn(data.epoch, data.top1); // periodic: the kNN during training
      evaluationsChanged();
    }
  }

  await charts.load(firstMetrics);
  await Promise.all([evaluations.load(ACTIVE.has(job.status)), loadCheckpoints()]);
  watchJob(job.id, { signal, onEvent });
  every(
    LOG_POLL_MS,
    async () => {
      if (ACTIVE.has(job.status) || !log.loaded()) await log.load();
    },
    signal,
  );
}
