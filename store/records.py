"""What a job leaves behind: events, metric points, checkpoints and evaluations."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row, String, cast, delete, func, null, select, update
from sqlalchemy.orm import Session

from store.models import Checkpoint, Evaluation, Job, JobEvent, MetricPoint
from store.series import keep_extremes, read_columns


def add_event(session: Session, job_id: str, type: str, data: dict[str, Any]) -> int:
    """Appends the job's next event and returns its number (1, 2, 3, ...).

    The number comes from an UPDATE of the job's row, whose lock is held until this
    transaction ends: a second writer waits for it, so one job's events commit in the order
    of their numbers and a reader that sees number n has seen every number below n. (Table
    ids are handed out at insert and become visible at commit, in any order.)"""
    seq = session.execute(
        update(Job).where(Job.id == job_id).values(event_seq=Job.event_seq + 1).returning(Job.event_seq),
        execution_options={"synchronize_session": False},
    ).scalar_one()
    session.add(JobEvent(job_id=job_id, seq=seq, type=type, data=data))
    return seq


def events_after(session: Session, job_id: str, after_seq: int, limit: int = 500) -> list[JobEvent]:
    return list(
        session.scalars(
            select(JobEvent)
            .where(JobEvent.job_id == job_id, JobEvent.seq > after_seq)
            .order_by(JobEvent.seq)
            .limit(limit)
        )
    )


def add_metric_point(session: Session, job_id: str, step: int, epoch: int, values: dict[str, float]) -> None:
    """One point per step: a resumed attempt's point replaces what a lost attempt wrote."""
    session.execute(delete(MetricPoint).where(MetricPoint.job_id == job_id, MetricPoint.step == step))
    session.add(MetricPoint(job_id=job_id, step=step, epoch=epoch, values=values))


def drop_metrics_after(session: Session, job_id: str, step: int, epoch: int) -> None:
    """A resumed attempt repeats the steps after its checkpoint (at ``step``, the end of
    epoch ``epoch``): what a lost attempt recorded past it goes, so that each step and each
    periodic kNN epoch keeps one value."""
    session.execute(delete(MetricPoint).where(MetricPoint.job_id == job_id, MetricPoint.step > step))
    session.execute(
        delete(Evaluation).where(
            Evaluation.job_id == job_id, Evaluation.checkpoint_id.is_(None), Evaluation.epoch > epoch
        )
    )


def metric_series(session: Session, job_id: str, points: int | None = None) -> dict[str, list[dict[str, Any]]]:
    """``{name: [{"step", "epoch", "value", "time"}]}`` for every value reported, in step order,
    plus ``knn_top1`` per evaluation epoch from the periodic kNN results. ``time`` is seconds
    since the job was first claimed (wall time, across resumes).

    With ``points``, each per-step series is cut to at most that many points by
    :func:`store.series.keep_extremes`; ``knn_top1`` (one point per evaluation epoch) stays whole."""
    started_at = session.scalar(select(Job.started_at).where(Job.id == job_id))
    start = started_at.timestamp() if started_at else None
    columns = read_columns(session, job_id)
    series: dict[str, list[dict[str, Any]]] = {}
    for name, (rows, values) in columns.series.items():
        if points is not None and len(rows) > points:
            kept = keep_extremes(columns.steps[rows], values, points)
            rows, values = rows[kept], values[kept]
        times = [None] * len(rows) if start is None else (columns.at[rows] - start).round(3).tolist()
        series[name] = [
            {"step": step, "epoch": epoch, "value": None if value != value else value, "time": time}  # NaN: null
            for step, epoch, value, time in zip(
                columns.steps[rows].tolist(), columns.epochs[rows].tolist(), values.tolist(), times
            )
        ]
    periodic = session.execute(
        select(Evaluation.epoch, Evaluation.top1, Evaluation.created_at)
        .where(Evaluation.job_id == job_id, Evaluation.protocol == "knn", Evaluation.checkpoint_id.is_(None))
        .order_by(Evaluation.epoch)
    ).all()
    if periodic:
        series["knn_top1"] = [
            {
                "step": None,
                "epoch": epoch,
                "value": top1,
                "time": None if start is None else round(at.timestamp() - start, 3),
            }
            for epoch, top1, at in periodic
        ]
    return series


def record_checkpoint(
    session: Session, job_id: str, path: str, *, epoch: int, step: int, final: bool, size_bytes: int
) -> Checkpoint:
    """Insert or refresh the row for ``path`` (``last.pt`` is rewritten in place)."""
    checkpoint = session.scalar(select(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.path == path))
    if checkpoint is None:
        checkpoint = Checkpoint(job_id=job_id, path=path, epoch=epoch, step=step, final=final, size_bytes=size_bytes)
        session.add(checkpoint)
    else:
        checkpoint.epoch, checkpoint.step, checkpoint.final, checkpoint.size_bytes = epoch, step, final, size_bytes
    session.flush()
    return checkpoint


def latest_checkpoint(session: Session, job_id: str) -> Checkpoint | None:
    return session.scalar(
        select(Checkpoint)
        .where(Checkpoint.job_id == job_id)
        .order_by(Checkpoint.step.desc(), Checkpoint.final.desc(), Checkpoint.id.desc())
        .limit(1)
    )


def checkpoints_newest_first(session: Session, job_id: str) -> list[Checkpoint]:
    return list(
        session.scalars(
            select(Checkpoint)
            .where(Checkpoint.job_id == job_id)
            .order_by(Checkpoint.step.desc(), Checkpoint.final.desc(), Checkpoint.id.desc())
        )
    )


def get_checkpoint(session: Session, checkpoint_id: int, owner: str) -> Checkpoint | None:
    return session.scalar(
        select(Checkpoint)
        .join(Job, Job.id == Checkpoint.job_id)
        .where(Checkpoint.id == checkpoint_id, Job.owner == owner)
    )


def list_checkpoints(session: Session, owner: str, job_id: str | None = None, limit: int = 100) -> list[Checkpoint]:
    query = select(Checkpoint).join(Job, Job.id == Checkpoint.job_id).where(Job.owner == owner)
    if job_id is not None:
        query = query.where(Checkpoint.job_id == job_id)
    return list(session.scalars(query.order_by(Checkpoint.id.desc()).limit(limit)))


def record_evaluation(session: Session, job_id: str, checkpoint_id: int | None, result: dict[str, Any]) -> Evaluation:
    """``result`` is cssl_core's ``EvalResult.to_dict()``."""
    evaluation = Evaluation(
        job_id=job_id,
        checkpoint_id=checkpoint_id,
        protocol=result["protocol"],
        top1=result.get("top1"),
        top5=result.get("top5"),
        epoch=result.get("epoch"),
        dataset=result["dataset"],
        parameters=result.get("parameters") or {},
        num_train=result["num_train"],
        num_test=result["num_test"],
        extra=result.get("extra") or {},
    )
    session.add(evaluation)
    session.flush()
    return evaluation


def get_evaluation(session: Session, evaluation_id: int, owner: str) -> Evaluation | None:
    return session.scalar(
        select(Evaluation)
        .join(Job, Job.id == Evaluation.job_id)
        .where(Evaluation.id == evaluation_id, Job.owner == owner)
    )


def list_evaluations(
    session: Session,
    owner: str,
    job_id: str | None = None,
    checkpoint_id: int | None = None,
    limit: int = 100,
    protocol: str | None = None,
) -> list[Evaluation]:
    query = select(Evaluation).join(Job, Job.id == Evaluation.job_id).where(Job.owner == owner)
    if job_id is not None:
        query = query.where(Evaluation.job_id == job_id)
    if checkpoint_id is not None:
        query = query.where(Evaluation.checkpoint_id == checkpoint_id)
    if protocol is not None:
        query = query.where(Evaluation.protocol == protocol)
    return list(session.scalars(query.order_by(Evaluation.id).limit(limit)))


def leaderboard(
    session: Session,
    owner: str,
    *,
    dataset: str | None = None,
    protocol: str | None = None,
    backbone: str | None = None,
    group_by: str | None = None,
) -> list[Row]:
    """For each (data set, protocol, method), the best top-1 of the owner's evaluations of a succeeded
    pretrain job's final checkpoint (whichever job ran the evaluation; never the periodic kNN,
    which has no checkpoint), with what that pretraining cost; sorted by data set, protocol and
    top-1, best first. One query: the ranking is a window over the candidates.

    ``group_by`` names a top-level key of the pretrain job's provenance (``device``, ``torch``,
    ``code``, ...): each of its values then ranks apart, and a row's ``group`` holds the value
    (null for a job recorded without one)."""
    group = Job.provenance[group_by].as_string() if group_by is not None else cast(null(), String)
    partition = (Evaluation.dataset, Evaluation.protocol, Job.method, *([group] if group_by is not None else []))
    candidates = (
        select(
            Job.method,
            Evaluation.dataset,
            Evaluation.protocol,
            Job.config["backbone"].as_string().label("backbone"),
            Evaluation.top1,
            Evaluation.top5,
            Job.id.label("job_id"),
            Evaluation.checkpoint_id,
            Evaluation.id.label("evaluation_id"),
            Job.result["train_seconds"].as_float().label("train_seconds"),
            Job.result["images_per_second"].as_float().label("images_per_second"),
            Job.result["epochs_completed"].as_float().label("epochs"),
            Job.config["batch_size"].as_integer().label("batch_size"),
            group.label("group"),
            func.row_number()
            .over(
                partition_by=partition,
                order_by=(Evaluation.top1.desc(), Evaluation.id),
            )
            .label("rank"),
        )
        .join(Checkpoint, Checkpoint.id == Evaluation.checkpoint_id)
        .join(Job, Job.id == Checkpoint.job_id)
        .where(
            Job.owner == owner,
            Job.kind == "pretrain",
            Job.status == "succeeded",
            Checkpoint.final,
            Evaluation.top1.is_not(None),
        )
    )
    if dataset is not None:
        candidates = candidates.where(Evaluation.dataset == dataset)
    if protocol is not None:
        candidates = candidates.where(Evaluation.protocol == protocol)
    if backbone is not None:
        candidates = candidates.where(Job.config["backbone"].as_string() == backbone)
    ranked = candidates.subquery()
    best = select(*[c for c in ranked.c if c.name != "rank"]).where(ranked.c.rank == 1)
    order = (ranked.c.dataset, ranked.c.protocol, ranked.c.top1.desc(), ranked.c.method, ranked.c.group)
    return list(session.execute(best.order_by(*order)))


def final_evaluations(session: Session, job_id: str) -> list[Evaluation]:
    """The protocol results on stored checkpoints (not the periodic kNN during training)."""
    return list(
        session.scalars(
            select(Evaluation)
            .where(Evaluation.job_id == job_id, Evaluation.checkpoint_id.is_not(None))
            .order_by(Evaluation.id)
        )
    )
