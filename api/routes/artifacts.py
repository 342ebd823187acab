"""/v1/checkpoints and /v1/evaluations: what jobs produced.

A checkpoint in a local artifact root is sent as a file. One in an object store (a URL root) is
streamed through the API from the store, with its Content-Length and single byte ranges, rather
than redirected to a presigned URL: clients need to reach the API only, never the store, and
the API's tokens stay the only way in.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, Response, StreamingResponse
from starlette.background import BackgroundTask

from api.deps import CurrentOwner, ReadSessionDep, SettingsDep
from api.problems import ProblemError, problem
from api.schemas import JOB_ID_PATTERN, MAX_ROW_ID, CheckpointPublic, EvaluationPublic, Protocol
from api.views import checkpoint_public, evaluation_public
from store import records
from store.artifacts import ArtifactStore, safe_relative

router = APIRouter(prefix="/v1", tags=["results"])
log = logging.getLogger(__name__)

JobFilter = Annotated[str | None, Query(pattern=JOB_ID_PATTERN, description="Only this job's")]
CHUNK = 1024 * 1024
BYTE_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
DOWNLOAD = {
    "Download": {
        "operationRef": "#/paths/~1v1~1checkpoints~1{checkpoint_id}~1download/get",
        "parameters": {"checkpoint_id": "$response.body#/0/id"},
    }
}
GET_EVALUATION = {
    "GetEvaluation": {
        "operationRef": "#/paths/~1v1~1evaluations~1{evaluation_id}/get",
        "parameters": {"evaluation_id": "$response.body#/0/id"},
    }
}


def artifact_file(root: Path, relative: str) -> Path | None:
    """``root / relative`` if it is a file inside ``root`` once ``..`` and symbolic links are
    followed, else None: a row or a link must not lead a download out of the artifact store."""
    root = root.resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        log.warning("refusing %s: it leads out of the artifact store %s", relative, root)
        return None
    return path if path.is_file() else None


@router.get(
    "/checkpoints",
    response_model=list[CheckpointPublic],
    responses={200: {"links": DOWNLOAD}},
    summary="Your checkpoints, newest first",
)
def list_checkpoints(
    session: ReadSessionDep,
    owner: CurrentOwner,
    job: JobFilter = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[CheckpointPublic]:
    return [checkpoint_public(c) for c in records.list_checkpoints(session, owner, job, limit)]


@router.get(
    "/checkpoints/{checkpoint_id}/download",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "A torch.save file"},
        206: {"content": {"application/octet-stream": {}}, "description": "The byte range asked for in Range"},
        404: problem("No such checkpoint for this token's owner"),
        410: problem("The file is no longer in the artifact store"),
        416: problem("A Range outside the file"),
    },
    summary="Download a checkpoint: the full training state, or ?format=torchvision for the backbone state_dict",
)
def download_checkpoint(
    checkpoint_id: Annotated[int, PathParam(ge=1, le=MAX_ROW_ID)],
    session: ReadSessionDep,
    owner: CurrentOwner,
    settings: SettingsDep,
    format: Literal["full", "torchvision"] = "full",
    byte_range: Annotated[
        str | None, Header(alias="Range", description="bytes=START-END: one range of the file")
    ] = None,
) -> Response:
    checkpoint = records.get_checkpoint(session, checkpoint_id, owner)
    if checkpoint is None:
        raise ProblemError(404, f"no checkpoint {checkpoint_id}; list yours with GET /v1/checkpoints")
    gone = ProblemError(
        410, f"checkpoint {checkpoint_id} was recorded at {checkpoint.path} but that file is not in the artifact store"
    )
    name = f"{checkpoint.job_id}-epoch{checkpoint.epoch:04d}"
    artifacts = settings.artifacts
    if artifacts.remote:
        size = artifacts.size(checkpoint.path) if safe_relative(checkpoint.path) else None
        if size is None:
            raise gone
        if format == "torchvision":
            return _remote_backbone(artifacts, checkpoint.path, f"{name}-backbone.pt")
        return _stream(artifacts, checkpoint.path, size, f"{name}.pt", byte_range)
    path = artifact_file(artifacts.folder, checkpoint.path)
    if path is None:
        raise gone
    if format == "torchvision":
        path = _backbone_file(path)
        name += "-backbone"
    return FileResponse(path, media_type="application/octet-stream", filename=f"{name}.pt")


def _stream(
    artifacts: ArtifactStore, relative: str, size: int, filename: str, byte_range: str | None
) -> StreamingResponse:
    """The object, or one range of it, read from the store in chunks as the client takes them."""
    headers = {"Accept-Ranges": "bytes", "Content-Disposition": f'attachment; filename="{filename}"'}
    start, end, status = 0, size - 1, 200
    wanted = BYTE_RANGE.fullmatch(byte_range.strip()) if byte_range else None
    if wanted and wanted.group(1) + wanted.group(2):
        first, last = wanted.groups()
        if first:
            start, end = int(first), min(int(last), size - 1) if last else size - 1
        else:  # the last N bytes
            start = max(size - int(last), 0)
        if start > end:
            raise ProblemError(
                416, f"{byte_range} is outside the file's {size} bytes", headers={"Content-Range": f"bytes */{size}"}
            )
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    headers["Content-Length"] = str(end - start + 1)

    def chunks() -> Iterator[bytes]:
        left = end - start + 1
        with artifacts.open(relative) as f:
            f.seek(start)
            while left > 0 and (block := f.read(min(CHUNK, left))):
                left -= len(block)
                yield block

    return StreamingResponse(chunks(), status_code=status, media_type="application/octet-stream", headers=headers)


def _remote_backbone(artifacts: ArtifactStore, relative: str, filename: str) -> FileResponse:
    """The backbone exported from a downloaded copy of the checkpoint, both removed once sent."""
    from cssl_core.train.checkpoint import export_backbone

    folder = Path(tempfile.mkdtemp(prefix="cssl-export-"))
    try:
        checkpoint = ArtifactStore(artifacts.root, folder).fetch(relative)
        out = export_backbone(checkpoint, folder / "backbone.pt")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return FileResponse(
        out,
        media_type="application/octet-stream",
        filename=filename,
        background=BackgroundTask(shutil.rmtree, folder, ignore_errors=True),
    )


def _backbone_file(checkpoint: Path) -> Path:
    """Export once and keep it beside the checkpoint; ``last.pt`` is rewritten, so compare times."""
    from cssl_core.train.checkpoint import export_backbone

    out = checkpoint.with_name(checkpoint.stem + ".torchvision.pt")
    if not out.exists() or out.stat().st_mtime < checkpoint.stat().st_mtime:
        # A temporary file of this request's own: concurrent downloads each export and the last
        # rename wins, so no one renames away, or reads, a file another is still writing.
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
        os.close(fd)
        try:
            export_backbone(checkpoint, Path(tmp))
            os.replace(tmp, out)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return out


@router.get(
    "/evaluations",
    response_model=list[EvaluationPublic],
    responses={200: {"links": GET_EVALUATION}},
    summary="Your evaluation results, oldest first",
)
def list_evaluations(
    session: ReadSessionDep,
    owner: CurrentOwner,
    job: Annotated[str | None, Query(pattern=JOB_ID_PATTERN, description="Results produced by this job")] = None,
    checkpoint: Annotated[
        int | None, Query(ge=1, le=MAX_ROW_ID, description="Results on this checkpoint, from any job")
    ] = None,
    protocol: Annotated[Protocol | None, Query(description="Only this protocol's results")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> list[EvaluationPublic]:
    return [evaluation_public(e) for e in records.list_evaluations(session, owner, job, checkpoint, limit, protocol)]


@router.get(
    "/evaluations/{evaluation_id}",
    response_model=EvaluationPublic,
    responses={404: problem("No such evaluation for this token's owner")},
    summary="One evaluation result: an embedding's points, say",
)
def get_evaluation(
    evaluation_id: Annotated[int, PathParam(ge=1, le=MAX_ROW_ID)], session: ReadSessionDep, owner: CurrentOwner
) -> EvaluationPublic:
    evaluation = records.get_evaluation(session, evaluation_id, owner)
    if evaluation is None:
        raise ProblemError(404, f"no evaluation {evaluation_id}; list yours with GET /v1/evaluations")
    return evaluation_public(evaluation)
