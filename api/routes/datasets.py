"""/v1/datasets/uploads: data sets users upload as a .tar.gz, for their jobs to name by id.

The body is streamed to disk as it comes (no multipart), counted against
``CSSL_MAX_UPLOAD_BYTES`` and the owner's quota, with the disk's free-space floor watched; the
row is written ``unpacking`` and the answer is 202. The files are unpacked in the background
(``api.unpacking``) under the first data root (``store.data_roots``); the upload's row says
when it is ``ready``, or why it ``failed`` (``store.datasets``).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from api.deps import CurrentOwner, ReadSessionDep, SessionDep, SettingsDep
from api.problems import ProblemError, field_error, invalid
from api.ratelimit import TOO_MANY, limit_submissions
from api.schemas import Problem, UploadPublic
from api.unpacking import receive_limit
from api.views import upload_public
from store import data_roots, datasets
from store.models import Dataset

router = APIRouter(prefix="/v1/datasets/uploads", tags=["datasets"])

UploadId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$", description="An upload's id: 32 hex digits")]
NOT_FOUND = {404: {"model": Problem, "description": "No such upload for this token's owner"}}
ARCHIVE_BODY = {
    "requestBody": {
        "required": True,
        "description": "A .tar.gz of the data set's files, e.g. train/<class>/<image> and test/<class>/<image>",
        "content": {"application/gzip": {"schema": {"type": "string", "format": "binary"}}},
    }
}


def _owned(session, upload_id: str, owner: str) -> Dataset:
    dataset = datasets.get_dataset(session, upload_id, owner)
    if dataset is None:
        raise ProblemError(404, f"no upload {upload_id}; list yours with GET /v1/datasets/uploads")
    return dataset


@router.post(
    "",
    status_code=202,
    response_model=UploadPublic,
    responses={
        202: {
            "description": "Received; unpacking. GET the Location until its status is ready (or failed, with error)",
            "headers": {
                "Location": {"description": "The upload's URL", "required": True, "schema": {"type": "string"}},
            },
        },
        413: {
            "model": Problem,
            "description": "The archive is over the service's limit, or would take the owner's "
            "uploads past their quota (CSSL_UPLOAD_QUOTA_BYTES)",
        },
        422: {"model": Problem, "description": "Not a .tar.gz"},
        429: TOO_MANY,
        507: {
            "model": Problem,
            "description": "The service's disk is nearly full (CSSL_UPLOAD_MIN_FREE_BYTES); try again later",
        },
    },
    dependencies=[Depends(limit_submissions)],
    openapi_extra=ARCHIVE_BODY,
    summary="Upload a data set as a .tar.gz; it unpacks in the background, and jobs name it by the id returned",
)
async def upload_dataset(
    request: Request,
    session: SessionDep,
    owner: CurrentOwner,
    settings: SettingsDep,
    response: Response,
    # No NUL: Postgres text cannot hold one.
    name: Annotated[str, Query(min_length=1, max_length=128, pattern=r"^[^\x00]+$", description="Your name for it")],
) -> UploadPublic:
    declared = request.headers.get("content-length", "")
    declared_bytes = int(declared) if declared.isdigit() else 0
    used = await run_in_threadpool(datasets.disk_use, session, owner)
    limit, refusal = receive_limit(settings, used)
    upload_id = datasets.new_dataset_id()
    try:
        if limit == 0 or declared_bytes > limit:
            raise data_roots.ArchiveTooLarge(refusal)  # before a byte is read
        await run_in_threadpool(data_roots.check_free_space, settings, declared_bytes)
        receiver = await run_in_threadpool(data_roots.Receiver, settings, upload_id, limit, refusal)
        await _receive(request, receiver)
    except data_roots.ArchiveTooLarge as exc:
        raise ProblemError(413, str(exc)) from None
    except data_roots.BadArchive as exc:
        raise invalid([field_error(["body"], str(exc))]) from None
    except data_roots.DiskFull as exc:
        raise ProblemError(507, str(exc), headers={"Retry-After": "600"}) from None
    try:
        dataset = await run_in_threadpool(_record, session, owner, name, upload_id, receiver)
    except BaseException:
        receiver.discard()
        raise
    request.app.state.unpacker.submit(dataset.id, owner)
    response.headers["Location"] = f"{router.prefix}/{dataset.id}"
    return upload_public(dataset)


async def _receive(request: Request, receiver: data_roots.Receiver) -> None:
    """The body into the receiver's file; on any error (the client gone too) the file is removed."""
    try:
        async for chunk in request.stream():
            await run_in_threadpool(receiver.write, chunk)
        receiver.close()
    except BaseException:
        receiver.discard()
        raise


def _record(session, owner: str, name: str, upload_id: str, receiver: data_roots.Receiver) -> Dataset:
    dataset = datasets.create_dataset(
        session, id=upload_id, owner=owner, name=name, sha256=receiver.sha256, size_bytes=receiver.size_bytes
    )
    session.commit()
    return dataset


@router.get("", response_model=list[UploadPublic], summary="Your uploads, newest first")
def list_uploads(
    session: ReadSessionDep, owner: CurrentOwner, limit: Annotated[int, Query(ge=1, le=500)] = 100
) -> list[UploadPublic]:
    return [upload_public(d) for d in datasets.list_datasets(session, owner, limit)]


@router.get("/{upload_id}", response_model=UploadPublic, responses=NOT_FOUND, summary="One of your uploads")
def get_upload(upload_id: UploadId, session: ReadSessionDep, owner: CurrentOwner) -> UploadPublic:
    return upload_public(_owned(session, upload_id, owner))


@router.delete(
    "/{upload_id}",
    status_code=204,
    response_class=Response,
    responses={**NOT_FOUND, 409: {"model": Problem, "description": "A queued or running job uses it"}},
    summary="Delete an upload and its files",
)
def delete_upload(upload_id: UploadId, session: SessionDep, owner: CurrentOwner, settings: SettingsDep) -> Response:
    dataset = _owned(session, upload_id, owner)
    users = datasets.start_delete(session, dataset)
    if users:
        raise ProblemError(
            409,
            f"upload {upload_id} is used by queued or running jobs ({', '.join(users)}); "
            "cancel them or let them finish, then delete it",
        )
    session.commit()  # deleting: no new job can name it from here on
    data_roots.remove_upload(settings, dataset.id)
    datasets.delete_dataset(session, dataset.id)
    return Response(status_code=204)
