"""Webhook endpoints and their outbox.

A job's state change writes one ``WebhookMessage`` per endpoint that hears of it, in the same
transaction as the change (:func:`enqueue_job_event`, called from ``store.jobs``): a change
that commits is told, one that rolls back is not, and a process that dies loses nothing. The
API's sender (``dispatch.webhooks``) claims due messages, posts them and records each attempt
(:func:`claim_due`, :func:`record_attempt`). A claim holds a message for a while rather than
locking it for the whole request: a sender that dies mid-request lets it fall due again.
"""

from __future__ import annotations

import base64
import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, exists, or_, select, update
from sqlalchemy.orm import Session

from store.models import Job, JobTag, JobWebhook, Webhook, WebhookDelivery, WebhookMessage, utcnow

SECRET_PREFIX = "whsec_"
# Standard Webhooks' secrets are 24 to 64 bytes.
SECRET_BYTES = 24
PING = "ping"


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def new_message_id() -> str:
    return "msg_" + uuid.uuid4().hex


def create_webhook(
    session: Session, owner: str, *, url: str, description: str | None, events: list[str], jobs: str
) -> Webhook:
    webhook = Webhook(
        owner=owner, url=url, description=description, events=list(events), jobs=jobs, secret=new_secret()
    )
    session.add(webhook)
    session.flush()
    return webhook


def list_webhooks(session: Session, owner: str) -> list[Webhook]:
    return list(session.scalars(select(Webhook).where(Webhook.owner == owner).order_by(Webhook.created_at, Webhook.id)))


def get_webhook(session: Session, webhook_id: str, owner: str) -> Webhook | None:
    return session.scalar(select(Webhook).where(Webhook.id == webhook_id, Webhook.owner == owner))


def unknown_webhooks(session: Session, owner: str, ids: list[str]) -> list[str]:
    """Those of ``ids`` that are not endpoints of ``owner``, in order."""
    if not ids:
        return []
    mine = set(session.scalars(select(Webhook.id).where(Webhook.owner == owner, Webhook.id.in_(ids))))
    return [webhook_id for webhook_id in ids if webhook_id not in mine]


def delete_webhook(session: Session, webhook_id: str) -> None:
    """With its messages (pending ones too: nothing more is sent to it) and their attempts."""
    session.execute(delete(Webhook).where(Webhook.id == webhook_id))


def enqueue_job_event(session: Session, job_id: str, status: str) -> int:
    """Messages telling of the job's new ``status`` to each endpoint of its owner that hears of
    it; returns how many. Runs in the transaction that changes the status."""
    named = exists().where(JobWebhook.job_id == job_id, JobWebhook.webhook_id == Webhook.id)
    hooks = session.execute(
        select(Webhook.id, Webhook.events)
        .join(Job, Job.owner == Webhook.owner)
        .where(Job.id == job_id, or_(Webhook.jobs == "all", named))
    ).all()
    listening = [webhook_id for webhook_id, events in hooks if status in events]
    if not listening:
        return 0
    payload = _envelope(f"job.{status}", _job_data(session, job_id, status))
    for webhook_id in listening:
        session.add(
            WebhookMessage(
                id=new_message_id(), webhook_id=webhook_id, job_id=job_id, type=payload["type"], payload=payload
            )
        )
    return len(listening)


def enqueue_ping(session: Session, webhook: Webhook) -> WebhookMessage:
    message = WebhookMessage(
        id=new_message_id(),
        webhook_id=webhook.id,
        job_id=None,
        type=PING,
        payload=_envelope(PING, {"webhook": webhook.id}),
    )
    session.add(message)
    session.flush()
    return message


def _envelope(type: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"type": type, "timestamp": utcnow().isoformat(), "data": data}


def _job_data(session: Session, job_id: str, status: str) -> dict[str, Any]:
    # Columns, not the ORM object: the status was changed by an UPDATE that the session's copy
    # of the job, if it holds one, has not seen.
    job = session.execute(
        select(Job.id, Job.kind, Job.name, Job.method, Job.dataset, Job.attempt, Job.error, Job.latest_metrics).where(
            Job.id == job_id
        )
    ).one()
    tags = dict(session.execute(select(JobTag.key, JobTag.value).where(JobTag.job_id == job_id)).all())
    base = f"/v1/jobs/{job_id}"
    return {
        "id": job.id,
        "kind": job.kind,
        "name": job.name,
        "tags": tags,
        "status": status,
        "method": job.method,
        "dataset": job.dataset,
        "attempt": job.attempt,
        "error": job.error if status == "failed" else None,
        "latest_metrics": job.latest_metrics or {},
        "links": {"self": base, "events": f"{base}/events", "metrics": f"{base}/metrics", "logs": f"{base}/logs"},
    }


# The sender's side.


@dataclass(frozen=True)
class Outgoing:
    """A message claimed for one attempt."""

    message_id: str
    webhook_id: str
    attempt: int
    url: str
    secret: str
    payload: dict[str, Any]


def claim_due(session: Session, limit: int, hold_seconds: float) -> list[Outgoing]:
    """Up to ``limit`` due messages, each held for ``hold_seconds`` and counted as one attempt
    more. On Postgres, senders in other processes skip the rows this one is claiming."""
    now = utcnow()
    messages = session.scalars(
        select(WebhookMessage)
        .where(WebhookMessage.status == "pending", WebhookMessage.next_attempt_at <= now)
        .order_by(WebhookMessage.next_attempt_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    if not messages:
        return []
    hooks = {
        webhook_id: (url, secret)
        for webhook_id, url, secret in session.execute(
            select(Webhook.id, Webhook.url, Webhook.secret).where(Webhook.id.in_({m.webhook_id for m in messages}))
        )
    }
    claimed = []
    for message in messages:
        message.attempts += 1
        message.next_attempt_at = now + timedelta(seconds=hold_seconds)
        url, secret = hooks[message.webhook_id]
        claimed.append(Outgoing(message.id, message.webhook_id, message.attempts, url, secret, message.payload))
    return claimed


def record_attempt(
    session: Session,
    outgoing: Outgoing,
    *,
    status_code: int | None,
    error: str | None,
    duration_ms: int,
    retry_seconds: tuple[float, ...],
) -> str | None:
    """Records the attempt and what follows: ``delivered`` (a 2xx), ``pending`` (due again after
    ``retry_seconds[attempt - 1]``) or ``failed`` (no retries left). None: the message is gone
    (its endpoint was deleted) or another claim took it over, and nothing is recorded."""
    now = utcnow()
    if status_code is not None and 200 <= status_code < 300:
        values: dict[str, Any] = {"status": "delivered", "finished_at": now}
    elif outgoing.attempt > len(retry_seconds):
        values = {"status": "failed", "finished_at": now}
    else:
        values = {"next_attempt_at": now + timedelta(seconds=retry_seconds[outgoing.attempt - 1])}
    row = session.execute(
        update(WebhookMessage)
        .where(
            WebhookMessage.id == outgoing.message_id,
            WebhookMessage.status == "pending",
            WebhookMessage.attempts == outgoing.attempt,
        )
        .values(**values)
        .returning(WebhookMessage.status)
    ).first()
    if row is None:
        return None
    session.add(
        WebhookDelivery(
            message_id=outgoing.message_id,
            attempt=outgoing.attempt,
            status_code=status_code,
            error=error,
            duration_ms=duration_ms,
        )
    )
    return row[0]


def list_deliveries(session: Session, webhook_id: str, limit: int) -> list[tuple[WebhookDelivery, WebhookMessage]]:
    """The endpoint's latest attempts, newest first, each with its message."""
    return list(
        session.execute(
            select(WebhookDelivery, WebhookMessage)
            .join(WebhookMessage, WebhookMessage.id == WebhookDelivery.message_id)
            .where(WebhookMessage.webhook_id == webhook_id)
            .order_by(WebhookDelivery.id.desc())
            .limit(limit)
        ).tuples()
    )
