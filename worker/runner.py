"""Run one job: claim it, call cssl_core, record what it reports.

Everything the core reports arrives through its callbacks and is written at once, in short
transactions, so the API can show progress, metrics and checkpoints while the job runs. A
heartbeat thread keeps the claim alive and brings back the cancel flag, so the training
loop's ``should_stop`` costs nothing on the hot path. Every write is retried while the
database is unreachable (a Postgres restart holds the job for its duration and costs nothing).
"""

from __future__ import annotations

import logging
import os
import threading
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

from store import data_roots, jobs, records
from store.db import retry_transient, session_scope
from store.models import Job
from store.settings import Settings
from worker.run_time import RunTimeLimit

log = logging.getLogger(__name__)


# Set when the worker process is asked to stop (warm shutdown): the running job checkpoints
# at its next step and goes back to the queue instead of holding the worker until it ends.
SHUTTING_DOWN = threading.Event()
RELEASED = "released"


class LeaseLost(Exception):
    """The sweeper gave this job to another attempt; this one stops without writing."""


@dataclass(frozen=True)
class ClaimedJob:
    """What the runner needs of the job row, read once at claim time."""

    id: str
    kind: str
    method: str
    dataset: str
    dataset_path: str | None
    config: dict[str, Any]
    evaluate: list[str]
    attempt: int
    source_checkpoint: Path | None
    source_checkpoint_id: int | None
    resume_from: Path | None
    resume_checkpoint_id: int | None
    resume_is_final: bool


class Heartbeat:
    """Writes ``heartbeat_at`` every ``interval`` seconds and reads back the cancel flag."""

    def __init__(self, settings: Settings, job_id: str, attempt: int):
        self.settings, self.job_id, self.attempt = settings, job_id, attempt
        self.cancel_requested = threading.Event()
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{job_id}", daemon=True)
        self.run_time = RunTimeLimit(settings.max_run_seconds)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def beat(self) -> None:
        with session_scope(self.settings.database_url) as session:
            ours, cancel = jobs.heartbeat(session, self.job_id, self.attempt)
        if not ours:
            self.lost.set()
        if cancel:
            self.cancel_requested.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_interval):
            try:
                self.beat()
            except Exception as exc:  # the database may be back at the next beat
                log.warning("heartbeat for job %s failed: %s", self.job_id, exc)

    def should_stop(self) -> bool:
        if self.lost.is_set():
            raise LeaseLost(self.job_id)
        return self.cancel_requested.is_set() or SHUTTING_DOWN.is_set() or self.run_time.passed()

    def stopped_status(self) -> str:
        """Why ``should_stop`` said so: the user cancelled, the job ran out of time, or the worker is going away."""
        if self.cancel_requested.is_set():
            return "cancelled"
        return "failed" if self.run_time.passed() else RELEASED


class Recorder:
    """The core's callbacks, each written in its own short transaction."""

    def __init__(self, settings: Settings, job: ClaimedJob, heartbeat: Heartbeat):
        self.settings, self.job, self.heartbeat = settings, job, heartbeat

    def _session(self):
        return session_scope(self.settings.database_url)

    def _write(self, what: str, write):
        return retry_transient(write, what=f"recording the {what} of job {self.job.id}")

    def on_progress(self, progress) -> None:
        point = {
            "epoch": progress.epoch,
            "epochs": progress.epochs,
            "step": progress.step,
            "total_steps": progress.total_steps,
            "loss": progress.loss,
            "lr": progress.lr,
            "images_per_second": progress.images_per_second,
            "elapsed": progress.elapsed,
        }
        values = {"loss": progress.loss, "lr": progress.lr, "images_per_second": progress.images_per_second}
        values.update({name: float(value) for name, value in (progress.stats or {}).items()})

        def write() -> None:
            with self._session() as session:
                if not jobs.record_progress(session, self.job.id, self.job.attempt, point, values):
                    self.heartbeat.lost.set()
                    return
                records.add_metric_point(session, self.job.id, progress.step, progress.epoch, values)

        self._write("progress", write)

    def on_checkpoint(self, info) -> int:
        path = Path(info.path)
        checkpoint_id = self._write("checkpoint", lambda: self._record_checkpoint(info, path))
        log.info("checkpoint %s (epoch %d, step %d)", path.name, info.epoch, info.step)
        return checkpoint_id

    def _record_checkpoint(self, info, path: Path) -> int:
        with self._session() as session:
            checkpoint = records.record_checkpoint(
                session,
                self.job.id,
                self.relative(path),
                epoch=info.epoch,
                step=info.step,
                final=info.final,
                size_bytes=path.stat().st_size,
            )
            records.add_event(
                session,
                self.job.id,
                "checkpoint",
                {"id": checkpoint.id, "epoch": info.epoch, "step": info.step, "final": info.final},
            )
            return checkpoint.id

    def on_evaluation(self, result, checkpoint_id: int | None = None) -> None:
        evaluation = self._write("evaluation", lambda: self._record_evaluation(result, checkpoint_id))
        at = "" if evaluation.epoch is None else f" at epoch {evaluation.epoch}"
        if evaluation.top1 is None:  # no accuracy: an embedding
            log.info("%s: %d test images%s", evaluation.protocol, evaluation.num_test, at)
        else:
            log.info("%s top-1 %.2f%%%s", evaluation.protocol, evaluation.top1, at)

    def _record_evaluation(self, result, checkpoint_id: int | None):
        data = result.to_dict()
        with self._session() as session:
            evaluation = records.record_evaluation(session, self.job.id, checkpoint_id, data)
            event = {"id": evaluation.id, "protocol": evaluation.protocol, "top1": evaluation.top1,
                     "top5": evaluation.top5, "epoch": evaluation.epoch, "checkpoint_id": checkpoint_id}
            records.add_event(session, self.job.id, "evaluation", event)
            if evaluation.top1 is not None:
                jobs.update_latest_metrics(
                    session, self.job.id, {f"{evaluation.protocol}_top1": evaluation.top1, f"{evaluation.protocol}_top5": evaluation.top5}
                )
            return evaluation

    def relative(self, path: Path) -> str:
        return str(Path(path).resolve().relative_to(self.settings.artifact_root))


def run_job(settings: Settings, job_id: str, worker_name: str) -> str | None:
    """Claim and run ``job_id``; returns its final status, or None if it was not ours to run."""
    claimed = retry_transient(lambda: _claim(settings, job_id, worker_name), what=f"claiming job {job_id}")
    if claimed is None:
        log.info("job %s is not queued (a duplicate message, or cancelled); nothing to do", job_id)
        return None
    job, candidates = claimed
    job_dir = settings.artifact_root / "jobs" / job.id
    job_dir.mkdir(parents=True, exist_ok=True)
    # cssl_core's decoded-dataset cache goes to the service's own folder, never a user's path.
    os.environ["CSSL_CACHE_DIR"] = str(settings.cache_dir)
    # The heartbeat starts before anything slow (reading checkpoints, the first import of torch).
    with _job_log(job_dir / "job.log"), Heartbeat(settings, job.id, job.attempt) as heartbeat:
        log.info("job %s attempt %d on %s: %s %s on %s", job.id, job.attempt, worker_name, job.kind, job.method, job.dataset)
        if job.kind == "pretrain" and job.attempt > 1:
            job = retry_transient(lambda: _resume_point(settings, job, candidates), what=f"choosing where job {job.id} resumes")
        recorder = Recorder(settings, job, heartbeat)
        status, error, result = _run(settings, job, job_dir, recorder, heartbeat)
        if status == "failed" and error is None:
            error = heartbeat.run_time.message()
        if status is None:
            log.warning("job %s was given to another attempt; stopping without recording", job.id)
            return None

        def write() -> None:
            with session_scope(settings.database_url) as session:
                if status == RELEASED:
                    jobs.release_job(session, job.id, job.attempt, f"worker {worker_name} shut down; resumes from its last checkpoint")
                else:
                    jobs.finish_job(session, job.id, job.attempt, status, error=error, result=result)

        retry_transient(write, what=f"recording the end of job {job.id}")
        log.info("job %s %s%s", job.id, status, f": {error}" if error else "")
        return status


def _run(settings, job: ClaimedJob, job_dir: Path, recorder: Recorder, heartbeat: Heartbeat):
    from cssl_core.errors import CsslError

    try:
        data = _job_data(settings, job)
        if job.kind == "pretrain":
            return _pretrain(settings, job, data, job_dir, recorder, heartbeat)
        return _evaluate_only(job, data, recorder, heartbeat)
    except LeaseLost:
        return None, None, None
    except CsslError as exc:
        log.error("%s", exc)
        return "failed", str(exc), None
    except Exception as exc:
        log.error("%s", traceback.format_exc())
        message = f"internal error ({type(exc).__name__}: {exc}); the traceback is in GET /v1/jobs/{job.id}/logs"
        return "failed", message, None


def _job_data(settings: Settings, job: ClaimedJob) -> Path | None:
    """The job's data path checked again, now: a link may have changed since the API checked it."""
    from cssl_core.errors import DataError

    if job.dataset_path is None:
        return None
    path = data_roots.resolve_data_path(settings, job.dataset_path, uploads=True)
    if path is None:
        raise DataError("the job's data is no longer readable by the service (moved, deleted, or now outside its data "
                        "folders); submit the job again with a path under them, or an upload")
    return path


def _pretrain(settings: Settings, job: ClaimedJob, data: Path | None, job_dir: Path, recorder: Recorder,
              heartbeat: Heartbeat):
    from cssl_core.config import build_config
    from cssl_core.data import load_dataset
    from cssl_core.evaluation import PROTOCOL_PARAMS
    from cssl_core.train import pretrain

    config = build_config(job.method, {k: v for k, v in job.config.items() if k not in PROTOCOL_PARAMS})
    result: dict[str, Any] | None = None  # None: keep what the training attempt recorded
    if job.resume_is_final:
        log.info("training had finished before the worker was lost; going on with the evaluations")
        checkpoint, checkpoint_id = job.resume_from, job.resume_checkpoint_id
    else:
        if job.resume_from is not None:
            log.info("resuming from %s", recorder.relative(job.resume_from))
        checkpoint_ids: dict[Path, int] = {}

        def on_checkpoint(info) -> None:
            checkpoint_ids[Path(info.path).resolve()] = recorder.on_checkpoint(info)

        outcome = pretrain(
            config,
            job_dir,
            on_progress=recorder.on_progress,
            should_stop=heartbeat.should_stop,
            on_checkpoint=on_checkpoint,
            on_evaluation=recorder.on_evaluation,
            resume_from=job.resume_from,
            progress_every=settings.progress_every,
            # From the path checked above, not from the config (a resumed one holds an older path).
            dataset=load_dataset(config.dataset, data) if data is not None else None,
        )
        checkpoint = Path(outcome.checkpoint).resolve()
        result = {
            "checkpoint": recorder.relative(checkpoint),
            "steps": outcome.steps,
            "epochs_completed": outcome.epochs_completed,
            "stopped": outcome.stopped,
            "train_seconds": outcome.train_seconds,
            "images_per_second": outcome.images_per_second,
            "final_loss": outcome.final_loss,
        }
        if outcome.stopped == "cancelled":
            return heartbeat.stopped_status(), None, result
        # Kept now, so that an attempt that only has the evaluations left still has it.
        def write() -> None:
            with session_scope(settings.database_url) as session:
                jobs.record_result(session, job.id, job.attempt, result)

        retry_transient(write, what=f"recording the result of job {job.id}")
        checkpoint_id = checkpoint_ids[checkpoint]  # pretrain reports its last checkpoint
    _run_evaluations(job, checkpoint, checkpoint_id, config.dataset, data, config.device, recorder, heartbeat,
                     _protocol_overrides(job))
    if heartbeat.should_stop():
        return heartbeat.stopped_status(), None, result
    return "succeeded", None, result


def _evaluate_only(job: ClaimedJob, data: Path | None, recorder: Recorder, heartbeat: Heartbeat):
    device = job.config.get("device", "auto")
    _run_evaluations(job, job.source_checkpoint, job.source_checkpoint_id, job.dataset, data, device,
                     recorder, heartbeat, _protocol_overrides(job))
    if heartbeat.should_stop():
        return heartbeat.stopped_status(), None, None
    return "succeeded", None, None


def _protocol_overrides(job: ClaimedJob) -> dict[str, dict[str, Any]]:
    """Protocol parameters stored beside the run's keys in the job's config ({"knn": {"k": 20}})."""
    return {protocol: job.config.get(protocol) or {} for protocol in job.evaluate}


def _run_evaluations(job, checkpoint, checkpoint_id, dataset, data, device, recorder, heartbeat, params) -> None:
    from cssl_core.evaluation import evaluate_checkpoint

    with session_scope(recorder.settings.database_url) as session:
        done = {e.protocol for e in records.final_evaluations(session, job.id) if e.checkpoint_id == checkpoint_id}
    for protocol in job.evaluate:
        if protocol in done:
            continue  # recorded by an earlier attempt
        if heartbeat.should_stop():
            return
        log.info("evaluating %s (%s)", protocol, recorder.relative(checkpoint))
        result = evaluate_checkpoint(Path(checkpoint), protocol, dataset=dataset, data=data, device=device, **params.get(protocol, {}))
        recorder.on_evaluation(result, checkpoint_id)


def _claim(settings: Settings, job_id: str, worker_name: str) -> tuple[ClaimedJob, list[records.Checkpoint]] | None:
    """The claimed job, and its checkpoints newest first (where a later attempt may resume)."""
    with session_scope(settings.database_url) as session:
        job: Job | None = jobs.claim_job(session, job_id, worker_name, settings.max_running_jobs)
        if job is None:
            return None
        source = session.get(records.Checkpoint, job.source_checkpoint_id) if job.source_checkpoint_id else None
        candidates = records.checkpoints_newest_first(session, job.id) if job.kind == "pretrain" and job.attempt > 1 else []
        claimed = ClaimedJob(
            id=job.id,
            kind=job.kind,
            method=job.method,
            dataset=job.dataset,
            dataset_path=job.dataset_path,
            config=dict(job.config),
            evaluate=list(job.evaluate),
            attempt=job.attempt,
            source_checkpoint=settings.artifact_root / source.path if source else None,
            source_checkpoint_id=source.id if source else None,
            resume_from=None,
            resume_checkpoint_id=None,
            resume_is_final=False,
        )
        return claimed, candidates


def _resume_point(settings: Settings, job: ClaimedJob, candidates: list[records.Checkpoint]) -> ClaimedJob:
    """Resume from the newest checkpoint that loads; what the lost attempts recorded past it goes."""
    resume = _newest_loadable(settings, candidates)
    step, epoch = (resume.step, resume.epoch) if resume else (0, 0)
    with session_scope(settings.database_url) as session:
        jobs.set_resume_point(session, job.id, job.attempt, step)
        records.drop_metrics_after(session, job.id, step, epoch)
    if resume is None:
        return job
    return replace(job, resume_from=settings.artifact_root / resume.path, resume_checkpoint_id=resume.id,
                   resume_is_final=resume.final)


def _newest_loadable(settings: Settings, candidates: list[records.Checkpoint]) -> records.Checkpoint | None:
    """The newest checkpoint whose file is there and loads; missing, truncated or corrupt
    files (a worker killed while writing one, a disk that lost it) are skipped with a warning."""
    from cssl_core.train.checkpoint import load_checkpoint

    for checkpoint in candidates:
        try:
            load_checkpoint(settings.artifact_root / checkpoint.path)
        except Exception as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log.warning("checkpoint %s (step %d) cannot be resumed from (%s); trying an older one",
                        checkpoint.path, checkpoint.step, reason)
            continue
        return checkpoint
    return None


@contextmanager
def _job_log(path: Path) -> Iterator[None]:
    """Everything logged while the job runs (ours and cssl_core's) also goes to its log file."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
        handler.close()
