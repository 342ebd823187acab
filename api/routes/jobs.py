"""/v1/jobs: submit, list, read, cancel, and follow jobs."""

from __future__ import annotations

import base64
import json
import logging
import re
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Body, Depends, Header, Path, Query, Request, Response
from fastapi.responses import PlainTextResponse, StreamingResponse

from api import events, submission
from api.deps import CurrentCaller, CurrentOwner, PublisherDep, ReadSessionDep, SessionDep, SettingsDep
from api.problems import ProblemError, field_error, invalid, problem
from api.ratelimit import TOO_MANY, holding, limit_submissions, too_many
from api.routes.artifacts import artifact_file
from api.schemas import (
    EVAL_EXAMPLE,
    JOB_ID_PATTERN,
    MAX_ROW_ID,
    MAX_TAGS,
    PRETRAIN_EXAMPLE,
    TAG_KEY_PATTERN,
    TRY_EXAMPLE,
    JobCreate,
    JobKind,
    JobList,
    JobMetrics,
    JobPublic,
    JobStatus,
    JobUpdate,
)
from api.views import job_public
from api.yamlbody import YamlBodyRoute, yaml_request_body
from dispatch.routing import Offer, Resources, waiting_reason
from store import jobs, records, workers
from store.models import Job

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/jobs", tags=["jobs"], route_class=YamlBodyRoute)

NOT_FOUND = {404: problem("No such job for this token's owner")}
JobId = Annotated[str, Path(pattern=JOB_ID_PATTERN, description="A job id: 32 hex digits")]
# SSE ids are non-negative integers; a Last-Event-ID that is not one is ignored, as the SSE
# spec has clients ignore an id they cannot use.
EVENT_ID = re.compile(r"[0-9]{1,10}")
JobSort = Literal["-created_at", "created_at", "-name", "name"]
TAG_FILTER_PATTERN = r"^[A-Za-z0-9_.-]{1,64}(:[^\x00]{0,200})?$"
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
        if publisher.send(job.id, job.priority, job.resources):
            jobs.mark_published(session, job.id)
    else:
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return job_public(job)


@router.get(
    "",
    response_model=JobList,
    responses={200: {"links": job_links("$response.body#/items/0/id")}},
    summary="Find your jobs: filter by status, method, data set, name, tags and date; sort; page by cursor",
)
def list_jobs(
    request: Request,
    session: ReadSessionDep,
    owner: CurrentOwner,
    status: JobStatus | None = None,
    kind: JobKind | None = None,
    method: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="A method's name")] = None,
    dataset: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="A data set's name")] = None,
    name: Annotated[
        str | None,
        # Postgres stores no NUL in text: a name holding one can match nothing, and the query would fail.
        Query(
            min_length=1, max_length=200, pattern=r"^[^\x00]+$", description="Jobs whose name contains this (any case)"
        ),
    ] = None,
    tag: Annotated[
        list[str],
        Query(
            max_length=MAX_TAGS,
            description="key:value, or key for any value; repeat it for jobs that have every one",
            json_schema_extra={"items": {"type": "string", "pattern": TAG_FILTER_PATTERN}},
        ),
    ] = [],  # noqa: B006 - FastAPI copies a list default per request
    created_after: Annotated[datetime | None, Query(description="Submitted at or after (ISO 8601; UTC if no zone)")] = (
        None
    ),
    created_before: Annotated[datetime | None, Query(description="Submitted before (ISO 8601; UTC if no zone)")] = (
        None
    ),
    sort: Annotated[JobSort, Query(description="created_at or name; a leading - sorts descending")] = "-created_at",
    cursor: Annotated[
        str | None, Query(max_length=400, description="From a previous page's `next`: the jobs after that page")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> JobList:
    where = jobs.JobFilter(
        status=status,
        kind=kind,
        method=method,
        dataset=dataset,
        name=name,
        tags=tuple(_tag_filter(t) for t in tag),
        created_after=_utc(created_after),
        created_before=_utc(created_before),
    )
    after = _read_cursor(cursor, sort) if cursor else None
    rows, more = jobs.list_jobs(session, owner, where, sort=sort, after=after, limit=limit)
    next_page = None
    if more:
        last = rows[-1]
        next_page = str(request.url.include_query_params(cursor=_write_cursor(sort, last), limit=limit))
    return JobList(items=[job_public(job) for job in rows], next=next_page)


def _tag_filter(text: str) -> tuple[str, str | None]:
    key, _, value = text.partition(":")
    if not re.fullmatch(TAG_KEY_PATTERN.strip("^$"), key) or len(value) > 200 or "\x00" in value:
        raise invalid(
            [
                field_error(
                    ["query", "tag"],
                    f"{text!r}: write key:value (a key of letters, digits, _ . -; a value up to 200 characters) or key",
                )
            ]
        )
    return key, value if ":" in text else None


def _utc(moment: datetime | None) -> datetime | None:
    return moment.replace(tzinfo=UTC) if moment is not None and moment.tzinfo is None else moment


def _write_cursor(sort: str, job: Job) -> str:
    value = jobs.sort_value(job, sort)
    payload = [sort, value.isoformat() if isinstance(value, datetime) else value, job.id]
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


def _read_cursor(cursor: str, sort: str) -> tuple[object, str]:
    try:
        kept_sort, value, job_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if kept_sort != sort or not isinstance(value, str) or not re.fullmatch(JOB_ID_PATTERN, job_id):
            raise ValueError(cursor)
        return (_utc(datetime.fromisoformat(value)) if sort.endswith("created_at") else value), job_id
    except (ValueError, TypeError, UnicodeDecodeError):
        raise invalid(
            [
                field_error(
                    ["query", "cursor"],
                    "not a cursor this service wrote for this sort order: start again without it, "
                    "and follow each page's `next` link",
                )
            ]
        ) from None


@router.get(
    "/{job_id}",
    response_model=JobPublic,
    responses={**NOT_FOUND, 200: {"links": job_links("$response.body#/id")}},
    summary="A job's status, progress and latest metrics",
)
def get_job(job_id: JobId, session: ReadSessionDep, owner: CurrentOwner, settings: SettingsDep) -> JobPublic:
    job = _owned_job(session, job_id, owner)
    return job_public(job, _waiting_reason(session, job, settings))


def _waiting_reason(session, job: Job, settings) -> str | None:
    """Why a queued job waits, when no live worker's offer fits it (``dispatch.routing``)."""
    if job.status != "queued":
        return None
    live = [
        Offer(tuple(w.queues), tuple(w.devices), w.memory_gib)
        for w in workers.live_workers(session, settings.heartbeat_timeout)
    ]
    return waiting_reason(Resources.from_stored(job.resources), live)


@router.patch(
    "/{job_id}",
    response_model=JobPublic,
    responses={**NOT_FOUND, 200: {"links": job_links("$response.body#/id")}},
    summary="Rename or retag a job (name null clears it; a tag set to null is removed)",
)
def update_job(job_id: JobId, body: JobUpdate, session: SessionDep, owner: CurrentOwner) -> JobPublic:
    job = _owned_job(session, job_id, owner)
    kept = {key for key in job.tags if key not in body.tags} | {k for k, v in body.tags.items() if v is not None}
    if len(kept) > MAX_TAGS:
        message = f"a job has at most {MAX_TAGS} tags; this change would leave {len(kept)}"
        raise invalid([field_error(["body", "tags"], message)])
    rename = "name" in body.model_fields_set
    return job_public(jobs.update_labels(session, job, name=body.name, rename=rename, tags=body.tags))


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


@router.delete(
    "/{job_id}",
    status_code=204,
    response_class=Response,
    responses={
        **NOT_FOUND,
        409: problem("The job is queued or running, or an unfinished evaluation job reads its checkpoints"),
    },
    summary="Delete a finished job: its record, events, metrics, checkpoints, evaluations and files",
)
def delete_job(job_id: JobId, session: SessionDep, owner: CurrentOwner, settings: SettingsDep) -> Response:
    job = _owned_job(session, job_id, owner)
    try:
        readers = jobs.delete_job(session, job)
    except jobs.JobNotFinished as exc:
        raise ProblemError(
            409, f"job {job_id} is {exc.status}; cancel it (POST /v1/jobs/{job_id}/cancel) and wait for it to end"
        ) from None
    if readers:
        raise ProblemError(
            409,
            f"evaluation jobs that have not finished read checkpoints of job {job_id} ({', '.join(readers)}); "
            "cancel them or let them finish, then delete it",
        )
    session.commit()  # the rows are gone before the files: no record is left pointing at nothing
    try:
        settings.artifacts.remove(f"jobs/{job_id}")
    except OSError:
        log.exception("job %s is deleted but its files under jobs/%s could not be removed", job_id, job_id)
    return Response(status_code=204)


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
    relative = f"jobs/{job.id}/job.log"
    if settings.artifacts.remote:  # uploaded at each checkpoint and when the attempt ends
        text = settings.artifacts.read_text(relative)
    else:
        path = artifact_file(settings.artifacts.folder, relative)
        text = path.read_text(encoding="utf-8", errors="replace") if path else ""
    if tail is not None:
        text = "".join(text.splitlines(keepends=True)[-tail:])
    return PlainTextResponse(text)
