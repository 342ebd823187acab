"""Table rows to response models."""

from __future__ import annotations

from api.schemas import (
    CheckpointPublic,
    DatasetPublic,
    EvaluationPublic,
    JobLinks,
    JobPublic,
    Progress,
    Timings,
    UploadPublic,
    WebhookDeliveryPublic,
    WebhookLinks,
    WebhookMessagePublic,
    WebhookPublic,
)
from cssl_core.evaluation import protocol_names
from store.data_roots import upload_id
from store.models import Checkpoint, Dataset, Evaluation, Job, Webhook, WebhookDelivery, WebhookMessage, utcnow


def job_public(job: Job, waiting_reason: str | None = None) -> JobPublic:
    base = f"/v1/jobs/{job.id}"
    end = job.finished_at or (utcnow() if job.started_at else None)
    return JobPublic(
        id=job.id,
        kind=job.kind,
        status=job.status,
        name=job.name,
        tags=job.tags,
        method=job.method,
        dataset=DatasetPublic(name=job.dataset, path=job.dataset_path, upload=upload_id(job.dataset_path)),
        config=job.config,
        evaluation_parameters={k: v for k, v in job.config.items() if k in protocol_names() and isinstance(v, dict)},
        evaluate=job.evaluate,
        priority=job.priority,
        checkpoint=job.source_checkpoint_id,
        attempt=job.attempt,
        worker=job.worker,
        cancel_requested=job.cancel_requested,
        error=job.error,
        progress=Progress(**job.progress) if job.progress else None,
        latest_metrics=job.latest_metrics or {},
        result=job.result,
        provenance=job.provenance,
        timings=Timings(
            created_at=job.created_at,
            started_at=job.started_at,
            heartbeat_at=job.heartbeat_at,
            finished_at=job.finished_at,
            queued_seconds=(job.started_at - job.created_at).total_seconds() if job.started_at else None,
            run_seconds=(end - job.started_at).total_seconds() if job.started_at and end else None,
        ),
        links=JobLinks(
            self=base,
            events=f"{base}/events",
            metrics=f"{base}/metrics",
            logs=f"{base}/logs",
            checkpoints=f"/v1/checkpoints?job={job.id}",
            evaluations=f"/v1/evaluations?job={job.id}",
        ),
        webhooks=job.webhooks,
        resources=job.resources,
        waiting_reason=waiting_reason,
    )


def checkpoint_public(checkpoint: Checkpoint) -> CheckpointPublic:
    return CheckpointPublic(
        id=checkpoint.id,
        job_id=checkpoint.job_id,
        epoch=checkpoint.epoch,
        step=checkpoint.step,
        final=checkpoint.final,
        size_bytes=checkpoint.size_bytes,
        created_at=checkpoint.created_at,
        download=f"/v1/checkpoints/{checkpoint.id}/download",
    )


def evaluation_public(evaluation: Evaluation) -> EvaluationPublic:
    return EvaluationPublic.model_validate(evaluation, from_attributes=True)


def upload_public(dataset: Dataset) -> UploadPublic:
    return UploadPublic.model_validate(dataset, from_attributes=True)


def webhook_public(webhook: Webhook) -> WebhookPublic:
    base = f"/v1/webhooks/{webhook.id}"
    return WebhookPublic(
        id=webhook.id,
        url=webhook.url,
        description=webhook.description,
        events=webhook.events,
        jobs=webhook.jobs,
        created_at=webhook.created_at,
        links=WebhookLinks(self=base, deliveries=f"{base}/deliveries", test=f"{base}/test"),
    )


def webhook_message_public(message: WebhookMessage) -> WebhookMessagePublic:
    return WebhookMessagePublic.model_validate(message, from_attributes=True)


def webhook_delivery_public(delivery: WebhookDelivery, message: WebhookMessage) -> WebhookDeliveryPublic:
    return WebhookDeliveryPublic(
        id=delivery.id,
        message_id=message.id,
        type=message.type,
        job_id=message.job_id,
        attempt=delivery.attempt,
        status_code=delivery.status_code,
        error=delivery.error,
        duration_ms=delivery.duration_ms,
        created_at=delivery.created_at,
        message_status=message.status,
    )
