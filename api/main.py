"""The FastAPI application: ``uvicorn --factory api.main:create_app``."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api import problems
from api.bodylimit import BodyLimit
from api.deps import TokenCache
from api.metrics import RequestMetrics
from api.metrics import router as metrics_router
from api.ratelimit import Limits
from api.routes import artifacts, catalog, datasets, docs, health, jobs, leaderboard, ui, webhooks
from api.routes.health import AUTH_OFF_WARNING
from api.unpacking import Unpacker
from dispatch.broker import make_celery
from dispatch.publisher import Publisher
from dispatch.sweeper import Sweeper
from dispatch.webhooks import WebhookSender
from store.db import read_session_factory, session_factory
from store.settings import Settings, get_settings

log = logging.getLogger("cssl.api")

DESCRIPTION = """
Submit, run, watch, cancel and evaluate self-supervised pretraining jobs.

Every request but `/healthz` and `/readyz` needs `Authorization: Bearer <token>`
(`cssl token create --owner NAME`). Errors are `application/problem+json` (RFC 9457).
"""


def create_app(settings: Settings | None = None, *, sweep: bool = True) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if settings.auth_disabled:
            log.warning(AUTH_OFF_WARNING)
        sweeper = Sweeper(app.state.publisher) if sweep else None
        sender = WebhookSender(settings) if sweep else None
        for thread in (sweeper, sender):
            if thread:
                thread.start()
        app.state.unpacker.start()
        yield
        app.state.unpacker.stop()
        for thread in (sender, sweeper):
            if thread:
                thread.stop()

    # /docs comes from api.routes.docs: Swagger UI's files served by the API itself.
    app = FastAPI(title="cssl", version="1", description=DESCRIPTION, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.sessions = session_factory(settings.database_url)
    app.state.read_sessions = read_session_factory(settings.database_url)
    app.state.celery = make_celery(settings)
    app.state.publisher = Publisher(app.state.celery, settings)
    app.state.token_cache = TokenCache()
    app.state.limits = Limits(settings)
    app.state.unpacker = Unpacker(settings)
    problems.install(app)
    app.add_middleware(BodyLimit)
    app.add_middleware(RequestMetrics)  # outermost: it times and counts every answer, 413s included
    for module in (jobs, artifacts, leaderboard, catalog, datasets, webhooks, health):
        app.include_router(module.router)
    app.include_router(metrics_router)
    docs.install(app)
    ui.install(app)
    return app
