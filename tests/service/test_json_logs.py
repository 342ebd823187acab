"""CSSL_LOG_FORMAT=json: the API and a worker write one JSON object per line, and a job's lines
name its id, attempt, rank and worker."""

from __future__ import annotations

import json
import sys

import httpx
import pytest

from cli.processes import free_port, wait_until_ready
from cli.service import worker_command
from store.settings import get_settings

from .support import TINY, Process, auth, read_events


@pytest.fixture()
def json_env(service_env, monkeypatch):
    monkeypatch.setenv("CSSL_LOG_FORMAT", "json")
    get_settings.cache_clear()  # the worker's command line reads it
    yield {**service_env, "CSSL_LOG_FORMAT": "json", "CSSL_QUEUE": service_env["CSSL_QUEUE"] + "_json"}
    get_settings.cache_clear()


# Printed by Celery's signal handler itself to stdout, past any logging set-up.
CELERY_SHUTDOWN_NOTICE = "worker: Warm shutdown (MainProcess)"


def json_lines(text: str) -> list[dict]:
    lines = [line for line in text.splitlines() if line.strip() and line != CELERY_SHUTDOWN_NOTICE]
    assert lines
    return [json.loads(line) for line in lines]  # every other line is one JSON object


def test_the_api_and_a_worker_log_json_lines_that_name_the_job(json_env, tokens, tmp_path):
    port = free_port()
    api = Process([sys.executable, "-m", "cli.main", "api", "--port", str(port)], json_env, tmp_path / "api.log")
    worker = Process(worker_command("wjson"), json_env, tmp_path / "worker.log")
    try:
        base = f"http://127.0.0.1:{port}"
        assert wait_until_ready(f"{base}/healthz", api.popen, timeout=60), api.output()
        worker.wait_for(" ready.", timeout=90)
        body = {"kind": "pretrain", "method": "simclr", "dataset": {"name": "synthetic"}, "config": TINY}
        job = httpx.post(f"{base}/v1/jobs", json=body, headers=auth(tokens["alice"])).json()["id"]
        events = read_events(base, f"/v1/jobs/{job}/events", auth(tokens["alice"]), timeout=180)
        assert events[-2]["data"]["status"] == "succeeded"
    finally:
        worker.stop()
        api.stop()

    worker_lines = json_lines(worker.output())
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in worker_lines)
    of_job = [line for line in worker_lines if line.get("job") == job]
    assert any(f"job {job} succeeded" in line["message"] for line in of_job)
    assert {(line["attempt"], line["rank"]) for line in of_job} == {(1, 0)}
    assert {line["worker"] for line in of_job} == {next(iter({line["worker"] for line in of_job}))}
    assert of_job[0]["worker"].startswith("wjson@")
    # Lines outside the job carry no job.
    assert any("ready." in line["message"] and "job" not in line for line in worker_lines)

    api_lines = json_lines(api.output())
    access = [line for line in api_lines if line["logger"] == "uvicorn.access"]
    assert any("POST /v1/jobs" in line["message"] for line in access)
