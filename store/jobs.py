"""The job lifecycle as conditional updates.

queued -> running -> succeeded | failed | cancelled, and queued -> cancelled. Every change is
one UPDATE guarded by the status (and the attempt, for the worker's writes), so a message
delivered twice runs once, a worker that lost its job cannot write over the next attempt, and
the API and the sweeper may race without harm. Each change also appends a job event and, in
the same transaction, the webhook messages that tell of it (``store.webhooks``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, exists, func, or_, select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from store.models import TERMINAL_STATUSES, Checkpoint, Job, JobTag, JobWebhook, utcnow
from store.records import add_event
from store.webhooks import enqueue_job_event

log = logging.getLogger(__name__)


class IdempotencyConflict(Exception):
    """The idempotency key was used before with another request body."""

    def __init__(self, job: Job):
        super().__init__(job.id)
        self.job = job


@dataclass(frozen=True)
class NewJob:
    """A validated submission: what the API hands to :func:`create_job`."""

    kind: str
    method: str
    dataset: str
    dataset_path: str | None
    config: dict[str, Any]
    evaluate: list[str]
    priority: int = 5
    source_checkpoint_id: int | None = None
    name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    # Endpoints of the owner's that hear of this job even if they hear of named jobs only.
    webhooks: tuple[str, ...] = ()
    # What it asked for (``dispatch.routing.Resources.stored()``); None: the default queue.
    resources: dict[str, Any] | None = None


def _state_event(session: Session, job_id: str, data: dict[str, Any]) -> None:
    """The job event of a state change, and the webhook messages that tell of it."""
    add_event(session, job_id, "state", data)
    enqueue_job_event(session, job_id, data["status"])


def create_job(
    session: Session,
    owner: str,
    new: NewJob,
    *,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
) -> tuple[Job, bool]:
    """Insert a queued job; returns ``(job, created)``. The same idempotency key with the same
    request hash returns the first job, with another hash raises :class:`IdempotencyConflict`."""
    if idempotency_key is not None:
        existing = _by_idempotency_key(session, owner, idempotency_key)
        if existing is not None:
            return _same_request(existing, request_hash), False
    job = Job(
        owner=owner,
        kind=new.kind,
        method=new.method,
        dataset=new.dataset,
        dataset_path=new.dataset_path,
        config=new.config,
        evaluate=list(new.evaluate),
        priority=new.priority,
        source_checkpoint_id=new.source_checkpoint_id,
        status="queued",
        cancel_requested=False,
        attempt=0,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        name=new.name,
        resources=new.resources,
        tag_rows=[JobTag(key=key, value=value) for key, value in new.tags.items()],
        webhook_rows=[JobWebhook(webhook_id=webhook_id) for webhook_id in new.webhooks],
    )
    try:
        with session.begin_nested():
            session.add(job)
            session.flush()
    except IntegrityError:
        # Another request with the same key committed between our read and our insert.
        existing = _by_idempotency_key(session, owner, idempotency_key) if idempotency_key else None
        if existing is None:
            raise
        return _same_request(existing, request_hash), False
    _state_event(session, job.id, {"status": "queued", "attempt": 0})
    return job, True


def idempotent_job(session: Session, owner: str, key: str) -> Job | None:
    """The job an earlier submission with this idempotency key created, if any."""
    return _by_idempotency_key(session, owner, key)


def count_jobs(session: Session, owner: str, status: str) -> int:
    return session.scalar(select(func.count()).select_from(Job).where(Job.owner == owner, Job.status == status))


def _by_idempotency_key(session: Session, owner: str, key: str) -> Job | None:
    return session.scalar(select(Job).where(Job.owner == owner, Job.idempotency_key == key))


def _same_request(job: Job, request_hash: str | None) -> Job:
    if job.request_hash != request_hash:
        raise IdempotencyConflict(job)
    return job


def get_job(session: Session, job_id: str, owner: str | None = None) -> Job | None:
    query = select(Job).where(Job.id == job_id)
    if owner is not None:
        query = query.where(Job.owner == owner)
    return session.scalar(query)


# What a job list may be sorted by; ties (and the cursor) fall back to the id.
SORT_KEYS = {"created_at": Job.created_at, "name": func.coalesce(Job.name, "")}


@dataclass(frozen=True)
class JobFilter:
    """The jobs of one owner that ``list_jobs`` returns; ``tags`` holds (key, value or None
    for any value) pairs, all of which a job must have."""

    status: str | None = None
    kind: str | None = None
    method: str | None = None
    dataset: str | None = None
    name: str | None = None  # a case-insensitive part of the name
    tags: tuple[tuple[str, str | None], ...] = ()
    created_after: datetime | None = None
    created_before: datetime | None = None


def list_jobs(
    session: Session,
    owner: str,
    where: JobFilter = JobFilter(),
    *,
    sort: str = "-created_at",
    after: tuple[Any, str] | None = None,
    limit: int = 50,
) -> tuple[list[Job], bool]:
    """One page of jobs in ``sort`` order (a key of SORT_KEYS, ``-`` for descending), starting
    after the job whose (sort value, id) is ``after``: pages keyed so, unlike offsets, do not
    shift while jobs arrive. Returns ``(jobs, has_more)``."""
    descending = sort.startswith("-")
    column = SORT_KEYS[sort.removeprefix("-")]
    query = select(Job).where(Job.owner == owner)
    for name in ("status", "kind", "method", "dataset"):
        if (value := getattr(where, name)) is not None:
            query = query.where(getattr(Job, name) == value)
    if where.name:
        escaped = where.name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(Job.name.ilike(f"%{escaped}%", escape="\\"))
    for key, value in where.tags:
        tag = exists().where(JobTag.job_id == Job.id, JobTag.key == key)
        query = query.where(tag.where(JobTag.value == value) if value is not None else tag)
    if where.created_after is not None:
        query = query.where(Job.created_at >= where.created_after)
    if where.created_before is not None:
        query = query.where(Job.created_at < where.created_before)
    if after is not None:
        key = tuple_(column, Job.id)
        query = query.where(key < tuple_(*after) if descending else key > tuple_(*after))
    order = (column.desc(), Job.id.desc()) if descending else (column.asc(), Job.id.asc())
    rows = list(session.scalars(query.order_by(*order).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def sort_value(job: Job, sort: str) -> Any:
    """The value ``list_jobs`` orders ``job`` by under ``sort``: what a cursor after it holds."""
    key = sort.removeprefix("-")
    return job.created_at if key == "created_at" else job.name or ""


def update_labels(session: Session, job: Job, *, name: str | None, rename: bool, tags: dict[str, str | None]) -> Job:
    """Set (or with ``rename`` and ``name=None`` clear) the name; merge ``tags``, where a None
    value removes the key."""
    if rename:
        job.name = name
    rows = {row.key: row for row in job.tag_rows}
    for key, value in tags.items():
        if value is None:
            if key in rows:
                job.tag_rows.remove(rows.pop(key))
        elif key in rows:
            rows[key].value = value
        else:
            rows[key] = JobTag(key=key, value=value)
            job.tag_rows.append(rows[key])
    session.flush()
    return job


def mark_published(session: Session, job_id: str) -> None:
    session.execute(update(Job).where(Job.id == job_id, Job.status == "queued").values(published_at=utcnow()))


def mark_unpublished(session: Session, job_id: str) -> None:
    """The job's message was dropped: the sweeper publishes it again at its next pass."""
    session.execute(update(Job).where(Job.id == job_id, Job.status == "queued").values(published_at=None))


def request_cancel(session: Session, job: Job) -> Job:
    """Queued: cancelled now and never runs. Running: flagged; the worker stops at its next
    step, keeps its checkpoint and marks the job cancelled. Finished: unchanged."""
    now = utcnow()
    cancelled = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.status == "queued")
        .values(status="cancelled", cancel_requested=True, finished_at=now)
        .returning(Job.id)
    ).first()
    if cancelled:
        _state_event(
            session,
            job.id,
            {"status": "cancelled", "attempt": job.attempt, "message": "cancelled while queued"},
        )
    else:
        flagged = session.execute(
            update(Job)
            .where(Job.id == job.id, Job.status == "running", Job.cancel_requested.is_(False))
            .values(cancel_requested=True)
            .returning(Job.id)
        ).first()
        if flagged:
            add_event(session, job.id, "cancel_requested", {"status": "running"})
    session.refresh(job)
    return job


# The worker's side. Each write names the attempt it belongs to.


def delete_job(session: Session, job: Job) -> list[str]:
    """Delete a finished job with its events, metrics, checkpoint and evaluation rows, unless
    an unfinished evaluation job reads one of its checkpoints: then nothing is deleted and the
    ids of those jobs come back. Raises :class:`JobNotFinished` for a job that is queued or
    running (the row is locked and checked in this transaction, so a worker cannot claim it
    in between). Its files are the caller's to remove once this transaction has committed."""
    status = session.scalar(select(Job.status).where(Job.id == job.id).with_for_update())
    if status not in TERMINAL_STATUSES:
        raise JobNotFinished(job.id, status)
    readers = session.scalars(
        select(Job.id)
        .where(
            Job.source_checkpoint_id.in_(select(Checkpoint.id).where(Checkpoint.job_id == job.id)),
            Job.status.not_in(TERMINAL_STATUSES),
        )
        .order_by(Job.created_at)
    ).all()
    if readers:
        return list(readers)
    session.execute(delete(Job).where(Job.id == job.id))
    session.expunge(job)
    return []


class JobNotFinished(Exception):
    def __init__(self, job_id: str, status: str | None):
        super().__init__(f"job {job_id} is {status}")
        self.status = status


def claim_job(session: Session, job_id: str, worker: str, max_running: int = 0) -> Job | None:
    """Take a queued job; None when it is not queued (a duplicate message, or cancelled), or
    when its owner already has ``max_running`` jobs running (0: no limit): then it stays queued
    with no message out, so the sweeper publishes it again."""
    now = utcnow()
    if max_running and not _owner_may_run(session, job_id, max_running):
        return None
    job = session.scalars(
        update(Job)
        .where(Job.id == job_id, Job.status == "queued")
        .values(
            status="running",
            attempt=Job.attempt + 1,
            worker=worker,
            heartbeat_at=now,
            started_at=func.coalesce(Job.started_at, now),
            error=None,
            rendezvous=None,  # the last attempt's nodes met there
            # Where this attempt starts, until the runner says otherwise (an older checkpoint,
            # if the newest does not load): progress is a checkpoint past it.
            resumed_from_step=_newest_checkpoint_step(),
        )
        .returning(Job),
        execution_options={"synchronize_session": False},
    ).first()
    if job is None:
        return None
    _state_event(session, job.id, {"status": "running", "attempt": job.attempt, "worker": worker})
    return job


def _owner_may_run(session: Session, job_id: str, max_running: int) -> bool:
    owner = session.scalar(select(Job.owner).where(Job.id == job_id, Job.status == "queued"))
    if owner is None:
        return True  # the claim finds nothing to take
    if session.get_bind().dialect.name == "postgresql":
        # One claim per owner at a time, until commit, so that two workers cannot both take the last place.
        session.execute(select(func.pg_advisory_xact_lock(func.hashtext("cssl.claim." + owner))))
    if count_jobs(session, owner, "running") < max_running:
        return True
    session.execute(update(Job).where(Job.id == job_id, Job.status == "queued").values(published_at=None))
    log.info("job %s waits: %s has %d jobs running (CSSL_MAX_RUNNING_JOBS)", job_id, owner, max_running)
    return False


def _newest_checkpoint_step():
    """The step of the job's newest checkpoint (0: none), for use inside a statement on jobs."""
    return (
        select(func.coalesce(func.max(Checkpoint.step), 0))
        .where(Checkpoint.job_id == Job.id)
        .correlate(Job)
        .scalar_subquery()
    )


def record_rendezvous(session: Session, job_id: str, attempt: int, rendezvous: dict[str, Any]) -> bool:
    """Where the other nodes of this attempt meet its first node (the claiming worker); False
    when the job is no longer this attempt's."""
    row = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "running", Job.attempt == attempt)
        .values(rendezvous=rendezvous)
        .returning(Job.id)
    ).first()
    return row is not None


def joinable(session: Session, job_id: str, attempt: int) -> Job | None:
    """The job, when ``attempt`` runs now and its first node has said where to meet; else None (a
    join message of an attempt that has ended)."""
    return session.scalar(
        select(Job).where(
            Job.id == job_id, Job.status == "running", Job.attempt == attempt, Job.rendezvous.is_not(None)
        )
    )


def heartbeat(session: Session, job_id: str, attempt: int) -> tuple[bool, bool]:
    """Returns ``(still_ours, cancel_requested)``. Not ours: the sweeper gave the job to
    another attempt after missing our heartbeats, so this attempt must stop without writing."""
    row = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "running", Job.attempt == attempt)
        .values(heartbeat_at=utcnow())
        .returning(Job.cancel_requested)
    ).first()
    return (row is not None, bool(row[0])) if row else (False, False)


def record_progress(
    session: Session, job_id: str, attempt: int, progress: dict[str, Any], latest: dict[str, Any]
) -> bool:
    """Keeps the latest values; those the progress report does not carry (the last kNN's
    top-1, written by :func:`update_latest_metrics`) stay."""
    current = session.scalar(
        select(Job.latest_metrics).where(Job.id == job_id, Job.status == "running", Job.attempt == attempt)
    )
    done = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "running", Job.attempt == attempt)
        .values(progress=progress, latest_metrics={**(current or {}), **latest})
        .returning(Job.id)
    ).first()
    if done:
        add_event(session, job_id, "progress", progress)
    return done is not None


def set_resume_point(session: Session, job_id: str, attempt: int, step: int) -> None:
    """The checkpoint step this attempt starts from (0: the beginning); an attempt lost
    without a checkpoint past it made no progress."""
    session.execute(
        update(Job).where(Job.id == job_id, Job.attempt == attempt).values(resumed_from_step=step),
        execution_options={"synchronize_session": False},
    )


def record_provenance(session: Session, job_id: str, attempt: int, provenance: dict[str, Any]) -> bool:
    """What this attempt runs with (``cssl_core.provenance``); each attempt writes its own, so a
    job resumed on another worker shows where it ran last. False: the job is not this attempt's."""
    done = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "running", Job.attempt == attempt)
        .values(provenance=provenance)
        .returning(Job.id)
    ).first()
    return done is not None


def record_result(session: Session, job_id: str, attempt: int, result: dict[str, Any]) -> None:
    session.execute(
        update(Job).where(Job.id == job_id, Job.status == "running", Job.attempt == attempt).values(result=result)
    )


def update_latest_metrics(session: Session, job_id: str, values: dict[str, Any]) -> None:
    job = session.get(Job, job_id)
    if job is not None:
        job.latest_metrics = {**(job.latest_metrics or {}), **values}


def finish_job(
    session: Session,
    job_id: str,
    attempt: int,
    status: str,
    *,
    error: str | None = None,
    result: dict[str, Any] | None = None,
) -> bool:
    """``result=None`` keeps the result recorded earlier, if any."""
    if status not in TERMINAL_STATUSES:
        raise ValueError(f"not a final status: {status}")
    values = {"status": status, "error": error, "finished_at": utcnow()}
    if result is not None:
        values["result"] = result
    done = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "running", Job.attempt == attempt)
        .values(**values)
        .returning(Job.id)
    ).first()
    if done:
        event = {"status": status, "attempt": attempt}
        if error:
            event["error"] = error
        _state_event(session, job_id, event)
    return done is not None


def release_job(session: Session, job_id: str, attempt: int, message: str) -> bool:
    """Give a running job back to the queue (its worker is shutting down); the next worker
    resumes it from its last checkpoint. A job whose cancel was requested meanwhile is
    cancelled instead. A warm shutdown is not a failure: it never counts as a stalled attempt."""
    guard = (Job.id == job_id, Job.status == "running", Job.attempt == attempt)
    cancelled = session.execute(
        update(Job)
        .where(*guard, Job.cancel_requested.is_(True))
        .values(status="cancelled", worker=None, finished_at=utcnow())
        .returning(Job.id)
    ).first()
    if cancelled:
        _state_event(
            session,
            job_id,
            {
                "status": "cancelled",
                "attempt": attempt,
                "message": f"{message}; the cancel requested meanwhile took effect",
            },
        )
        return True
    done = session.execute(
        update(Job).where(*guard).values(status="queued", worker=None, published_at=None).returning(Job.id)
    ).first()
    if done:
        _state_event(session, job_id, {"status": "queued", "attempt": attempt, "message": message})
    return done is not None


# The sweeper's side: what to publish again.


def requeue_lost(session: Session, heartbeat_timeout: float, max_attempts: int) -> list[str]:
    """Running jobs whose worker stopped heartbeating: queued again (they resume from their
    last checkpoint), cancelled if a cancel was pending. An attempt lost after writing a
    checkpoint past the one it started from made progress and is never held against the job;
    after ``max_attempts`` lost attempts in a row without one, the job fails. Returns the ids
    to publish."""
    cutoff = utcnow() - timedelta(seconds=heartbeat_timeout)
    lost = session.execute(
        select(Job.id, Job.attempt, Job.worker).where(Job.status == "running", Job.heartbeat_at < cutoff)
    ).all()
    requeued = []
    for job_id, attempt, worker in lost:
        message = f"worker {worker} stopped sending heartbeats during attempt {attempt}"
        if _give_back_lost(session, job_id, attempt, message, max_attempts) == "queued":
            requeued.append(job_id)
    return requeued


def requeue_failed_attempt(session: Session, job_id: str, attempt: int, message: str, max_attempts: int) -> str | None:
    """This attempt lost part of itself (a process of a run on several died or hung): the job is
    given back as if its worker had been lost, under the same ``max_attempts`` policy. Returns
    the job's new status, None when the job is no longer this attempt's."""
    return _give_back_lost(session, job_id, attempt, message, max_attempts)


def _give_back_lost(session: Session, job_id: str, attempt: int, message: str, max_attempts: int) -> str | None:
    guard = (Job.id == job_id, Job.status == "running", Job.attempt == attempt)
    row = session.execute(
        select(Job.cancel_requested, Job.resumed_from_step, Job.stalled_attempts, _newest_checkpoint_step()).where(
            *guard
        )
    ).first()
    if row is None:
        return None
    cancel_requested, resumed_from, stalled, newest = row
    progressed = newest > (resumed_from or 0)
    stalled = 0 if progressed else stalled + 1
    if cancel_requested:
        values, event = (
            {"status": "cancelled", "finished_at": utcnow()},
            {"status": "cancelled", "message": message},
        )
    elif stalled >= max_attempts:
        error = (
            f"{message}; gave up: {stalled} attempts in a row were lost without writing a new checkpoint "
            f"(CSSL_MAX_ATTEMPTS={max_attempts}); the last one started from step {resumed_from or 0}"
        )
        values, event = (
            {"status": "failed", "error": error, "finished_at": utcnow()},
            {"status": "failed", "error": error},
        )
    else:
        since = "after a new checkpoint" if progressed else f"without a new checkpoint ({stalled} of {max_attempts})"
        values = {"status": "queued", "worker": None, "published_at": None}
        event = {"status": "queued", "message": f"{message}, {since}; re-queued to resume from its last checkpoint"}
    values["stalled_attempts"] = stalled
    if not session.execute(update(Job).where(*guard).values(**values).returning(Job.id)).first():
        return None
    _state_event(session, job_id, {**event, "attempt": attempt})
    return values["status"]


def unpublished_jobs(
    session: Session, republish_after: float, grace: float = 5.0
) -> list[tuple[str, int, bool, dict[str, Any] | None]]:
    """Queued jobs with no message sent (the broker was down, or the job was re-queued), or
    whose message went out ``republish_after`` seconds ago and was never taken, as
    ``(id, priority, sent_before, resources)``."""
    now = utcnow()
    rows = session.execute(
        select(Job.id, Job.priority, Job.published_at, Job.resources).where(
            Job.status == "queued",
            or_(
                (Job.published_at.is_(None)) & (Job.created_at < now - timedelta(seconds=grace)),
                Job.published_at < now - timedelta(seconds=republish_after),
            ),
        )
    ).all()
    return [
        (job_id, priority, published_at is not None, resources) for job_id, priority, published_at, resources in rows
    ]
