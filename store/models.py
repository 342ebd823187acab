"""Tables. API request and response shapes live in ``api/schemas.py``, not here."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL_STATUSES = ("succeeded", "failed", "cancelled")
JOB_KINDS = ("pretrain", "eval")
# What a webhook endpoint hears of by default: a job's end.
WEBHOOK_DEFAULT_EVENTS = ("succeeded", "failed", "cancelled")
# The key of a job's config that holds its overrides of the service's tracking sinks (MLflow,
# W&B): never a training option, so the worker takes it out before building the run's config.
TRACKING_KEY = "tracking"


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_job_id() -> str:
    return uuid.uuid4().hex


class UTCDateTime(TypeDecorator):
    """Aware UTC datetimes on every backend (SQLite hands back naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime; use store.models.utcnow()")
        return value

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


JSONType = JSON().with_variant(JSONB(), "postgresql")
# SQLite only auto-increments an INTEGER PRIMARY KEY.
EventId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSONType, list[str]: JSONType, datetime: UTCDateTime}


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    owner: Mapped[str] = mapped_column(String(128), index=True)
    # sha256 of the token: tokens are 256-bit random, so a fast hash is enough.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    # May submit above the default priority.
    admin: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("owner", "idempotency_key", name="uq_jobs_owner_idempotency_key"),
        Index("ix_jobs_owner_created_at", "owner", "created_at"),
        Index("ix_jobs_status_published_at", "status", "published_at"),
        Index("ix_jobs_owner_name", "owner", "name"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_job_id)
    owner: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16))
    method: Mapped[str] = mapped_column(String(64))
    dataset: Mapped[str] = mapped_column(String(64))
    dataset_path: Mapped[str | None] = mapped_column(Text)
    # Pretrain: the full flat config (cssl_core's PretrainConfig.to_dict()), enough to rerun.
    # Eval: per-protocol parameters and the device. Either: its tracking overrides (TRACKING_KEY).
    config: Mapped[dict[str, Any]]
    evaluate: Mapped[list[str]]
    source_checkpoint_id: Mapped[int | None]
    priority: Mapped[int] = mapped_column(default=5)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    attempt: Mapped[int] = mapped_column(default=0)
    worker: Mapped[str | None] = mapped_column(String(255))
    error: Mapped[str | None] = mapped_column(Text)
    progress: Mapped[dict[str, Any] | None]
    latest_metrics: Mapped[dict[str, Any] | None]
    result: Mapped[dict[str, Any] | None]
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    published_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # The last event number given to this job (``JobEvent.seq``); see records.add_event.
    event_seq: Mapped[int] = mapped_column(default=0, server_default=text("0"))
    # The checkpoint step the current attempt started from (0: from scratch).
    resumed_from_step: Mapped[int | None]
    # Attempts lost without a new checkpoint; only these count towards CSSL_MAX_ATTEMPTS.
    stalled_attempts: Mapped[int] = mapped_column(default=0, server_default=text("0"))
    # A label its owner chose (not unique) and its tags (``JobTag``), both searchable.
    name: Mapped[str | None] = mapped_column(String(200))
    # What made the run: code version, libraries, device, determinism flags, host, data
    # fingerprint; written by the worker when an attempt starts (see cssl_core.provenance).
    provenance: Mapped[dict[str, Any] | None]
    # What the job asked for (device, devices, nodes, memory_gib, pool; ``dispatch.routing``),
    # which picks its queue; null: the default queue, which any default worker takes.
    resources: Mapped[dict[str, Any] | None]
    # Where the running attempt's nodes meet, for a job on several nodes: its first node's c10d
    # rendezvous endpoint ("host:port"), the number of nodes, and the checkpoint every node resumes
    # from (``store.jobs.record_rendezvous``); cleared by each claim.
    rendezvous: Mapped[dict[str, Any] | None]
    tag_rows: Mapped[list[JobTag]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True, lazy="selectin", order_by="JobTag.key"
    )
    webhook_rows: Mapped[list[JobWebhook]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True, lazy="selectin", order_by="JobWebhook.webhook_id"
    )

    @property
    def tags(self) -> dict[str, str]:
        return {tag.key: tag.value for tag in self.tag_rows}

    @property
    def webhooks(self) -> list[str]:
        return [row.webhook_id for row in self.webhook_rows]


class JobTag(Base):
    """One key/value tag of a job; ``GET /v1/jobs?tag=key:value`` finds jobs by them."""

    __tablename__ = "job_tags"
    __table_args__ = (Index("ix_job_tags_key_value", "key", "value"),)

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(200))


class JobEvent(Base):
    """What ``GET /v1/jobs/{id}/events`` streams; ``seq`` (1, 2, 3, ... per job) is the SSE id."""

    __tablename__ = "job_events"
    __table_args__ = (
        Index("ix_job_events_job_id_id", "job_id", "id"),
        UniqueConstraint("job_id", "seq", name="uq_job_events_job_id_seq"),
    )

    id: Mapped[int] = mapped_column(EventId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    seq: Mapped[int]
    type: Mapped[str] = mapped_column(String(32))
    data: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class MetricPoint(Base):
    """One progress report: loss, lr, images/s and the method's own statistics at a step."""

    __tablename__ = "metric_points"
    __table_args__ = (
        Index("ix_metric_points_job_id_step", "job_id", "step"),
        UniqueConstraint("job_id", "step", name="uq_metric_points_job_id_step"),
    )

    id: Mapped[int] = mapped_column(EventId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    step: Mapped[int]
    epoch: Mapped[int]
    values: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("job_id", "path", name="uq_checkpoints_job_id_path"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    # Relative to the artifact root, so the root can move between hosts and containers.
    path: Mapped[str] = mapped_column(Text)
    epoch: Mapped[int]
    step: Mapped[int]
    final: Mapped[bool] = mapped_column(Boolean, default=False)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Evaluation(Base):
    """A protocol's result (kNN, linear probe, fine-tuning, distillation, embedding): periodic kNN
    during training (no checkpoint) or a protocol run on a stored checkpoint."""

    __tablename__ = "evaluations"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    checkpoint_id: Mapped[int | None] = mapped_column(ForeignKey("checkpoints.id", ondelete="SET NULL"), index=True)
    protocol: Mapped[str] = mapped_column(String(16))
    # Null for a result without an accuracy: an embedding's points are in ``extra``.
    top1: Mapped[float | None] = mapped_column(Float)
    top5: Mapped[float | None] = mapped_column(Float)
    epoch: Mapped[int | None]
    dataset: Mapped[str] = mapped_column(String(64))
    parameters: Mapped[dict[str, Any]]
    num_train: Mapped[int]
    num_test: Mapped[int]
    # What the protocol reports besides accuracy (fine-tuning's labelled images, a teacher's top-1).
    extra: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default=text("'{}'"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Dataset(Base):
    """A data set a user uploaded: a .tar.gz unpacked under the first data root, owned like a job."""

    __tablename__ = "datasets"
    __table_args__ = (Index("ix_datasets_owner_created_at", "owner", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128))
    name: Mapped[str] = mapped_column(String(128))
    # Of the archive as received.
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    num_files: Mapped[int]
    # Relative to the first data root (uploads/<id>): the data path of the jobs that name it.
    path: Mapped[str] = mapped_column(Text)
    # unpacking (in the background, after the archive arrived), then ready or failed; deleting
    # while its files are being removed.
    status: Mapped[str] = mapped_column(String(16), default="ready")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Why it failed, said to the uploader.
    error: Mapped[str | None] = mapped_column(Text)
    # What its files take on disk once unpacked; counted against the owner's quota.
    unpacked_bytes: Mapped[int | None] = mapped_column(BigInteger)
    # Written as unpacking goes on: an upload silent for CSSL_HEARTBEAT_TIMEOUT lost its API process.
    heartbeat_at: Mapped[datetime | None]


class Webhook(Base):
    """An owner's webhook endpoint: the job events it hears of (``events``, job statuses) for
    all the owner's jobs, or (``jobs="named"``) only for the jobs that name it."""

    __tablename__ = "webhooks"
    __table_args__ = (Index("ix_webhooks_owner_created_at", "owner", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_job_id)
    owner: Mapped[str] = mapped_column(String(128))
    url: Mapped[str] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(String(500))
    events: Mapped[list[str]]
    jobs: Mapped[str] = mapped_column(String(8), default="all")
    # whsec_<base64>: kept in clear, since signing needs it; shown to the owner once.
    secret: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class JobWebhook(Base):
    """An endpoint a job named at submission: it hears of this job even when it hears of named jobs only."""

    __tablename__ = "job_webhooks"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    webhook_id: Mapped[str] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"), primary_key=True, index=True)


class WebhookMessage(Base):
    """The outbox: one event for one endpoint, written in the transaction of the state change it
    tells of, and sent (again, until a 2xx or the last attempt) by the API's webhook sender.
    ``id`` is the ``webhook-id`` header, the same on every attempt."""

    __tablename__ = "webhook_messages"
    __table_args__ = (
        Index("ix_webhook_messages_status_next_attempt_at", "status", "next_attempt_at"),
        Index("ix_webhook_messages_webhook_id_created_at", "webhook_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    webhook_id: Mapped[str] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"))
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    # job.<status>, or ping
    type: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]]
    # pending until delivered (a 2xx) or failed (the last attempt was not)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    # Attempts started; one more each time a sender claims it.
    attempts: Mapped[int] = mapped_column(default=0)
    # Due then; while a sender holds it, when the sender's claim lapses.
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class WebhookDelivery(Base):
    """One attempt to deliver a message: the receiver's status code, or why there was none."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_message_id", "message_id"),)

    id: Mapped[int] = mapped_column(EventId, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(ForeignKey("webhook_messages.id", ondelete="CASCADE"))
    attempt: Mapped[int]
    status_code: Mapped[int | None]
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Worker(Base):
    """A running worker and what it offers (``cssl worker --queues --devices --memory-gib``):
    written when it starts, its heartbeat renewed while it runs, removed when it stops. The
    API reads the live ones to say why a queued job waits."""

    __tablename__ = "workers"

    # Celery's name of the worker (name@host), as jobs.worker names it.
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    # The kinds it takes (default, cpu, gpu, gpu-<pool>).
    queues: Mapped[list[str]]
    # Its GPUs' indices on its host.
    devices: Mapped[list[str]]
    memory_gib: Mapped[float | None] = mapped_column(Float)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow)
