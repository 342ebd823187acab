"""Run one job: claim it, call cssl_core, record what it reports.

Everything the core reports arrives through its callbacks and is written in short transactions,
so the API can show progress, metrics and checkpoints while the job runs. A heartbeat thread
keeps the claim alive and brings back the cancel flag, so the training loop's ``should_stop``
costs nothing on the hot path.

While the database is unreachable, progress points wait in memory (``CSSL_PROGRESS_BUFFER`` of
them; then training waits) and are written in order once it is back; a checkpoint or an
evaluation waits for it, for up to ``CSSL_DATABASE_RETRY_WINDOW`` seconds. Past that the
attempt stops and, once the database answers again, writes what it kept and gives the job back
to the queue: the next attempt resumes from the newest checkpoint, and an outage never fails a
job nor counts against ``CSSL_MAX_ATTEMPTS``.
"""

from __future__ import annotations

import enum
import logging
import os
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from store import data_roots, jobs, records
from store.db import DatabaseUnavailable, is_transient, transaction
from store.logs import job_context
from store.models import TRACKING_KEY, Job, JobTag
from store.settings import Settings
from worker import metrics
from worker.run_time import RunTimeLimit
from worker.tracking import Tracking

log = logging.getLogger(__name__)
# Tracebacks: the worker's own log only, never the job's log that its owner reads.
internal_log = logging.getLogger(__name__ + ".internal")
T = TypeVar("T")


# Set when the worker process is asked to stop (warm shutdown): the running job checkpoints
# at its next step and goes back to the queue instead of holding the worker until it ends.
SHUTTING_DOWN = threading.Event()


class Ending(enum.Enum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    RELEASED = "released"  # back to the queue; the next attempt resumes from the last checkpoint
    # Part of the attempt was lost (a rank of a run on several processes died or hung): back to
    # the queue like a lost worker's job, counted against CSSL_MAX_ATTEMPTS like one.
    RETRIED = "retried"
    LOST = "lost"  # the sweeper gave the job to another attempt: nothing more is written


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended. ``message``: for a failure, what failed and what to do (the job's
    ``error``); for a release, why (the state event's message). ``result`` None keeps what the
    training recorded."""

    ending: Ending
    message: str | None = None
    result: dict[str, Any] | None = None

    @classmethod
    def succeeded(cls, result: dict[str, Any] | None) -> Outcome:
        return cls(Ending.SUCCEEDED, result=result)

    @classmethod
    def failed(cls, message: str) -> Outcome:
        return cls(Ending.FAILED, message)

    @classmethod
    def released(cls, why: str, result: dict[str, Any] | None = None) -> Outcome:
        return cls(Ending.RELEASED, why, result)

    @classmethod
    def retried(cls, why: str) -> Outcome:
        return cls(Ending.RETRIED, why)

    @classmethod
    def lost(cls) -> Outcome:
        return cls(Ending.LOST)


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
    resources: dict[str, Any] | None = None  # what the job asked for (``dispatch.routing``)
    # For the tracking sinks' tags.
    owner: str = ""
    name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


class Heartbeat:
    """Writes ``heartbeat_at`` every ``interval`` seconds and reads back the cancel flag."""

    def __init__(self, settings: Settings, job_id: str, attempt: int):
        self.settings, self.job_id, self.attempt = settings, job_id, attempt
        self.cancel_requested = threading.Event()
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{job_id}", daemon=True)
        self.run_time = RunTimeLimit(settings.max_run_seconds)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def beat(self) -> None:
        ours, cancel = transaction(
            self.settings.database_url,
            lambda s: jobs.heartbeat(s, self.job_id, self.attempt),
            what=f"the heartbeat of job {self.job_id}",
            within=0,
        )
        if not ours:
            self.lost.set()
        if cancel:
            self.cancel_requested.set()

    def _loop(self) -> None:
        failing_since = None
        while not self._stop.wait(self.settings.heartbeat_interval):
            try:
                self.beat()
            except Exception as exc:  # the database may be back at the next beat
                if failing_since is None:
                    failing_since = time.monotonic()
                    log.warning("heartbeat for job %s failed (%s); beating on", self.job_id, _reason(exc))
                continue
            if failing_since is not None:
                log.info("heartbeat for job %s is back after %.0f s", self.job_id, time.monotonic() - failing_since)
                failing_since = None

    def should_stop(self) -> bool:
        if self.lost.is_set():
            raise LeaseLost(self.job_id)
        return self.cancel_requested.is_set() or SHUTTING_DOWN.is_set() or self.run_time.passed()

    def stopped(self, result: dict[str, Any] | None) -> Outcome:
        """Why ``should_stop`` said so: the user cancelled, the job ran out of time, or the worker is going away."""
        if self.cancel_requested.is_set():
            return Outcome(Ending.CANCELLED, result=result)
        if self.run_time.passed():
            return Outcome(Ending.FAILED, self.run_time.message(), result)
        return Outcome.released("shut down; the job resumes from its last checkpoint", result)


class Recorder:
    """The core's callbacks. Their writes go through one ordered queue of pending writes, so a
    progress point never overtakes the checkpoint before it, and nothing is reordered when the
    database comes back."""

    BATCH = 200  # pending writes per transaction while catching up

    def __init__(self, settings: Settings, job: ClaimedJob, heartbeat: Heartbeat, tracking: Tracking | None = None):
        self.settings, self.job, self.heartbeat = settings, job, heartbeat
        self.artifacts = settings.artifacts
        self.tracking = tracking or Tracking([])
        self._published: Path | None = None  # the last checkpoint uploaded to a URL root
        self.last_step = 0  # of the last progress point
        # Each pending write returns False when the job is no longer this attempt's.
        self._pending: deque[Callable[[Session], bool]] = deque()
        self._next_try = 0.0
        self._backoff = 0.5

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
        shown = ("feature_std", "feature_cosine", "gpu_memory_bytes")  # with the progress too: the dashboard, /metrics
        point.update({name: values[name] for name in shown if name in values})
        self.last_step = progress.step
        metrics.job_progress(self.job.id, self.job.method, {"step": progress.step, **values})
        warning = progress.warning
        if warning:
            log.warning("job %s: %s", self.job.id, warning)

        def write(session: Session) -> bool:
            if not jobs.record_progress(session, self.job.id, self.job.attempt, point, values):
                return False
            records.add_metric_point(session, self.job.id, progress.step, progress.epoch, values)
            if warning:
                records.add_event(session, self.job.id, "warning", {"step": progress.step, "message": warning})
            return True

        self._pending.append(write)
        self.tracking.log_metrics(progress.step, values)
        if len(self._pending) >= self.settings.progress_buffer:
            log.warning("%d progress points wait for the database; training waits with them", len(self._pending))
            self.flush(within=self.settings.database_retry_window)
        elif time.monotonic() >= self._next_try:
            self._try_flush()

    def on_checkpoint(self, info) -> int:
        path = Path(info.path)
        self._publish(path)
        checkpoint_id = self._write_now("checkpoint", lambda session: self._record_checkpoint(session, info, path))
        if info.final:
            self.tracking.log_artifact(path)
        log.info("checkpoint %s (epoch %d, step %d)", path.name, info.epoch, info.step)
        return checkpoint_id

    def _publish(self, path: Path) -> None:
        """For a URL root: upload the checkpoint (and ``last.pt``, and the log so far) before it is
        recorded, so that a recorded checkpoint is always in the store. The local copy of the
        previous one goes: a worker keeps only the checkpoint in use on its disk."""
        if not self.artifacts.remote:
            return
        self.artifacts.publish(path, also_as=self.relative(path.with_name("last.pt")))
        self.artifacts.publish(path.parents[1] / "job.log")
        if self._published is not None and self._published != path:
            self._published.unlink(missing_ok=True)
        self._published = path

    def _record_checkpoint(self, session: Session, info, path: Path) -> int:
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
        evaluation = self._write_now("evaluation", lambda s: self._record_evaluation(s, result, checkpoint_id))
        self.tracking.log_evaluation(result)
        at = "" if evaluation.epoch is None else f" at epoch {evaluation.epoch}"
        if evaluation.top1 is None:  # no accuracy: an embedding
            log.info("%s: %d test images%s", evaluation.protocol, evaluation.num_test, at)
        else:
            log.info("%s top-1 %.2f%%%s", evaluation.protocol, evaluation.top1, at)

    def _record_evaluation(self, session: Session, result, checkpoint_id: int | None):
        data = result.to_dict()
        evaluation = records.record_evaluation(session, self.job.id, checkpoint_id, data)
        event = {
            "id": evaluation.id,
            "protocol": evaluation.protocol,
            "top1": evaluation.top1,
            "top5": evaluation.top5,
            "epoch": evaluation.epoch,
            "checkpoint_id": checkpoint_id,
        }
        records.add_event(session, self.job.id, "evaluation", event)
        if evaluation.top1 is not None:
            name = evaluation.protocol
            jobs.update_latest_metrics(
                session, self.job.id, {f"{name}_top1": evaluation.top1, f"{name}_top5": evaluation.top5}
            )
        return evaluation

    def _write_now(self, what: str, work: Callable[[Session], T]) -> T:
        """A write the training waits for (it needs what the write returns): queued behind the
        pending ones and flushed with them, for up to the retry window. When that passes it stays
        queued, and is written before the job goes back to the queue."""
        box: list[T] = []

        def write(session: Session) -> bool:
            box[:] = [work(session)]
            return True

        self._pending.append(write)
        self.flush(within=self.settings.database_retry_window, what=what)
        if self.heartbeat.lost.is_set():
            raise LeaseLost(self.job.id)
        return box[0]

    def _try_flush(self) -> None:
        """One try, without waiting: while the database is away, the next try waits for a
        backoff (up to 10 s), so training pays for a failed connection at most that often."""
        try:
            self.flush(within=0)
        except DatabaseUnavailable:
            log.warning(
                "the database is unreachable; %d progress points wait in memory (at most %d), trying again in %.1f s",
                len(self._pending),
                self.settings.progress_buffer,
                self._backoff,
            )
            self._next_try = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, 10.0)
            return
        self._backoff = 0.5

    def flush(self, *, within: float | None, what: str = "progress") -> None:
        """Writes the pending writes in order, ``BATCH`` per transaction, each batch retried for
        up to ``within`` seconds (None: until the database is back); raises
        :class:`DatabaseUnavailable` with the rest still pending."""
        self._note_tracking_failures()
        while self._pending:
            batch = list(self._pending)[: self.BATCH]
            written = transaction(
                self.settings.database_url,
                lambda session, batch=batch: _write_all(session, batch),
                what=f"recording the {what} of job {self.job.id}",
                within=within,
            )
            if written < len(batch):  # the job went to another attempt: this one writes nothing more
                self._pending.clear()
                self.heartbeat.lost.set()
                return
            for _ in batch:
                self._pending.popleft()

    def _note_tracking_failures(self) -> None:
        """One warning event for each tracking sink that failed, in order with the other writes."""
        for sink, message in self.tracking.take_failures():
            data = {"step": self.last_step, "sink": sink, "message": message}

            def write(session: Session, data=data) -> bool:
                records.add_event(session, self.job.id, "warning", data)
                return True

            self._pending.append(write)

    def relative(self, path: Path) -> str:
        return self.artifacts.relative(path)


def _write_all(session: Session, writes: list[Callable[[Session], bool]]) -> int:
    """How many of ``writes`` went in before one found the job no longer ours (all of them: none did)."""
    for done, write in enumerate(writes):
        if not write(session):
            return done
    return len(writes)


@dataclass(frozen=True)
class EvaluationPlan:
    """The protocols to run on one checkpoint, and what they read."""

    checkpoint: Path
    checkpoint_id: int | None
    protocols: list[str]
    dataset: str
    data: Path | None  # the dataset's files, checked at claim time; None: a built-in dataset
    device: str
    params: dict[str, dict[str, Any]]  # protocol -> its parameters ({"knn": {"k": 20}})

    @classmethod
    def for_job(
        cls, job: ClaimedJob, checkpoint: Path, checkpoint_id: int | None, dataset: str, data: Path | None, device: str
    ) -> EvaluationPlan:
        # Protocol parameters are stored beside the run's keys in the job's config.
        params = {protocol: job.config.get(protocol) or {} for protocol in job.evaluate}
        return cls(Path(checkpoint), checkpoint_id, list(job.evaluate), dataset, data, device, params)


def run_job(settings: Settings, job_id: str, worker_name: str) -> str | None:
    """Claim and run ``job_id``; returns how it ended, or None if it was not ours to run."""
    claimed = _claim(settings, job_id, worker_name)
    if claimed is None:
        log.info("job %s is not queued (a duplicate message, or cancelled); nothing to do", job_id)
        return None
    job, candidates = claimed
    started, ended = time.monotonic(), "error"
    metrics.job_started(job.id, job.method)
    try:
        ended = _run_claimed(settings, job, candidates, worker_name)
        return ended
    finally:
        metrics.job_ended(job.id, job.method, job.kind, ended or "lost", time.monotonic() - started)


def _run_claimed(settings: Settings, job: ClaimedJob, candidates: list, worker_name: str) -> str | None:
    artifacts = settings.artifacts
    job_dir = artifacts.folder / "jobs" / job.id
    job_dir.mkdir(parents=True, exist_ok=True)
    if artifacts.remote and not (job_dir / "job.log").exists():
        _try(f"fetching the log of job {job.id}", artifacts.fetch, f"jobs/{job.id}/job.log")  # earlier attempts'
    # cssl_core's decoded-dataset cache goes to the service's own folder, never a user's path.
    os.environ["CSSL_CACHE_DIR"] = str(settings.cache_dir)
    # The heartbeat starts before anything slow (reading checkpoints, the first import of torch).
    with (
        job_context(job.id, job.attempt, worker_name),
        _job_log(job_dir / "job.log"),
        Heartbeat(settings, job.id, job.attempt) as heartbeat,
    ):
        log.info(
            "job %s attempt %d on %s: %s %s on %s", job.id, job.attempt, worker_name, job.kind, job.method, job.dataset
        )
        tracking = Tracking.for_job(settings, job)
        tracking.start(job)
        recorder = Recorder(settings, job, heartbeat, tracking)
        outcome = _run(settings, job, candidates, job_dir, recorder, heartbeat)
        tracking.finish(outcome.ending.value)
        if outcome.ending is Ending.LOST:
            log.warning("job %s was given to another attempt; stopping without recording", job.id)
            return None
        _finish(settings, job, recorder, outcome, worker_name)
        log.info("job %s %s%s", job.id, outcome.ending.value, f": {outcome.message}" if outcome.message else "")
    # For a URL root, the whole log goes up and the local copies go: the next attempt, here or on
    # another worker, downloads what it needs.
    if _try(f"uploading the log of job {job.id}", artifacts.publish, job_dir / "job.log"):
        artifacts.forget(f"jobs/{job.id}")
    return outcome.ending.value


def _try(what: str, action: Callable[..., Any], *args) -> bool:
    """A copy to or from the artifact store that the job can do without (its log)."""
    try:
        action(*args)
    except Exception as exc:
        log.warning("%s failed (%s); going on without it", what, _reason(exc))
        return False
    return True


def _finish(settings: Settings, job: ClaimedJob, recorder: Recorder, outcome: Outcome, worker_name: str) -> None:
    """What the attempt kept is written first, then its end; both wait for the database as long
    as it takes (nothing else can happen to the job meanwhile: its heartbeat waits too)."""
    recorder.flush(within=None)

    def write(session: Session) -> None:
        if outcome.ending is Ending.RELEASED:
            jobs.release_job(session, job.id, job.attempt, f"worker {worker_name} {outcome.message}")
        elif outcome.ending is Ending.RETRIED:
            message = f"worker {worker_name} lost a process of attempt {job.attempt} ({outcome.message})"
            jobs.requeue_failed_attempt(session, job.id, job.attempt, message, settings.max_attempts)
        else:
            jobs.finish_job(
                session, job.id, job.attempt, outcome.ending.value, error=outcome.message, result=outcome.result
            )

    transaction(settings.database_url, write, what=f"recording the end of job {job.id}", within=None)


def _run(
    settings: Settings,
    job: ClaimedJob,
    candidates: list[records.Checkpoint],
    job_dir: Path,
    recorder: Recorder,
    heartbeat: Heartbeat,
) -> Outcome:
    from cssl_core.data import decoded_bytes_limit
    from cssl_core.distributed import LaunchFailed
    from cssl_core.errors import CsslError

    window = settings.database_retry_window
    try:
        if job.kind == "pretrain" and job.attempt > 1:
            job = _resume_point(settings, job, candidates)
            recorder.job = job
        data = _job_data(settings, job)
        provenance = _provenance(job, data)
        if not transaction(
            settings.database_url,
            lambda s: jobs.record_provenance(s, job.id, job.attempt, provenance),
            what=f"recording the provenance of job {job.id}",
            within=window,
        ):
            return Outcome.lost()
        with decoded_bytes_limit(settings.max_decoded_bytes, "CSSL_MAX_DECODED_BYTES"):
            if job.kind == "pretrain":
                return _pretrain(settings, job, data, job_dir, recorder, heartbeat)
            return _evaluate_only(job, data, recorder, heartbeat)
    except LeaseLost:
        return Outcome.lost()
    except DatabaseUnavailable as exc:
        log.warning("%s; the job goes back to the queue once the database answers", exc)
        return Outcome.released(
            f"could not reach the database for {window:g} s; the job resumes from its last checkpoint"
        )
    except DBAPIError as exc:
        if not is_transient(exc):
            return _internal_error(job, exc)
        log.warning("the database went away (%s); the job goes back to the queue once it answers", _reason(exc))
        return Outcome.released("lost the database; the job resumes from its last checkpoint")
    except LaunchFailed as exc:
        if not exc.lost:
            log.error("%s", exc)
            return Outcome.failed(str(exc))
        log.warning("%s; the job resumes from its last checkpoint", exc)
        return Outcome.retried(str(exc))
    except CsslError as exc:
        log.error("%s", exc)
        return Outcome.failed(str(exc))
    except Exception as exc:
        return _internal_error(job, exc)


def _internal_error(job: ClaimedJob, exc: Exception) -> Outcome:
    internal_log.error("job %s attempt %d failed:\n%s", job.id, job.attempt, traceback.format_exc())
    message = (
        f"the worker stopped on an unexpected error ({type(exc).__name__}), not on anything in the job's "
        "settings or data; submit it again, and if it fails the same way, report the job's id to the "
        "service's operators (the worker's log holds the details)"
    )
    log.error("%s", message)
    return Outcome.failed(message)


def _reason(exc: BaseException) -> str:
    """The first line of what the driver said, under our own wrapping."""
    if isinstance(exc, DatabaseUnavailable) and exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _job_data(settings: Settings, job: ClaimedJob) -> Path | str | None:
    """The job's data path checked again, now: a link may have changed since the API checked it."""
    return _checked_data(settings, job.dataset_path)


def _checked_data(settings: Settings, stored: str | None) -> Path | str | None:
    from cssl_core.errors import DataError

    if stored is None:
        return None
    path = data_roots.resolve_job_data(settings, stored)
    if path is None:
        raise DataError(
            "the job's data is no longer readable by the service (moved, deleted, or now outside its data "
            "folders); submit the job again with a path under them, or an upload"
        )
    return path


def _provenance(job: ClaimedJob, data: Path | None) -> dict[str, Any]:
    """What this attempt runs with. An eval job's image size is its checkpoint's, which is not
    read yet; a data set of fixed size has its own."""
    from cssl_core.data import dataset_image_size
    from cssl_core.provenance import collect

    image_size = dataset_image_size(job.dataset, job.config.get("image_size")) if job.kind == "pretrain" else None
    return collect(job.dataset, data, device=job.config.get("device", "auto"), image_size=image_size)


def _pretrain(
    settings: Settings, job: ClaimedJob, data: Path | None, job_dir: Path, recorder: Recorder, heartbeat: Heartbeat
) -> Outcome:
    from cssl_core.train import pretrain
    from worker.ranks import load_datasets

    config, run_keys, eval_name, eval_data = _run_plan(settings, job.method, job.config, data)
    nodes = _nodes(job.resources)
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

        if config.nproc > 1 or nodes > 1:
            from worker.ranks import RankRun, run_ranks

            rendezvous = None
            if nodes > 1:
                rendezvous = _gather_nodes(settings, job, nodes, recorder)
                if rendezvous is None:
                    return Outcome.released("could not reach the broker to ask for the job's other nodes")

            run = RankRun(
                method=job.method,
                config=run_keys,
                job_dir=job_dir,
                resume_from=job.resume_from,
                progress_every=settings.progress_every,
                data=data,
                eval_name=eval_name,
                eval_data=eval_data,
                max_decoded_bytes=settings.max_decoded_bytes,
                parent_pid=os.getpid(),
            )
            outcome = run_ranks(
                run,
                on_progress=recorder.on_progress,
                should_stop=heartbeat.should_stop,
                on_checkpoint=on_checkpoint,
                on_evaluation=recorder.on_evaluation,
                rendezvous=rendezvous,
            )
        else:
            dataset, eval_dataset = load_datasets(config, data, eval_name, eval_data)
            outcome = pretrain(
                config,
                job_dir,
                on_progress=recorder.on_progress,
                should_stop=heartbeat.should_stop,
                on_checkpoint=on_checkpoint,
                on_evaluation=recorder.on_evaluation,
                resume_from=job.resume_from,
                progress_every=settings.progress_every,
                dataset=dataset,
                eval_dataset=eval_dataset,
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
            return heartbeat.stopped(result)
        recorder.flush(within=settings.database_retry_window)
        # Kept now, so that an attempt that only has the evaluations left still has it.
        transaction(
            settings.database_url,
            lambda s: jobs.record_result(s, job.id, job.attempt, result),
            what=f"recording the result of job {job.id}",
            within=settings.database_retry_window,
        )
        checkpoint_id = checkpoint_ids[checkpoint]  # pretrain reports its last checkpoint
    plan = EvaluationPlan.for_job(job, checkpoint, checkpoint_id, eval_name, eval_data, config.device)
    _run_evaluations(plan, recorder)
    if heartbeat.should_stop():
        return heartbeat.stopped(result)
    return Outcome.succeeded(result)


def _run_plan(
    settings: Settings, method: str, stored: dict[str, Any], data: Path | None
) -> tuple[Any, dict[str, Any], str, Path | None]:
    """(config, the run's keys, the evaluation set's name and checked path) of a pretraining job."""
    from cssl_core.config import build_config
    from cssl_core.evaluation import PROTOCOL_PARAMS

    run_keys = {k: v for k, v in stored.items() if k not in PROTOCOL_PARAMS and k != TRACKING_KEY}
    config = build_config(method, run_keys)
    # The evaluation set (kNN during training, the final evaluations), checked like the data.
    eval_name, eval_data = config.dataset, data
    if config.eval_dataset:
        eval_name, eval_data = config.eval_dataset, _checked_data(settings, config.eval_data)
    return config, run_keys, eval_name, eval_data


def _nodes(resources: dict[str, Any] | None) -> int:
    return int((resources or {}).get("nodes") or 1)


def _gather_nodes(settings: Settings, job: ClaimedJob, nodes: int, recorder: Recorder):
    """This worker is the first node of a job on several: it notes on the job where the others
    meet it (its address, a free port) and which checkpoint they all resume from, then asks for
    them with ``nodes - 1`` join messages. Their ranks start when all have come, within
    CSSL_RENDEZVOUS_TIMEOUT. None when the broker cannot be reached."""
    from cssl_core.distributed import Rendezvous, free_port
    from dispatch.publisher import publish_joins
    from worker.app import app
    from worker.ranks import node_address

    address = node_address(settings.node_address)
    endpoint = f"{address}:{free_port(address)}"
    meeting = {
        "endpoint": endpoint,
        "nodes": nodes,
        "resume_from": recorder.relative(job.resume_from) if job.resume_from else None,
    }
    if not transaction(
        settings.database_url,
        lambda s: jobs.record_rendezvous(s, job.id, job.attempt, meeting),
        what=f"recording where the nodes of job {job.id} meet",
        within=settings.database_retry_window,
    ):
        raise LeaseLost(job.id)
    try:
        publish_joins(app, settings, job.id, job.attempt, job.resources or {})
    except Exception as exc:  # any broker error
        log.warning("could not ask for the other nodes of job %s (%s)", job.id, _reason(exc))
        return None
    log.info(
        "job %s waits for %d more nodes at %s (at most %g s)", job.id, nodes - 1, endpoint, settings.rendezvous_timeout
    )
    return Rendezvous(nodes, endpoint, f"{job.id}-{job.attempt}", True, address, settings.rendezvous_timeout)


def join_job(settings: Settings, job_id: str, attempt: int, node: int, worker_name: str) -> str | None:
    """Run node ``node`` of ``attempt`` of a job on several nodes: this worker's ranks, met with
    the first node's at the rendezvous it noted on the job. Nothing is recorded here: the first
    node's rank 0 reports for the whole run, and a failure here ends the attempt there (its
    collectives lose their peers), which gives the job back. Returns how this node's part ended,
    or None when the attempt is no longer running (a late message)."""
    from cssl_core.distributed import LaunchFailed, Rendezvous
    from cssl_core.errors import CsslError
    from worker.ranks import RankRun, node_address, run_ranks

    def read(session: Session) -> tuple[str, dict[str, Any], str | None, dict[str, Any]] | None:
        job = jobs.joinable(session, job_id, attempt)
        return None if job is None else (job.method, dict(job.config), job.dataset_path, dict(job.rendezvous))

    found = transaction(
        settings.database_url,
        read,
        what=f"reading where the nodes of job {job_id} meet",
        within=settings.database_retry_window,
    )
    if found is None:
        log.info("attempt %d of job %s is not running; not joining it as node %d", attempt, job_id, node)
        return None
    method, stored, dataset_path, meeting = found
    os.environ["CSSL_CACHE_DIR"] = str(settings.cache_dir)
    with job_context(job_id, attempt, worker_name):
        log.info("job %s attempt %d: joining as node %d at %s", job_id, attempt, node, meeting["endpoint"])
        try:
            data = _checked_data(settings, dataset_path)
            _, run_keys, eval_name, eval_data = _run_plan(settings, method, stored, data)
            resume = meeting.get("resume_from")
            run = RankRun(
                method=method,
                config=run_keys,
                job_dir=settings.artifacts.folder / "jobs" / job_id,
                resume_from=settings.artifacts.fetch(resume) if resume else None,
                progress_every=settings.progress_every,
                data=data,
                eval_name=eval_name,
                eval_data=eval_data,
                max_decoded_bytes=settings.max_decoded_bytes,
                parent_pid=os.getpid(),
                node=node,
            )
            address = node_address(settings.node_address)
            rendezvous = Rendezvous(
                meeting["nodes"],
                meeting["endpoint"],
                f"{job_id}-{attempt}",
                False,
                address,
                settings.rendezvous_timeout,
            )
            run_ranks(
                run,
                on_progress=_ignore,
                should_stop=lambda: False,  # rank 0, on the first node, decides for all
                on_checkpoint=_ignore,
                on_evaluation=_ignore,
                rendezvous=rendezvous,
            )
        except (LaunchFailed, CsslError) as exc:
            log.warning("node %d of job %s attempt %d ended: %s", node, job_id, attempt, exc)
            return "failed"
        except Exception:
            internal_log.exception("node %d of job %s attempt %d failed", node, job_id, attempt)
            return "failed"
    log.info("node %d of job %s attempt %d finished", node, job_id, attempt)
    return "finished"


def _ignore(_) -> None:
    pass


def _evaluate_only(job: ClaimedJob, data: Path | None, recorder: Recorder, heartbeat: Heartbeat) -> Outcome:
    if job.source_checkpoint is not None:
        recorder.artifacts.fetch(recorder.relative(job.source_checkpoint))
    plan = EvaluationPlan.for_job(
        job, job.source_checkpoint, job.source_checkpoint_id, job.dataset, data, job.config.get("device", "auto")
    )
    _run_evaluations(plan, recorder)
    if heartbeat.should_stop():
        return heartbeat.stopped(None)
    return Outcome.succeeded(None)


def _run_evaluations(plan: EvaluationPlan, recorder: Recorder) -> None:
    from cssl_core.evaluation import evaluate_checkpoint

    job = recorder.job

    def recorded(session: Session) -> set[str]:
        return {e.protocol for e in records.final_evaluations(session, job.id) if e.checkpoint_id == plan.checkpoint_id}

    done = transaction(
        recorder.settings.database_url,
        recorded,
        what=f"reading the evaluations of job {job.id}",
        within=recorder.settings.database_retry_window,
    )
    for protocol in plan.protocols:
        if protocol in done:
            continue  # recorded by an earlier attempt
        if recorder.heartbeat.should_stop():
            return
        log.info("evaluating %s (%s)", protocol, recorder.relative(plan.checkpoint))
        result = evaluate_checkpoint(
            plan.checkpoint,
            protocol,
            dataset=plan.dataset,
            data=plan.data,
            device=plan.device,
            **plan.params.get(protocol, {}),
        )
        recorder.on_evaluation(result, plan.checkpoint_id)


def _claim(
    settings: Settings, job_id: str, worker_name: str, within: float | None = None
) -> tuple[ClaimedJob, list[records.Checkpoint]] | None:
    """The claimed job, and its checkpoints newest first (where a later attempt may resume)."""

    def claim(session: Session) -> tuple[ClaimedJob, list[records.Checkpoint]] | None:
        job: Job | None = jobs.claim_job(session, job_id, worker_name, settings.max_running_jobs)
        if job is None:
            return None
        source = session.get(records.Checkpoint, job.source_checkpoint_id) if job.source_checkpoint_id else None
        resumable = job.kind == "pretrain" and job.attempt > 1
        candidates = records.checkpoints_newest_first(session, job.id) if resumable else []
        claimed = ClaimedJob(
            id=job.id,
            kind=job.kind,
            method=job.method,
            dataset=job.dataset,
            dataset_path=job.dataset_path,
            config=dict(job.config),
            evaluate=list(job.evaluate),
            attempt=job.attempt,
            source_checkpoint=settings.artifacts.folder / source.path if source else None,
            source_checkpoint_id=source.id if source else None,
            resume_from=None,
            resume_checkpoint_id=None,
            resume_is_final=False,
            resources=dict(job.resources) if job.resources else None,
            owner=job.owner,
            name=job.name,
            tags={tag.key: tag.value for tag in session.scalars(select(JobTag).where(JobTag.job_id == job.id))},
        )
        return claimed, candidates

    return transaction(
        settings.database_url,
        claim,
        what=f"claiming job {job_id}",
        within=settings.database_retry_window if within is None else within,
    )


def _resume_point(settings: Settings, job: ClaimedJob, candidates: list[records.Checkpoint]) -> ClaimedJob:
    """Resume from the newest checkpoint that loads; what the lost attempts recorded past it goes."""
    resume = _newest_loadable(settings, candidates)
    step, epoch = (resume.step, resume.epoch) if resume else (0, 0)

    def write(session: Session) -> None:
        jobs.set_resume_point(session, job.id, job.attempt, step)
        records.drop_metrics_after(session, job.id, step, epoch)

    transaction(
        settings.database_url, write, what=f"choosing where job {job.id} resumes", within=settings.database_retry_window
    )
    if resume is None:
        return job
    return replace(
        job,
        resume_from=settings.artifacts.folder / resume.path,
        resume_checkpoint_id=resume.id,
        resume_is_final=resume.final,
    )


def _newest_loadable(settings: Settings, candidates: list[records.Checkpoint]) -> records.Checkpoint | None:
    """The newest checkpoint whose file is there and loads (for a URL root, once downloaded);
    missing, truncated or corrupt files (a worker killed while writing one, a disk that lost it)
    are skipped with a warning."""
    from cssl_core.train.checkpoint import load_checkpoint

    for checkpoint in candidates:
        try:
            load_checkpoint(settings.artifacts.fetch(checkpoint.path))
        except Exception as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log.warning(
                "checkpoint %s (step %d) cannot be resumed from (%s); trying an older one",
                checkpoint.path,
                checkpoint.step,
                reason,
            )
            continue
        return checkpoint
    return None


@contextmanager
def _job_log(path: Path) -> Iterator[None]:
    """Everything logged while the job runs (ours and cssl_core's) also goes to its log file,
    which the job's owner reads; tracebacks (``internal_log``) stay in the worker's own log."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    handler.addFilter(lambda record: not record.name.startswith(internal_log.name))
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
