"""Health checks: no token needed."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.schemas import Health, Readiness

router = APIRouter(tags=["health"])
log = logging.getLogger(__name__)

AUTH_OFF_WARNING = "authentication is OFF (CSSL_AUTH_DISABLED): every request acts as the local owner"


@router.get("/healthz", response_model=Health, summary="The process is up")
def healthz() -> Health:
    return Health()


@router.get(
    "/readyz", response_model=Readiness, responses={503: {"model": Readiness}}, summary="Database and broker reachable"
)
def readyz(request: Request) -> JSONResponse:
    settings = request.app.state.settings
    database = _check(lambda: _ping_database(request))
    broker = _check(lambda: _ping_broker(request))
    ready = database == "ok" and broker == "ok"
    body = Readiness(
        status="ready" if ready else "unavailable",
        database=database,
        broker=broker,
        mode="embedded" if settings.embedded else "production",
        authentication="off" if settings.auth_disabled else "on",
        warnings=[AUTH_OFF_WARNING] if settings.auth_disabled else [],
    )
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


def _check(probe) -> str:
    """``ok`` or ``unreachable``; what the driver said goes to the API's log, not to the caller."""
    try:
        probe()
        return "ok"
    except Exception as exc:
        log.warning("readiness check failed: %s: %s", type(exc).__name__, exc)
        return "unreachable"


def _ping_database(request: Request) -> None:
    with request.app.state.sessions() as session:
        session.execute(text("SELECT 1"))


def _ping_broker(request: Request) -> None:
    with request.app.state.celery.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=2)
