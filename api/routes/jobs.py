"""/v1/jobs: submit, list, read, cancel, and follow jobs."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Header, Path, Query, Request, Response
from fastapi.responses import PlainTextResponse, StreamingResponse

from api import events, submission
from api.deps import CurrentCaller, CurrentOwner, PublisherDep, ReadSessionDep, SessionDep, SettingsDep
from api.problems import ProblemError, field_error, problem
from api.ratelimit import TOO_MANY, holding, limit_submissions, too_many
from api.routes.artifacts import artifact_file
from api.schemas import (
    EVAL_EXAMPLE,
    JOB_ID_PATTERN,
    MAX_ROW_ID,
    PRETRAIN_EXAMPLE,
    TRY_EXAMPLE,
    JobCreate,
    JobKind,
    JobList,
    JobMetrics,
    JobPublic,
    JobStatus,
)
from api.views import job_public
from api.yamlbody import YamlBodyRoute, yaml_request_body
from store import jobs, records
from store.models import Job

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], route_class=YamlBodyRoute)

NOT_FOUND = {404: problem("No such job for this token's owner")}
JobId = Annotated[str, Path(pattern=JOB_ID_PATTERN, description="A job id: 32 hex digits")]
# SSE ids are non-negative integers; a Last-Event-ID that is not one is ignored, as the SSE
# spec has clients ignore an id they cannot use.
EVENT_ID = re.compile(r"[0-9]{1,10}")
# Any owner may submit up to this priority; above it takes an admin token.
DEFAULT_PRIORITY = 5


def job_links(job_id: str) -> dict:
    """OpenAPI links from a response that names a job (``job_id``: a runtime expression) to the
    routes that take it."""
    path = {"job_id": job_id}
    return {
        "GetJob": {"operationRef": "#/paths/~1v1~1jobs~1{job_id}/get", "parameters": path},
        "CancelJob": {"operationRef": "#/paths/~1v1~1jobs~1{job_id}~1cancel/post", "parameters": path},
        "JobEvents": {"operationRef": "#/paths/~1v1~1jobs~1{job_id}~1events/get", "parameters": path},
        "JobMetrics": {"operationRef": "#/paths/~1v1~1jobs~1{job_id}~1metrics/get", "parameters": path},
        "JobLogs": {"operationRef": "#/paths/~1v1~1jobs~1{job_id}~1logs/get", "parameters": path},
        "JobCheckpoints": {"operationRef": "#/paths/~1v1~1checkpoints/get", "parameters": {"job": job_id}},
        "JobEvaluations": {"operationRef": "#/paths/~1v1~1evaluations/get", "parameters": {"job": job_id}},
    }


def _owned_job(session, job_id: str, owner: str) -> Job:
    job = jobs.get_job(session, job_id, owner)
    if job is None:
        raise ProblemError(404, f"no job {job_id}; list yours with GET /v1/jobs")
    return job


@router.post(
    "",
    status_code=202,
    response_model=JobPublic,
    responses={
        202: {
            "description": "Queued",
            "headers": {
                "Location": {"description": "The job's URL", "required": True, "schema": {"type": "string"}},
                "Idempotent-Replayed": {
                    "description": "`true` when an Idempotency-Key returned an earlier job",
                    "schema": {"type": "string", "enum": ["true"]},
                },
            },
            "links": job_links("$response.body#/id"),
        },
        403: problem("A priority above the default needs an admin token"),
        409: problem("The upload it names is not ready: still unpacking, failed, or being deleted"),
        422: problem(
            "A field is invalid, or names something that does not exist or is not yours; `errors` names each one"
        ),
        429: TOO_MANY,
    },
    dependencies=[Depends(limit_submissions)],
    summary="Submit a pretraining or evaluation job",
    description="The body is JSON, or the same document as YAML (`Content-Type: application/yaml`; "
    "`application/x-yaml` and `text/yaml` work too).",
    openapi_extra=yaml_request_body("#/components/schemas/JobCreate"),
)
def submit_job(
    session: SessionDep,
    caller: CurrentCaller,
    publisher: PublisherDep,
    settings: SettingsDep,
    response: Response,
    body: Annotated[
        JobCreate,
        Body(
            openapi_examples={
                "pretrain": {"value": PRETRAIN_EXAMPLE},
                "eval": {"value": EVAL_EXAMPLE},
                "try": {"summary": "Needs no data: generated images", "value": TRY_EXAMPLE},
            }
        ),
    ],
    idempotency_key: Annotated[
        str | None,
        Header(max_length=255, description="Retry safely: the same key and body returns the first job"),
    ] = None,
) -> JobPublic:
    owner = caller.owner
    if body.priority > DEFAULT_PRIORITY and not caller.admin:
        raise ProblemError(
            403,
            f"priority {body.priority} needs an admin token (`cssl token create --owner NAME --admin`); "
            f"submit at priority {DEFAULT_PRIORITY} or lower",
            title="Priority needs an admin token",
            errors=[field_error(["body", "priority"], f"at most {DEFAULT_PRIORITY} without an admin token")],
        )
    new = submission.resolve(session, owner, body, settings)
    if settings.max_queued_jobs and not (idempotency_key and jobs.idempotent_job(session, owner, idempotency_key)):
        queued = jobs.count_jobs(session, owner, "queued")
        if queued >= settings.max_queued_jobs:
            raise too_many(
                "CSSL_MAX_QUEUED_JOBS",
                f"too many queued jobs: {owner} has {queued} and each owner may have {settings.max_queued_jobs} "
                "(CSSL_MAX_QUEUED_JOBS); submit again once some have started, or cancel some",
                title="Too many queued jobs",
            )
    try:
        job, created = jobs.create_job(
            session, owner, new, idempotency_key=idempotency_key, request_hash=submission.request_hash(body)
        )
    except jobs.IdempotencyConflict as conflict:
        raise ProblemError(
            422,
            f"Idempotency-Key {idempotency_key!r} was used for job {conflict.job.id} with another body; "
            "use a new key for a new job",
            title="Idempotency key reused",
            errors=[
                {
                    "loc": ["header", "Idempotency-Key"],
                    "msg": "used before with another body",
                    "type": "idempotency_conflict",
                }
            ],
        ) from None
    # The row must be committed before a worker can claim it.
    session.commit()
    if created:
        if publisher.send(job.id, job.priority):
            jobs.mark_published(session, job.id)
    else:
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return job_public(job)


@router.get(
    "",
    response_model=JobList,
    responses={200: {"links": job_links("$response.body#/items/0/id")}},
    summary="List your jobs, newest first",
)
def list_jobs(
    request: Request,
    session: ReadSessionDep,
    owner: CurrentOwner,
    status: JobStatus | None = None,
    kind: JobKind | None = None,
    method: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="A method's name")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_ROW_ID)] = 0,
) -> JobList:
    rows, more = jobs.list_jobs(session, owner, status=status, kind=kind, method=method, limit=limit, offset=offset)
    next_page = str(request.url.include_query_params(offset=offset + limit, limit=limit)) if more else None
    return JobList(items=[job_public(job) for job in rows], next=next_page)


@router.get(
    "/{job_id}",
    response_model=JobPublic,
    responses={**NOT_FOUND, 200: {"links": job_links("$response.body#/id")}},
    summary="A job's status, progress and latest metrics",
)
def get_job(job_id: JobId, session: ReadSessionDep, owner: CurrentOwner) -> JobPublic:
    return job_public(_owned_job(session, job_id, owner))


@router.post(
    "/{job_id}/cancel",
    status_code=202,
    response_model=JobPublic,
    responses={
        **NOT_FOUND,
        202: {"links": job_links("$response.body#/id")},
        409: problem("The job has already finished"),
    },
    summary="Cancel: a queued job never runs; a running one stops at its next step and keeps its checkpoint",
)
def cancel_job(job_id: JobId, session: SessionDep, owner: CurrentOwner) -> JobPublic:
    job = _owned_job(session, job_id, owner)
    if job.status in ("succeeded", "failed"):
        raise ProblemError(409, f"job {job_id} has already {job.status}; there is nothing to cancel")
    return job_public(jobs.request_cancel(session, job))


@router.get(
    "/{job_id}/metrics", response_model=JobMetrics, responses=NOT_FOUND, summary="Time series of a job's metrics"
)
def get_metrics(
    job_id: JobId,
    session: ReadSessionDep,
    owner: CurrentOwner,
    points: Annotated[
        int | None,
        Query(
            ge=2,
            le=100_000,
            description="At most this many points per series, for a plot: the first and last point "
            "and, in each of (points - 2) / 2 equal step ranges, the lowest and highest value; absent: every point",
        ),
    ] = None,
) -> JobMetrics:
    job = _owned_job(session, job_id, owner)
    return JobMetrics(job_id=job.id, series=records.metric_series(session, job.id, points))


@router.get(
    "/{job_id}/events",
    responses={
        **NOT_FOUND,
        200: {
            "content": {
                "text/event-stream": {"example": 'id: 7\nevent: progress\ndata: {"epoch":0,"step":10,...}\n\n'}
            },
            "description": "Events `state`, `progress`, `checkpoint`, `evaluation`, `cancel_requested`; "
            "the stream ends with `end` once the job has finished",
        },
        429: TOO_MANY,
    },
    response_class=StreamingResponse,
    summary="Server-Sent Events: progress and state changes as they happen",
)
def get_events(
    job_id: JobId,
    request: Request,
    session: ReadSessionDep,
    owner: CurrentOwner,
    last_event_id: Annotated[
        str | None,
        Header(description="Resume after this event id; a value that is not a non-negative integer is ignored"),
    ] = None,
    after: Annotated[
        int | None, Query(ge=0, le=MAX_ROW_ID, description="Same as Last-Event-ID, for clients that cannot set headers")
    ] = None,
) -> StreamingResponse:
    job = _owned_job(session, job_id, owner)
    resume = EVENT_ID.fullmatch(last_event_id.strip()) if last_event_id else None
    start = int(resume.group()) if resume and int(resume.group()) <= MAX_ROW_ID else (after or 0)
    slot = request.app.state.limits.open_stream(owner)
    return StreamingResponse(
        holding(slot, events.stream(request, request.app.state.read_sessions, job.id, start)),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get(
    "/{job_id}/logs",
    response_class=PlainTextResponse,
    responses={**NOT_FOUND, 200: {"content": {"text/plain": {}}}},
    summary="The worker's log for this job",
)
def get_logs(
    job_id: JobId,
    session: ReadSessionDep,
    owner: CurrentOwner,
    settings: SettingsDep,
    tail: Annotated[int | None, Query(ge=1, le=MAX_ROW_ID, description="Only the last N lines")] = None,
) -> PlainTextResponse:
    job = _owned_job(session, job_id, owner)
    path = artifact_file(settings.artifact_root, f"jobs/{job.id}/job.log")
    text = path.read_text(encoding="utf-8", errors="replace") if path else ""
    if tail is not None:
        text = "".join(text.splitlines(keepends=True)[-tail:])
    return PlainTextResponse(text)
