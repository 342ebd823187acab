"""Helpers for the service tests, which run against the real Postgres and Redis (CI starts
both) and, where a test needs them, a real uvicorn server and a real Celery worker process.

Each test session gets its own database ``cssl_test_<random>`` (dropped at the end), its own
Redis database number and its own queue name, so sessions on one machine do not meet.

Where Postgres or Redis cannot be reached, the service tests run on the embedded backend
(SQLite and Celery's file-system queue in a temporary folder) and the few that need the real
servers are skipped with the reason. Under CI (``CI=true``) or with
``CSSL_TEST_REQUIRE_SERVERS=1`` an unreachable server is an error, not a fallback.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from cli.processes import free_port, stop_process, wait_until_ready
from cli.service import worker_command
from cli.sse import parse_events

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"
ADMIN_URL = os.environ.get("CSSL_TEST_POSTGRES_ADMIN", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("CSSL_TEST_REDIS", "redis://127.0.0.1:6379/13")
RUN_ID = uuid.uuid4().hex[:10]
DB_NAME = f"cssl_test_{RUN_ID}"
STATE_DIR = tempfile.mkdtemp(prefix=f"cssl_test_{RUN_ID}_")
DATA_ROOT = Path(STATE_DIR) / "data"


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _unreachable(name: str, url: str, default_port: int) -> str | None:
    """Why ``name`` at ``url`` cannot be reached, or None when it accepts a connection."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or default_port
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError as exc:
        return f"{name} at {host}:{port}: {exc.strerror or exc}"
    return None


REQUIRE_SERVERS = _truthy(os.environ.get("CI")) or _truthy(os.environ.get("CSSL_TEST_REQUIRE_SERVERS"))
UNREACHABLE = [
    why for why in (_unreachable("Postgres", ADMIN_URL, 5432), _unreachable("Redis", REDIS_URL, 6379)) if why
]
EMBEDDED = bool(UNREACHABLE) and not REQUIRE_SERVERS


def needs_servers(why: str):
    """Marks a test that cannot run on the embedded backend; ``why`` says what it needs."""
    return pytest.mark.skipif(
        EMBEDDED,
        reason=f"needs Postgres and Redis ({why}), which are not reachable here ({'; '.join(UNREACHABLE)}); "
        "the other service tests ran on SQLite and a file queue",
    )


if EMBEDDED:
    DATABASE_URL = f"sqlite:///{STATE_DIR}/cssl.db"
    BROKER_URL = "filesystem://"
else:
    DATABASE_URL = ADMIN_URL.rsplit("/", 1)[0] + f"/{DB_NAME}"
    BROKER_URL = REDIS_URL

# A training job of a few seconds on 2 CPU cores.
TINY = {"backbone": "small", "epochs": 1, "batch_size": 32, "subset": 128, "precision": "fp32"}


# The environment of every process of the service under test, this one included (so that
# modules reading settings at import, like worker.app, see the test's database and queue).
SERVICE_ENV = {
    "CSSL_DATABASE_URL": DATABASE_URL,
    "CSSL_BROKER_URL": BROKER_URL,
    "CSSL_STATE_DIR": STATE_DIR,
    "CSSL_QUEUE": f"cssl_test_{RUN_ID}",
    "CSSL_SWEEP_INTERVAL": "1",
    "CSSL_HEARTBEAT_INTERVAL": "0.5",
    "CSSL_HEARTBEAT_TIMEOUT": "5",
    # Jobs the in-process client leaves queued in the shared test database are never re-sent to
    # the workers of later test modules, however long the suite runs.
    "CSSL_REPUBLISH_AFTER": "86400",
    "CSSL_PROGRESS_EVERY": "1",
    # Tests submit jobs faster than a user would; those about the limit set their own.
    "CSSL_SUBMIT_RATE": "0",
    "CSSL_AUTH_FAILURES_PER_MINUTE": "0",
    "CSSL_MAX_QUEUED_JOBS": "0",
    # Jobs read data from the state folder's data/ (uploads go there) and from the shared archives.
    "CSSL_DATA_ROOTS": os.pathsep.join([str(DATA_ROOT), str(SHARED_DATA)]),
    # The decoded-dataset cache of earlier runs, so that CIFAR-10 is decoded once, not every session.
    "CSSL_CACHE_DIR": os.environ.get("CSSL_CACHE_DIR") or str(Path.home() / ".cache" / "cssl"),
}
os.environ.update(SERVICE_ENV)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Process:
    """A child process of the service, its output in a log file."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path):
        self.log = log
        self.handle = open(log, "wb")  # noqa: SIM115 (closed by stop())
        self.popen = subprocess.Popen(
            argv, env={**os.environ, **env}, cwd=REPO, stdout=self.handle, stderr=subprocess.STDOUT
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                return
            if self.popen.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"{text!r} not seen in {self.log}:\n{self.output()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
        stop_process(self.popen, timeout, sig)
        self.handle.close()


def start_worker(env: dict[str, str], log: Path, name: str) -> Process:
    worker = Process(worker_command(name), env, log)
    worker.wait_for(" ready.", timeout=90)
    return worker


def start_api(
    env: dict[str, str], log: Path, port: int | None = None, timeout: float = 60, processes: int = 1
) -> tuple[Process, str]:
    """A real uvicorn server (``processes`` of them on one port) serving the API, sweeper included;
    returns it and its base URL."""
    port = port or free_port()
    process = Process(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "api.main:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *(["--workers", str(processes)] if processes > 1 else []),
        ],
        env,
        log,
    )
    base = f"http://127.0.0.1:{port}"
    if not wait_until_ready(f"{base}/healthz", process.popen, timeout=timeout):
        process.stop()  # else it starts later and its sweeper publishes other tests' jobs
        raise AssertionError(f"API did not start in {timeout:g} s:\n{process.output()}")
    return process, base


def read_events(base: str, path: str, headers: dict[str, str], *, until=None, timeout: float = 120) -> list[dict]:
    """Read a Server-Sent Events stream into ``[{"id", "event", "data"}]`` until it ends, or
    until ``until(event)`` is true."""
    events = []
    with httpx.stream("GET", base + path, headers=headers, timeout=timeout) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for event in parse_events(response.iter_lines()):
            events.append(event)
            if event["event"] == "end" or (until and until(event)):
                return events
    return events


def wait_for(predicate, timeout: float, interval: float = 0.2, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")
