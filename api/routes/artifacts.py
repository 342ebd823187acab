"""/v1/checkpoints and /v1/evaluations: what jobs produced."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi import Path as PathParam
from fastapi.responses import FileResponse

from api.deps import CurrentOwner, ReadSessionDep, SettingsDep
from api.problems import ProblemError, problem
from api.schemas import JOB_ID_PATTERN, MAX_ROW_ID, CheckpointPublic, EvaluationPublic, Protocol
from api.views import checkpoint_public, evaluation_public
from store import records

router = APIRouter(prefix="/v1", tags=["results"])
log = logging.getLogger(__name__)

JobFilter = Annotated[str | None, Query(pattern=JOB_ID_PATTERN, description="Only this job's")]
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
        404: problem("No such checkpoint for this token's owner"),
        410: problem("The file is no longer in the artifact store"),
    },
    summary="Download a checkpoint: the full training state, or ?format=torchvision for the backbone state_dict",
)
def download_checkpoint(
    checkpoint_id: Annotated[int, PathParam(ge=1, le=MAX_ROW_ID)],
    session: ReadSessionDep,
    owner: CurrentOwner,
    settings: SettingsDep,
    format: Literal["full", "torchvision"] = "full",
) -> FileResponse:
    checkpoint = records.get_checkpoint(session, checkpoint_id, owner)
    if checkpoint is None:
        raise ProblemError(404, f"no checkpoint {checkpoint_id}; list yours with GET /v1/checkpoints")
    path = artifact_file(settings.artifact_root, checkpoint.path)
    if path is None:
        raise ProblemError(
            410,
            f"checkpoint {checkpoint_id} was recorded at {checkpoint.path} but that file is not in the artifact store",
        )
    name = f"{checkpoint.job_id}-epoch{checkpoint.epoch:04d}"
    if format == "torchvision":
        path = _backbone_file(path)
        name += "-backbone"
    return FileResponse(path, media_type="application/octet-stream", filename=f"{name}.pt")


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
