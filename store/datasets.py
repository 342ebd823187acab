"""Uploaded datasets: rows owned like jobs, and the guard that keeps an upload a queued or
running job uses from being deleted under it (the files are in ``store.data_roots``).

An upload is ``unpacking`` from the moment its archive has arrived, then ``ready`` once its
files are unpacked or ``failed`` with the reason in ``error``; ``deleting`` while its files are
removed. Each change out of ``unpacking`` is one guarded update, so an unpacking that finishes,
one declared lost by the sweep (no heartbeat for ``CSSL_HEARTBEAT_TIMEOUT``) and a delete have
exactly one winner. A submission takes a shared lock on the ready row until its job commits, and a delete first
updates the row (which waits for that lock) and only then looks for jobs using it, so a job
and the delete of its data cannot both go through; on SQLite every writer is serial anyway.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from store.data_roots import upload_path
from store.models import Dataset, Job, utcnow

ACTIVE_JOB_STATUSES = ("queued", "running")
LOST = "the service stopped while unpacking it; upload it again"


def new_dataset_id() -> str:
    return uuid.uuid4().hex


def create_dataset(
    session: Session,
    *,
    id: str,
    owner: str,
    name: str,
    sha256: str,
    size_bytes: int,
    num_files: int = 0,
    status: str = "unpacking",
) -> Dataset:
    dataset = Dataset(
        id=id,
        owner=owner,
        name=name,
        sha256=sha256,
        size_bytes=size_bytes,
        num_files=num_files,
        path=upload_path(id),
        status=status,
        heartbeat_at=utcnow() if status == "unpacking" else None,
    )
    session.add(dataset)
    session.flush()
    return dataset


def disk_use(session: Session, owner: str, *, excluding: str | None = None) -> int:
    """Bytes the owner's uploads take on disk: their files once unpacked; the archive, until then."""
    query = select(func.coalesce(func.sum(func.coalesce(Dataset.unpacked_bytes, Dataset.size_bytes)), 0)).where(
        Dataset.owner == owner, Dataset.status != "failed"
    )
    if excluding is not None:
        query = query.where(Dataset.id != excluding)
    return int(session.scalar(query))


def beat(session: Session, dataset_id: str) -> bool:
    """Note that the upload is still being unpacked; False when it no longer is (deleted, or
    declared lost)."""
    return (
        session.execute(
            update(Dataset).where(Dataset.id == dataset_id, Dataset.status == "unpacking").values(heartbeat_at=utcnow())
        ).rowcount
        == 1
    )


def finish_unpacking(session: Session, dataset_id: str, *, num_files: int, unpacked_bytes: int) -> bool:
    """``unpacking`` -> ``ready``; False when it was no longer unpacking."""
    return (
        session.execute(
            update(Dataset)
            .where(Dataset.id == dataset_id, Dataset.status == "unpacking")
            .values(status="ready", num_files=num_files, unpacked_bytes=unpacked_bytes, heartbeat_at=None)
        ).rowcount
        == 1
    )


def fail_unpacking(session: Session, dataset_id: str, error: str) -> bool:
    """``unpacking`` -> ``failed`` with ``error``; False when it was no longer unpacking."""
    return (
        session.execute(
            update(Dataset)
            .where(Dataset.id == dataset_id, Dataset.status == "unpacking")
            .values(status="failed", error=error, heartbeat_at=None)
        ).rowcount
        == 1
    )


def fail_lost_unpackings(session: Session, heartbeat_timeout: float) -> list[str]:
    """Uploads whose unpacking sent no heartbeat for ``heartbeat_timeout`` seconds (its API
    process stopped): ``failed``. Returns their ids."""
    cutoff = utcnow() - timedelta(seconds=heartbeat_timeout)
    lost = list(session.scalars(select(Dataset.id).where(Dataset.status == "unpacking", Dataset.heartbeat_at < cutoff)))
    return [
        dataset_id
        for dataset_id in lost
        if session.execute(
            update(Dataset)
            .where(Dataset.id == dataset_id, Dataset.status == "unpacking", Dataset.heartbeat_at < cutoff)
            .values(status="failed", error=LOST, heartbeat_at=None)
        ).rowcount
        == 1
    ]


def unpacking_ids(session: Session) -> set[str]:
    return set(session.scalars(select(Dataset.id).where(Dataset.status == "unpacking")))


def get_dataset(session: Session, dataset_id: str, owner: str) -> Dataset | None:
    return session.scalar(select(Dataset).where(Dataset.id == dataset_id, Dataset.owner == owner))


def list_datasets(session: Session, owner: str, limit: int = 100) -> list[Dataset]:
    """The owner's uploads, newest first."""
    query = select(Dataset).where(Dataset.owner == owner).order_by(Dataset.created_at.desc(), Dataset.id).limit(limit)
    return list(session.scalars(query))


def usable_dataset(session: Session, dataset_id: str, owner: str) -> Dataset | None:
    """The owner's ready upload, share-locked until the transaction (the job naming it) commits."""
    query = select(Dataset).where(Dataset.id == dataset_id, Dataset.owner == owner, Dataset.status == "ready")
    return session.scalar(query.with_for_update(read=True))


def start_delete(session: Session, dataset: Dataset) -> list[str]:
    """Mark the upload ``deleting``, unless queued or running jobs use it: then nothing changes
    and their ids are returned."""
    savepoint = session.begin_nested()
    session.execute(update(Dataset).where(Dataset.id == dataset.id).values(status="deleting"))
    users = list(
        session.scalars(
            select(Job.id).where(
                Job.owner == dataset.owner, Job.dataset_path == dataset.path, Job.status.in_(ACTIVE_JOB_STATUSES)
            )
        )
    )
    if users:
        savepoint.rollback()
    else:
        savepoint.commit()
    return users


def delete_dataset(session: Session, dataset_id: str) -> None:
    session.execute(delete(Dataset).where(Dataset.id == dataset_id))
