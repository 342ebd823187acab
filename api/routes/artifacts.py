"""/v1/checkpoints and /v1/evaluations: what jobs produced."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse

from api.deps import CurrentOwner, ReadSessionDep, SettingsDep
from api.problems import ProblemError
from api.schemas import CheckpointPublic, EvaluationPublic, Problem
from api.views import checkpoint_public, evaluation_public
from store import records

router = APIRouter(prefix="/v1", tags=["results"])


@router.get("/checkpoints", response_model=list[CheckpointPublic], summary="Your checkpoints, newest first")
def list_checkpoints(
    session: ReadSessionDep,
    owner: CurrentOwner,
    job: Annotated[str | None, Query(description="Only this job's")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[CheckpointPublic]:
    return [checkpoint_public(c) for c in records.list_checkpoints(session, owner, job, limit)]


@router.get(
    "/checkpoints/{checkpoint_id}/download",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "A torch.save file"},
        404: {"model": Problem},
        410: {"model": Problem, "description": "The file is no longer in the artifact store"},
    },
    summary="Download a checkpoint: the full training state, or ?format=torchvision for the backbone state_dict",
)
def download_checkpoint(
    checkpoint_id: int,
    session: ReadSessionDep,
    owner: CurrentOwner,
    settings: SettingsDep,
    format: Literal["full", "torchvision"] = "full",
) -> FileResponse:
    checkpoint = records.get_checkpoint(session, checkpoint_id, owner)
    if checkpoint is None:
        raise ProblemError(404, f"no checkpoint {checkpoint_id}; list yours with GET /v1/checkpoints")
    path = settings.artifact_root / checkpoint.path
    if not path.exists():
        raise ProblemError(410, f"checkpoint {checkpoint_id} was recorded at {checkpoint.path} but the file is gone from the artifact store")
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
        tmp = out.with_name(out.name + ".tmp")
        export_backbone(checkpoint, tmp)
        tmp.replace(out)
    return out


@router.get("/evaluations", response_model=list[EvaluationPublic], summary="kNN and linear results")
def list_evaluations(
    session: ReadSessionDep,
    owner: CurrentOwner,
    job: Annotated[str | None, Query(description="Results produced by this job")] = None,
    checkpoint: Annotated[int | None, Query(description="Results on this checkpoint, from any job")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> list[EvaluationPublic]:
    return [evaluation_public(e) for e in records.list_evaluations(session, owner, job, checkpoint, limit)]
