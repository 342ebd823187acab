"""/v1/leaderboard: each method's best final result, compared across the owner's jobs, and optionally
across the devices, library or code versions they ran with (their provenance)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import CurrentOwner, ReadSessionDep
from api.schemas import LeaderboardRow, Protocol, ProvenanceGroup
from store import records

router = APIRouter(prefix="/v1", tags=["results"])

NAME = r"^[A-Za-z0-9_.-]{1,64}$"


@router.get(
    "/leaderboard",
    response_model=list[LeaderboardRow],
    summary="Each method's best final result per data set and protocol, with its pretraining cost",
)
def leaderboard(
    session: ReadSessionDep,
    owner: CurrentOwner,
    dataset: Annotated[str | None, Query(pattern=NAME, description="Only results on this data set")] = None,
    protocol: Annotated[Protocol | None, Query(description="Only this protocol's results")] = None,
    backbone: Annotated[str | None, Query(pattern=NAME, description="Only pretraining with this backbone")] = None,
    group_by: Annotated[
        ProvenanceGroup | None,
        Query(
            description="Rank each value of this key of the pretrain job's provenance apart (each device, "
            "torch version, code version, ...); the row's group holds the value"
        ),
    ] = None,
) -> list[LeaderboardRow]:
    rows = records.leaderboard(session, owner, dataset=dataset, protocol=protocol, backbone=backbone, group_by=group_by)
    return [LeaderboardRow.model_validate(row._asdict()) for row in rows]
