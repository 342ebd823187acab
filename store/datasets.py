"""Uploaded datasets: rows owned like jobs, and the guard that keeps an upload a queued or
running job uses from being deleted under it (the files are in ``store.data_roots``).

An upload is ``ready`` once its files are unpacked, ``deleting`` while they are removed. A
submission takes a shared lock on the ready row until its job commits, and a delete first
updates the row (which waits for that lock) and only then looks for jobs using it, so a job
and the delete of its data cannot both go through; on SQLite every writer is serial anyway.
"""

from __future__ import annotations

import uuid

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from store.data_roots import upload_path
from store.models import Dataset, Job

ACTIVE_JOB_STATUSES = ("queued", "running")


def new_dataset_id() -> str:
    return uuid.uuid4().hex


def create_dataset(session: Session, *, id: str, owner: str, name: str, sha256: str, size_bytes: int,
                   num_files: int) -> Dataset:
    dataset = Dataset(id=id, owner=owner, name=name, sha256=sha256, size_bytes=size_bytes, num_files=num_files,
                      path=upload_path(id), status="ready")
    session.add(dataset)
    session.flush()
    return dataset


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
    users = list(session.scalars(select(Job.id).where(
        Job.owner == dataset.owner, Job.dataset_path == dataset.path, Job.status.in_(ACTIVE_JOB_STATUSES))))
    if users:
        savepoint.rollback()
    else:
        savepoint.commit()
    return users


def delete_dataset(session: Session, dataset_id: str) -> None:
    session.execute(delete(Dataset).where(Dataset.id == dataset_id))
