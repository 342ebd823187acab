"""Fixtures of the service tests: the test database, tokens, a real API server and a real
Celery worker process (helpers in ``support.py``, which also chooses between the real
servers and the embedded backend)."""

from __future__ import annotations

import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from s3_server import s3_server

from dispatch.broker import delete_queue
from store.db import create_database, drop_database

from .support import ADMIN_URL, DATABASE_URL, EMBEDDED, REDIS_URL, SERVICE_ENV, auth, start_api, start_worker


def pytest_collection_modifyitems(items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.service)


@pytest.fixture(scope="session")
def service_env() -> dict[str, str]:
    """SERVICE_ENV, once the test database exists and is at head."""
    from store import migrate

    if EMBEDDED:
        migrate.upgrade(DATABASE_URL)
        yield dict(SERVICE_ENV)
        shutil.rmtree(SERVICE_ENV["CSSL_STATE_DIR"], ignore_errors=True)
        return
    try:
        create_database(DATABASE_URL)
        redis.Redis.from_url(REDIS_URL).ping()
    except Exception as exc:
        pytest.fail(
            f"service tests need Postgres at {ADMIN_URL} and Redis at {REDIS_URL} (CI starts both; without "
            f"CI=true or CSSL_TEST_REQUIRE_SERVERS=1 they would run on the embedded backend): {exc}"
        )

    migrate.upgrade(DATABASE_URL)
    yield dict(SERVICE_ENV)
    drop_database(DATABASE_URL)
    shutil.rmtree(SERVICE_ENV["CSSL_STATE_DIR"], ignore_errors=True)
    delete_queue(REDIS_URL, SERVICE_ENV["CSSL_QUEUE"])


@pytest.fixture(scope="session")
def settings(service_env):
    from store.settings import Settings

    return Settings.from_env(service_env)


@pytest.fixture(scope="session")
def tokens(settings) -> dict[str, str]:
    from store import tokens as store_tokens
    from store.db import session_scope

    with session_scope(settings.database_url) as session:
        return {owner: store_tokens.create_token(session, owner) for owner in ("alice", "bob")}


@pytest.fixture(scope="module")
def server(service_env, tmp_path_factory):
    """A real uvicorn process serving the API (its sweeper included)."""
    process, base = start_api(service_env, tmp_path_factory.mktemp("api") / "api.log")
    yield base
    process.stop()


@pytest.fixture(scope="module")
def worker(service_env, tmp_path_factory):
    process = start_worker(service_env, tmp_path_factory.mktemp("worker") / "worker.log", "w1")
    yield process
    process.stop(signal.SIGQUIT)


@pytest.fixture(scope="module")
def client(settings):
    """The API in-process (FastAPI's TestClient) on a queue no worker reads: jobs submitted
    through it stay queued."""
    from fastapi.testclient import TestClient

    from api.main import create_app

    with TestClient(create_app(settings.with_(queue=settings.queue + "_idle"), sweep=False)) as client:
        yield client


@pytest.fixture()
def alice(tokens) -> dict[str, str]:
    return auth(tokens["alice"])


@pytest.fixture()
def bob_headers(tokens) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['bob']}"}


@dataclass(frozen=True)
class ObjectStore:
    """An S3 endpoint with one empty bucket: ``env`` holds the standard AWS variables that point
    at it (set in this process too), ``fs`` an s3fs file system on it."""

    env: dict[str, str]
    bucket: str
    fs: object


@pytest.fixture(scope="session")
def s3():
    """A real S3 HTTP endpoint: moto's server in a thread of this process, on a free port, so
    that nothing else has to be started; the API and workers started by a test reach it over HTTP."""
    with s3_server("lab-models") as (env, fs):
        yield ObjectStore(env, "lab-models", fs)
