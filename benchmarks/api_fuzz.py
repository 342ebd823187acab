"""Schemathesis against a real API process, at volume: every check, every phase, stateful runs
over the links between routes, until at least ``--requests`` requests have been answered;
prints one JSON line (requests, failures, errors, wall time, status counts).

Starts its own API (one uvicorn process, no worker) on a fresh Postgres database, Redis
database number and queue (``--mode embedded``: SQLite and a file queue in a temporary folder),
with an owner and token of its own. The jobs the fuzzer gets accepted stay queued, are cancelled
at the end, and the database and queue are dropped. The project's schemathesis.toml applies.

    .venv/bin/python -m benchmarks.api_fuzz --requests 10000
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
SEED_JOB = {"kind": "pretrain", "method": "simclr", "dataset": {"name": "synthetic"},
            "config": {"backbone": "small", "epochs": 1}, "evaluate": []}
STATUS = re.compile(rb'" (\d{3})')
ACCEPTED_JOB = re.compile(rb'"POST /v1/jobs HTTP/1.1" 202')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=10_000, help="at least this many requests")
    parser.add_argument("--mode", choices=["postgres", "embedded"], default="postgres")
    parser.add_argument("--max-examples", type=int, default=300, help="per operation and run")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-minutes", type=float, default=30, help="stop starting runs after this long")
    parser.add_argument("--submit-rate", default="1200", help="CSSL_SUBMIT_RATE of the API under test")
    args = parser.parse_args()

    started = time.monotonic()
    runs, reports = [], []
    with Service(args.mode, args.submit_rate) as service:
        while service.requests() < args.requests and time.monotonic() - started < args.max_minutes * 60:
            # The first run has every phase; later ones draw new data with new seeds.
            phases = "examples,coverage,fuzzing,stateful" if not runs else "fuzzing,stateful"
            max_examples = args.max_examples if not runs else max(1, args.max_examples // 4)
            report, code = service.schemathesis(args.seed + len(runs), max_examples, phases)
            runs.append({"seed": args.seed + len(runs), "phases": phases, "exit_code": code,
                         "test_cases": report.get("test_cases", {}).get("generated"), "requests": service.requests()})
            reports.append(report)
            print(json.dumps({"run": runs[-1]}), file=sys.stderr, flush=True)
        wall = time.monotonic() - started
        statuses = service.statuses()
        jobs_accepted = len(ACCEPTED_JOB.findall(service.log.read_bytes())) - len(service.seeded)
        service.cancel_queued()
    print(json.dumps({
        "requests": sum(statuses.values()),
        "failures": sum(group["count"] for report in reports for group in report.get("failures", [])),
        "errors": sum(group["count"] for report in reports for group in report.get("errors", [])),
        "failure_codes": sorted({group["code"] for report in reports for group in report.get("failures", [])}),
        "wall_s": round(wall, 1),
        "runs": len(runs),
        "test_cases": sum(run["test_cases"] or 0 for run in runs),
        "statuses": dict(sorted(statuses.items())),
        "jobs_accepted": jobs_accepted,
        "mode": args.mode,
        "cores": os.cpu_count(),
    }), flush=True)
    return 0 if all(run["exit_code"] == 0 for run in runs) else 1


class Service:
    """A database, queue and API process of its own, removed on exit."""

    def __init__(self, mode: str, submit_rate: str):
        from cli.service_demo import free_port

        self.run_id = uuid.uuid4().hex[:8]
        self.state = Path(tempfile.mkdtemp(prefix="cssl-fuzz-"))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CSSL_")}
        self.env.update(CSSL_STATE_DIR=str(self.state), CSSL_QUEUE=f"fuzz_{self.run_id}", CSSL_SUBMIT_RATE=submit_rate,
                        CSSL_SUBMIT_BURST="100")
        self.admin_url = os.environ.get("CSSL_BENCH_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
        if mode == "postgres":
            self.env["CSSL_DATABASE_URL"] = self.admin_url.rsplit("/", 1)[0] + f"/cssl_fuzz_{self.run_id}"
            self.env["CSSL_BROKER_URL"] = os.environ.get("CSSL_BENCH_REDIS", "redis://127.0.0.1:6379/12")
        self.mode, self.port = mode, free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = self.state / "api.log"
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> "Service":
        from store import migrate, tokens
        from store.db import create_database, session_scope
        from store.settings import Settings

        settings = Settings.from_env(self.env)
        if self.mode == "postgres":
            create_database(settings.database_url)
        migrate.upgrade(settings.database_url)
        with session_scope(settings.database_url) as session:
            self.token = tokens.create_token(session, "fuzz")
        self.headers = {"Authorization": f"Bearer {self.token}"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "api.main:create_app", "--port", str(self.port)],
            cwd=REPO, env=self.env, stdout=open(self.log, "wb"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.base}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        else:
            raise RuntimeError(f"the API did not start:\n{self.log.read_text()[-3000:]}")
        # Jobs for the links to lead to: most of the fuzzer's own submissions are refused.
        self.seeded = [httpx.post(f"{self.base}/v1/jobs", json=SEED_JOB, headers=self.headers).json()["id"] for _ in range(3)]
        httpx.post(f"{self.base}/v1/jobs/{self.seeded[0]}/cancel", headers=self.headers).raise_for_status()
        self.setup_requests = self._count()
        return self

    def __exit__(self, *exc) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
        if self.mode == "postgres":
            from dispatch.broker import delete_queue
            from store.db import drop_database

            drop_database(self.env["CSSL_DATABASE_URL"])
            delete_queue(self.env["CSSL_BROKER_URL"], self.env["CSSL_QUEUE"])
        shutil.rmtree(self.state, ignore_errors=True)

    def _count(self) -> int:
        return len(STATUS.findall(self.log.read_bytes()))

    def requests(self) -> int:
        """Requests answered since the setup, from the access log."""
        return self._count() - self.setup_requests

    def statuses(self) -> Counter:
        return Counter(m.decode() for m in STATUS.findall(self.log.read_bytes())[self.setup_requests:])

    def schemathesis(self, seed: int, max_examples: int, phases: str) -> tuple[dict, int]:
        report = self.state / f"report-{seed}.json"
        result = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "--no-color", "run", f"{self.base}/openapi.json", "--checks", "all",
             "-H", f"Authorization: Bearer {self.token}", "--workers", "1", "--seed", str(seed),
             "--max-examples", str(max_examples), "--phases", phases, "--report", "json",
             "--report-json-path", str(report)],
            cwd=REPO, capture_output=True, text=True)
        if result.returncode != 0:
            print(result.stdout[-8000:], file=sys.stderr)
        return (json.loads(report.read_text()) if report.exists() else {}), result.returncode

    def cancel_queued(self) -> int:
        cancelled = 0
        while page := httpx.get(f"{self.base}/v1/jobs", params={"status": "queued", "limit": 200},
                                headers=self.headers).json()["items"]:
            for job in page:
                httpx.post(f"{self.base}/v1/jobs/{job['id']}/cancel", headers=self.headers).raise_for_status()
            cancelled += len(page)
        return cancelled


if __name__ == "__main__":
    sys.exit(main())
