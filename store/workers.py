"""The workers table: what each running worker offers, and which of them are alive.

A worker writes its row when it starts (``register``), renews its heartbeat while it runs
(``beat``) and removes the row when it stops; a worker killed without a chance to do so
stops beating, and readers pass over it once its heartbeat is older than the timeout.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from store.models import Worker, utcnow

# Rows of workers silent this long are deleted when another worker registers.
FORGET_AFTER = timedelta(days=1)


def register(session: Session, name: str, offer: dict[str, Any]) -> None:
    """Write (or rewrite) the worker's row; ``offer``: queues, devices and memory_gib."""
    now = utcnow()
    session.execute(delete(Worker).where(Worker.heartbeat_at < now - FORGET_AFTER))
    session.merge(
        Worker(
            name=name,
            queues=list(offer["queues"]),
            devices=list(offer["devices"]),
            memory_gib=offer.get("memory_gib"),
            started_at=now,
            heartbeat_at=now,
        )
    )


def beat(session: Session, name: str) -> bool:
    """Renew the heartbeat; False when the row is gone (then the worker registers again)."""
    renewed = update(Worker).where(Worker.name == name).values(heartbeat_at=utcnow()).returning(Worker.name)
    return session.execute(renewed).first() is not None


def remove(session: Session, name: str) -> None:
    session.execute(delete(Worker).where(Worker.name == name))


def live_workers(session: Session, heartbeat_timeout: float) -> list[Worker]:
    """The workers heard from within ``heartbeat_timeout`` seconds, by name."""
    cutoff = utcnow() - timedelta(seconds=heartbeat_timeout)
    return list(session.scalars(select(Worker).where(Worker.heartbeat_at >= cutoff).order_by(Worker.name)))
