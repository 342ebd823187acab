"""The service that a benchmark measures: a scratch database and queue, a token, an API process
and worker processes on them, all removed on exit.

``mode="postgres"``: a new database on the Postgres server of ``CSSL_BENCH_POSTGRES`` (default
the local one) and a queue of its own on the Redis of ``CSSL_BENCH_REDIS``; ``mode="embedded"``:
SQLite and a file queue in the temporary state folder. The processes' logs lie in that folder,
which is kept when the benchmark fails.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from cli.processes import free_port, stop_process, wait_until_ready
from cli.service import worker_command
from cli.sse import parse_events
from dispatch.broker import delete_queue
from store import migrate, tokens
from store.db import create_database, drop_database, session_scope
from store.settings import Settings

REPO = Path(__file__).resolve().parents[1]
ADMIN_URL = os.environ.get("CSSL_BENCH_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("CSSL_BENCH_REDIS", "redis://127.0.0.1:6379/12")


class ServiceUnderTest:
    """``with ServiceUnderTest(mode) as service:`` the service is up and ``service.headers``
    authenticate as the owner ``bench``.

    ``api``: start an API process (``cssl api``) and wait until ``/readyz`` answers; ``workers``:
    how many worker processes to start, each waited for until it consumes; ``env``: ``CSSL_*``
    settings of every process (the environment's own ``CSSL_*`` variables are not passed on).
    """

    def __init__(
        self,
        mode: str = "postgres",
        *,
        name: str = "bench",
        api: bool = True,
        workers: int = 1,
        api_workers: int = 1,
        access_log: bool = False,
        env: dict[str, str] | None = None,
    ):
        self.mode, self.start_api, self.start_workers = mode, api, workers
        self.api_workers, self.access_log = api_workers, access_log
        run_id = uuid.uuid4().hex[:8]
        self.state = Path(tempfile.mkdtemp(prefix=f"cssl-{name}-"))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CSSL_")}
        self.env.update({"CSSL_STATE_DIR": str(self.state), "CSSL_QUEUE": f"{name}_{run_id}", **(env or {})})
        if mode == "postgres":
            self.env["CSSL_DATABASE_URL"] = ADMIN_URL.rsplit("/", 1)[0] + f"/cssl_{name}_{run_id}"
            self.env["CSSL_BROKER_URL"] = REDIS_URL
        self.settings = Settings.from_env(self.env)
        self.database_url = self.settings.database_url
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.api_log = self.state / "api.log"
        self.api_process: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self._logs = []

    def __enter__(self) -> ServiceUnderTest:
        if self.mode == "postgres":
            create_database(self.database_url)
        try:
            migrate.upgrade(self.database_url)
            with session_scope(self.database_url) as session:
                self.token = tokens.create_token(session, "bench")
            self.headers = {"Authorization": f"Bearer {self.token}"}
            for number in range(self.start_workers):
                self.start_worker("cssl" if number == 0 else f"w{number + 1}")
            if self.start_api:
                self._start_api()
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    def __exit__(self, exc_type, *exc) -> None:
        for worker in self.workers:
            # A cold shutdown: a benchmark's jobs need no checkpoint.
            stop_process(worker, timeout=20, sig=signal.SIGQUIT)
        if self.api_process is not None:
            stop_process(self.api_process, timeout=20)
        for handle in self._logs:
            handle.close()
        if self.mode == "postgres":
            drop_database(self.database_url)
            delete_queue(self.settings.broker_url, self.settings.queue)  # the messages of jobs never run
        if exc_type is None:
            shutil.rmtree(self.state, ignore_errors=True)
        else:
            print(f"the service's logs are kept in {self.state}", file=sys.stderr)

    def _start_api(self) -> None:
        api = ["api", "--port", str(self.port), "--workers", str(self.api_workers)]
        if not self.access_log:
            api.append("--no-access-log")
        self.api_process = self._start([sys.executable, "-m", "cli.main", *api], self.api_log)
        if not wait_until_ready(f"{self.base}/readyz", self.api_process, timeout=180):
            raise RuntimeError(f"the API did not start:\n{self.api_log.read_text()[-3000:]}")

    def _start(self, argv: list[str], log: Path) -> subprocess.Popen:
        handle = open(log, "wb")  # noqa: SIM115 (closed on exit)
        self._logs.append(handle)
        return subprocess.Popen(argv, cwd=REPO, env=self.env, stdout=handle, stderr=subprocess.STDOUT)

    def start_worker(self, name: str, timeout: float = 180) -> subprocess.Popen:
        """Another worker process, named ``name@host`` like a second machine's, once it consumes."""
        log = self.state / f"worker-{name}.log"
        process = self._start(worker_command(name), log)
        self.workers.append(process)
        deadline = time.monotonic() + timeout
        while b" ready." not in log.read_bytes():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker {name} did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        return process

    def submit(self, config: dict, **fields) -> str:
        """A SimCLR pretraining job on the synthetic data set; ``fields`` add to the request body."""
        body = {"kind": "pretrain", "method": "simclr", "dataset": {"name": "synthetic"}, "config": config, **fields}
        response = httpx.post(f"{self.base}/v1/jobs", headers=self.headers, json=body)
        response.raise_for_status()
        return response.json()["id"]

    def get(self, job_id: str) -> dict:
        return httpx.get(f"{self.base}/v1/jobs/{job_id}", headers=self.headers).json()

    def wait_for_status(self, job_id: str, status: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.get(job_id)
            if job["status"] == status:
                return
            if job["status"] in ("failed", "cancelled"):
                raise RuntimeError(f"job {job_id} {job['status']}: {job['error']}")
            time.sleep(0.1)
        raise RuntimeError(f"job {job_id} not {status} after {timeout} s")

    def events_until(self, job_id: str, done) -> list[dict]:
        """The job's events (``{"id", "event", "data"}``) until ``done(event)`` is true or the stream
        ends."""
        events = []
        with httpx.stream("GET", f"{self.base}/v1/jobs/{job_id}/events", headers=self.headers, timeout=60) as stream:
            for event in parse_events(stream.iter_lines()):
                events.append(event)
                if done(event):
                    return events
        return events

    def cancel_all(self) -> int:
        """Cancels every queued and running job; returns how many it asked to cancel."""
        cancelled = 0
        for status in ("queued", "running"):
            while True:
                page = httpx.get(
                    f"{self.base}/v1/jobs", headers=self.headers, params={"status": status, "limit": 200}
                ).json()
                todo = [job["id"] for job in page["items"] if not job["cancel_requested"]]
                for job_id in todo:
                    httpx.post(f"{self.base}/v1/jobs/{job_id}/cancel", headers=self.headers)
                cancelled += len(todo)
                if not todo or status == "running":
                    break
        return cancelled
