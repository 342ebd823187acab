"""/v1/datasets/uploads: data sets users upload as a .tar.gz, for their jobs to name by id.

The body is streamed to disk as it comes (no multipart), counted against
``CSSL_MAX_UPLOAD_BYTES``, then unpacked member by member under the first data root
(``store.data_roots``); the row is written once the files are in place (``store.datasets``).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from api.deps import CurrentOwner, ReadSessionDep, SessionDep, SettingsDep
from api.problems import ProblemError, field_error, invalid
from api.ratelimit import TOO_MANY, limit_submissions
from api.schemas import Problem, UploadPublic
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
    status_code=201,
    response_model=UploadPublic,
    responses={
        413: {"model": Problem, "description": "The archive, or its files unpacked, is over the service's limit"},
        422: {"model": Problem, "description": "Not a readable .tar.gz, or a member that may not be unpacked "
              "(an absolute path, '..', a link, a device)"},
        429: TOO_MANY,
    },
    dependencies=[Depends(limit_submissions)],
    openapi_extra=ARCHIVE_BODY,
    summary="Upload a data set as a .tar.gz; jobs name it by the id returned",
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
    if declared.isdigit() and int(declared) > settings.max_upload_bytes:
        raise ProblemError(413, data_roots.too_large(settings.max_upload_bytes))
    upload_id = datasets.new_dataset_id()
    receiver = await run_in_threadpool(data_roots.Receiver, settings, upload_id)
    try:
        async for chunk in request.stream():
            await run_in_threadpool(receiver.write, chunk)
        receiver.close()
        dataset = await run_in_threadpool(_unpack_and_record, session, settings, owner, name, upload_id, receiver)
    except data_roots.ArchiveTooLarge as exc:
        raise ProblemError(413, str(exc)) from None
    except data_roots.BadArchive as exc:
        raise invalid([field_error(["body"], str(exc))]) from None
    finally:
        receiver.discard()  # the archive; its files are unpacked by now, or gone
    response.headers["Location"] = f"{router.prefix}/{dataset.id}"
    return upload_public(dataset)


def _unpack_and_record(session, settings, owner: str, name: str, upload_id: str, receiver: data_roots.Receiver) -> Dataset:
    num_files = data_roots.unpack_upload(settings, upload_id, receiver.path)
    try:
        dataset = datasets.create_dataset(session, id=upload_id, owner=owner, name=name, sha256=receiver.sha256,
                                          size_bytes=receiver.size_bytes, num_files=num_files)
        session.commit()
    except BaseException:
        data_roots.remove_upload(settings, upload_id)
        raise
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
        raise ProblemError(409, f"upload {upload_id} is used by queued or running jobs ({', '.join(users)}); "
                                "cancel them or let them finish, then delete it")
    session.commit()  # deleting: no new job can name it from here on
    data_roots.remove_upload(settings, dataset.id)
    datasets.delete_dataset(session, dataset.id)
    return Response(status_code=204)
