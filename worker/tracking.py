"""Tracking sinks: besides the service, a worker may log each job to an MLflow tracking server
and to Weights & Biases.

Which sinks a job gets: the service's settings (``CSSL_MLFLOW_*``, ``CSSL_WANDB_*``), changed by
the job's own ``tracking`` (kept in its config under ``TRACKING_KEY``; ``false`` turns a sink
off). Every call reaches the sinks from one background thread (:class:`Tracking`), so a slow or
dead server never holds training: per-step metrics wait in memory and go out in batches every
``FLUSH_EVERY`` seconds. A sink that raises is dropped for the rest of the attempt, and the job
gets one ``warning`` event that names it and says why (:meth:`Tracking.take_failures`).

A later attempt of a job continues the same runs: W&B's run id is the job id, and the MLflow run
is found again by its ``cssl.job_id`` tag.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from store.models import TRACKING_KEY
from store.settings import Settings

if TYPE_CHECKING:
    from cssl_core.evaluation import EvalResult
    from worker.runner import ClaimedJob

log = logging.getLogger(__name__)
internal_log = logging.getLogger("worker.runner.internal")  # tracebacks: the worker's own log only


class Sink(Protocol):
    """Where a job's run is mirrored. ``status`` is how the attempt ended: succeeded, failed,
    cancelled, released (back to the queue: a later attempt continues) or lost (another attempt
    holds the job now)."""

    name: str

    def start(self, job: ClaimedJob, config: dict[str, Any]) -> None: ...
    def log_metrics(self, step: int, values: dict[str, float | None]) -> None: ...
    def log_evaluation(self, result: EvalResult) -> None: ...
    def log_artifact(self, path: Path) -> None: ...
    def flush(self) -> None: ...
    def finish(self, status: str) -> None: ...


def sinks_for(settings: Settings, job: ClaimedJob) -> list[Sink]:
    """The service's sinks with the job's overrides applied."""
    overrides = job.config.get(TRACKING_KEY) or {}
    sinks: list[Sink] = []
    mlflow = overrides.get("mlflow", {})
    if mlflow is not False and (uri := mlflow.get("tracking_uri") or settings.mlflow_tracking_uri):
        sinks.append(MlflowSink(uri, mlflow.get("experiment") or settings.mlflow_experiment))
    wandb = overrides.get("wandb", {})
    if wandb is not False and (project := wandb.get("project") or settings.wandb_project):
        sinks.append(WandbSink(project, wandb.get("mode") or settings.wandb_mode, settings.wandb_dir))
    return sinks


def run_params(job: ClaimedJob) -> dict[str, Any]:
    """The job's resolved config, protocol parameters flattened (``knn.k``), without its tracking."""
    params: dict[str, Any] = {}
    for key, value in job.config.items():
        if key == TRACKING_KEY:
            continue
        if isinstance(value, dict):
            params.update({f"{key}.{name}": inner for name, inner in value.items()})
        else:
            params[key] = value
    return params


class Tracking:
    """A job's sinks behind a queue that one daemon thread drains; with no sinks, every call is free."""

    FLUSH_EVERY = 5.0  # seconds between batches of per-step metrics
    FINISH_WITHIN = 60.0  # seconds the end of an attempt waits for its sinks

    def __init__(self, sinks: list[Sink]):
        self.sinks = list(sinks)
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._failures: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="tracking", daemon=True)
        if self.sinks:
            self._thread.start()

    @classmethod
    def for_job(cls, settings: Settings, job: ClaimedJob) -> Tracking:
        return cls(sinks_for(settings, job))

    def start(self, job: ClaimedJob) -> None:
        self._put("start", job, run_params(job))

    def log_metrics(self, step: int, values: dict[str, float | None]) -> None:
        self._put("log_metrics", step, dict(values))

    def log_evaluation(self, result: EvalResult) -> None:
        self._put("log_evaluation", result)

    def log_artifact(self, path: Path) -> None:
        self._put("log_artifact", Path(path))

    def finish(self, status: str) -> None:
        """Ends the sinks' runs, waiting up to ``FINISH_WITHIN`` seconds; past that they finish in
        the background and what goes wrong there is only in the worker's log."""
        if not self.sinks:
            return
        self._put("finish", status)
        self._calls.put(None)
        self._thread.join(self.FINISH_WITHIN)
        if self._thread.is_alive():
            log.warning("the tracking servers took over %.0f s to finish; not waiting for them", self.FINISH_WITHIN)

    def take_failures(self) -> list[tuple[str, str]]:
        """``(sink, message)`` for each sink that failed since the last call."""
        with self._lock:
            failures, self._failures = self._failures, []
        return failures

    def _put(self, method: str, *args: Any) -> None:
        if self.sinks:
            self._calls.put((method, args))

    def _loop(self) -> None:
        flush_at = None  # when the metrics waiting in the sinks go out
        while True:
            try:
                call = self._calls.get(timeout=None if flush_at is None else max(0.0, flush_at - time.monotonic()))
            except queue.Empty:
                self._each("flush")
                flush_at = None
                continue
            if call is None:
                return
            method, args = call
            self._each(method, *args)
            if method == "log_metrics":
                flush_at = flush_at or time.monotonic() + self.FLUSH_EVERY
            elif method != "finish":
                self._each("flush")
                flush_at = None

    def _each(self, method: str, *args: Any) -> None:
        for sink in list(self.sinks):
            try:
                getattr(sink, method)(*args)
            except Exception as exc:
                self.sinks.remove(sink)
                what = method.removeprefix("log_")
                message = (
                    f"{sink.name} tracking failed on {what} ({_reason(exc)}); "
                    f"nothing more goes to {sink.name} for the rest of this attempt"
                )
                log.warning("%s", message)
                internal_log.warning("tracking sink %s failed:\n%s", sink.name, traceback.format_exc())
                with self._lock:
                    self._failures.append((sink.name, message))


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return first if len(first) <= 300 else first[:297] + "..."


MLFLOW_STATUS = {"succeeded": "FINISHED", "failed": "FAILED", "cancelled": "KILLED", "released": "SCHEDULED"}


class MlflowSink:
    """One MLflow run per job, through ``MlflowClient`` (never the fluent API's process-wide
    active run: a worker process runs many jobs). Params: the resolved config; tags: the job's
    id, kind, method, dataset, owner and its own tags; run name: the job's name, else its id."""

    name = "mlflow"
    MAX_METRICS = 1000  # per log_batch request (MLflow's limit)
    MAX_PARAMS = 100

    def __init__(self, tracking_uri: str, experiment: str):
        self.tracking_uri, self.experiment = tracking_uri, experiment
        self.run_id: str | None = None
        self.step = 0
        self._metrics: list = []

    def start(self, job: ClaimedJob, config: dict[str, Any]) -> None:
        # MLflow retries a failed request 7 times over minutes by default; a tracking server that is
        # down should cost the job one warning soon, not hold its end (the workers' environment may say otherwise).
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        from mlflow import MlflowClient
        from mlflow.entities import Param

        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        experiment_id = self._experiment_id()
        self.run_id = self._earlier_run(experiment_id, job.id) if job.attempt > 1 else None
        if self.run_id is not None:
            self.client.update_run(self.run_id, status="RUNNING")
            self.client.set_tag(self.run_id, "cssl.attempt", str(job.attempt))
            return
        tags = {
            "cssl.job_id": job.id,
            "cssl.kind": job.kind,
            "cssl.method": job.method,
            "cssl.dataset": job.dataset,
            "cssl.owner": job.owner,
            "cssl.attempt": str(job.attempt),
            **job.tags,
        }
        run = self.client.create_run(experiment_id, tags=tags, run_name=job.name or job.id)
        self.run_id = run.info.run_id
        params = [Param(key, str(value)[:6000]) for key, value in config.items()]
        for first in range(0, len(params), self.MAX_PARAMS):
            self.client.log_batch(self.run_id, params=params[first : first + self.MAX_PARAMS])

    def _experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException

        experiment = self.client.get_experiment_by_name(self.experiment)
        if experiment is not None:
            return experiment.experiment_id
        try:
            return self.client.create_experiment(self.experiment)
        except MlflowException:  # another worker created it meanwhile
            experiment = self.client.get_experiment_by_name(self.experiment)
            if experiment is None:
                raise
            return experiment.experiment_id

    def _earlier_run(self, experiment_id: str, job_id: str) -> str | None:
        runs = self.client.search_runs([experiment_id], filter_string=f"tags.`cssl.job_id` = '{job_id}'", max_results=1)
        return runs[0].info.run_id if runs else None

    def log_metrics(self, step: int, values: dict[str, float | None]) -> None:
        self.step = step
        self._add(values)

    def log_evaluation(self, result: EvalResult) -> None:
        # At the training step it followed, so it plots on the same axis as the loss.
        self._add({f"{result.protocol}_top1": result.top1, f"{result.protocol}_top5": result.top5})

    def _add(self, values: dict[str, float | None]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._metrics += [Metric(key, float(v), now, self.step) for key, v in values.items() if v is not None]

    def flush(self) -> None:
        while self._metrics:
            batch = self._metrics[: self.MAX_METRICS]
            self.client.log_batch(self.run_id, metrics=batch)
            del self._metrics[: len(batch)]

    def log_artifact(self, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path="checkpoints")

    def finish(self, status: str) -> None:
        self.flush()
        if status == "lost":  # the run is the next attempt's now
            return
        if status == "released":
            self.client.update_run(self.run_id, status=MLFLOW_STATUS[status])
        else:
            self.client.set_terminated(self.run_id, status=MLFLOW_STATUS[status])


class WandbSink:
    """One W&B run per job, its id the job's id (``resume="allow"``: a later attempt continues it).
    Offline, the run is only written under ``directory``; ``wandb sync`` uploads it later."""

    name = "wandb"

    def __init__(self, project: str, mode: str, directory: Path):
        self.project, self.mode, self.directory = project, mode, Path(directory)
        self.step = 0

    def start(self, job: ClaimedJob, config: dict[str, Any]) -> None:
        import wandb

        self.directory.mkdir(parents=True, exist_ok=True)
        self.job_id = job.id
        self.run = wandb.init(
            project=self.project,
            mode=self.mode,
            dir=str(self.directory),
            id=job.id,
            resume="allow",
            name=job.name or job.id,
            job_type=job.kind,
            config=config,
            tags=[job.method, job.dataset, *(f"{key}:{value}"[:64] for key, value in job.tags.items())],
            reinit="create_new",  # one run per job, and never the previous job's
            settings=wandb.Settings(
                silent=True,
                console="off",  # the worker's output is the job log's, not W&B's
                x_disable_stats=True,
                disable_git=True,
                save_code=False,
                x_save_requirements=False,
            ),
        )

    def log_metrics(self, step: int, values: dict[str, float | None]) -> None:
        self.step = step
        self.run.log({key: value for key, value in values.items() if value is not None}, step=step)

    def log_evaluation(self, result: EvalResult) -> None:
        values = {f"{result.protocol}_top1": result.top1, f"{result.protocol}_top5": result.top5}
        self.run.log({key: value for key, value in values.items() if value is not None}, step=self.step)

    def log_artifact(self, path: Path) -> None:
        import wandb

        # A reference to the service's file, not a copy of a checkpoint that may weigh gigabytes.
        artifact = wandb.Artifact(f"checkpoint-{self.job_id}", type="model")
        artifact.add_reference(Path(path).resolve().as_uri(), checksum=False)
        self.run.log_artifact(artifact)

    def flush(self) -> None:
        pass  # run.log hands the values to W&B's own process, which sends them in the background

    def finish(self, status: str) -> None:
        if status in ("released", "lost"):
            self.run.mark_preempting()
        self.run.finish(exit_code=0 if status == "succeeded" else 1)
