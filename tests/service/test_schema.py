"""The API answers as its OpenAPI description says: Schemathesis with every check, stateful
runs over the links between routes, against a real uvicorn process on the test database; and
the answers it once got wrong, one by one.

The fuzzer has its own owner and a queue no worker reads, so the jobs it submits stay queued;
they are cancelled afterwards, so that no sweeper hands them to a later test's worker.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import httpx
import pytest

from .support import REPO, TINY, auth, start_api

FUZZ_OWNER = "schema-fuzz"
SEED_JOB = {"kind": "pretrain", "method": "simclr", "dataset": {"name": "synthetic"}, "config": TINY, "evaluate": []}
ACCESS_LINE = re.compile(rb'" \d{3}')


@pytest.fixture(scope="module")
def fuzz_api(service_env, settings, tmp_path_factory):
    from store import tokens
    from store.db import session_scope

    with session_scope(settings.database_url) as session:
        token = tokens.create_token(session, FUZZ_OWNER)
    # Validation, not the submission limit, should answer most of the fuzzer's submissions.
    env = {
        **service_env,
        "CSSL_QUEUE": service_env["CSSL_QUEUE"] + "_fuzz",
        "CSSL_SUBMIT_RATE": "1200",
        "CSSL_SUBMIT_BURST": "100",
    }
    process, base = start_api(env, tmp_path_factory.mktemp("fuzz-api") / "api.log")
    headers = auth(token)
    # Jobs for the links to lead to: the fuzzer's own submissions are mostly refused.
    seeded = [httpx.post(f"{base}/v1/jobs", json=SEED_JOB, headers=headers).json()["id"] for _ in range(3)]
    httpx.post(f"{base}/v1/jobs/{seeded[0]}/cancel", headers=headers).raise_for_status()
    yield base, token, process
    cancel_queued(base, headers)
    process.stop()


def cancel_queued(base: str, headers: dict[str, str]) -> int:
    cancelled = 0
    while page := httpx.get(f"{base}/v1/jobs", params={"status": "queued", "limit": 200}, headers=headers).json()[
        "items"
    ]:
        for job in page:
            httpx.post(f"{base}/v1/jobs/{job['id']}/cancel", headers=headers).raise_for_status()
        cancelled += len(page)
    return cancelled


def run_schemathesis(base: str, token: str, report, *args: str) -> subprocess.CompletedProcess:
    """`schemathesis run` with every check and the project's schemathesis.toml."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "--no-color",
            "run",
            f"{base}/openapi.json",
            "--checks",
            "all",
            "-H",
            f"Authorization: Bearer {token}",
            "--workers",
            "1",
            "--report",
            "json",
            "--report-json-path",
            str(report),
            *args,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_schemathesis_finds_nothing(fuzz_api, tmp_path):
    base, token, process = fuzz_api
    before = len(ACCESS_LINE.findall(process.log.read_bytes()))
    started = time.monotonic()
    result = run_schemathesis(
        base,
        token,
        tmp_path / "report.json",
        "--seed",
        "20261128",
        "--max-examples",
        "20",
        "--phases",
        "examples,fuzzing,stateful",
    )
    seconds = time.monotonic() - started
    requests = len(ACCESS_LINE.findall(process.log.read_bytes())) - before
    report = json.loads((tmp_path / "report.json").read_text())
    assert result.returncode == 0, result.stdout[-6000:]
    assert report["failures"] == [] and report["errors"] == [], report
    assert report["phases"]["stateful"]["status"] == "success", report["phases"]
    assert 250 <= requests <= 800, requests
    print(
        json.dumps(
            {"requests": requests, "test_cases": report["test_cases"]["generated"], "seconds": round(seconds, 1)}
        )
    )


def assert_problem(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    return response.json()


@pytest.mark.parametrize(
    "path",
    [
        # Cursors: a year past 9999, a NUL for the job id.
        "/v1/jobs?cursor=WyItY3JlYXRlZF9hdCIsICI5OTk5OS0wMS0wMVQwMDowMDowMCIsICIwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMCJd",
        "/v1/jobs?cursor=WyItY3JlYXRlZF9hdCIsICIyMDI2LTAxLTAxVDAwOjAwOjAwKzAwOjAwIiwgIlx1MDAwMCJd",
        "/v1/jobs?tag=key:%00",
        "/v1/jobs?method=%00",
        "/v1/jobs/not-a-job-id",
        "/v1/checkpoints?job=%F0%B7%B1%BE%00v",
        "/v1/checkpoints/382266863598/download",
        "/v1/evaluations?checkpoint=99999999999",
        f"/v1/jobs/{'0' * 32}/events?after=34588823758236090368",
        f"/v1/jobs/{'0' * 32}/logs?tail=99999999999",
    ],
)
def test_out_of_range_and_malformed_parameters_are_422(fuzz_api, path):
    base, token, _ = fuzz_api
    assert_problem(httpx.get(base + path, headers=auth(token)), 422)


def test_a_body_that_is_not_utf8_json_is_422_not_400(fuzz_api):
    base, token, _ = fuzz_api
    response = httpx.post(
        f"{base}/v1/jobs", content=b'{"kind": "\xff\xfe"}', headers={**auth(token), "content-type": "application/json"}
    )
    assert assert_problem(response, 422)["errors"][0]["loc"] == ["body"]


@pytest.mark.parametrize(
    "body, loc",
    [
        ({"kind": "eval", "checkpoint": -101039444323827}, ["body", "checkpoint"]),
        ({**SEED_JOB, "config": {**TINY, "device": "cpu\x00"}}, ["body", "config"]),
    ],
)
def test_what_the_database_cannot_hold_is_422(fuzz_api, body, loc):
    base, token, _ = fuzz_api
    response = httpx.post(f"{base}/v1/jobs", json=body, headers=auth(token))
    assert assert_problem(response, 422)["errors"][0]["loc"] == loc


def test_a_last_event_id_that_is_not_an_event_number_is_ignored(fuzz_api):
    base, token, _ = fuzz_api
    job = httpx.post(f"{base}/v1/jobs", json=SEED_JOB, headers=auth(token)).json()
    httpx.post(f"{base}/v1/jobs/{job['id']}/cancel", headers=auth(token)).raise_for_status()

    def ids(last_event_id: str) -> list[int]:
        headers = {**auth(token), "Last-Event-ID": last_event_id}
        text = httpx.get(f"{base}/v1/jobs/{job['id']}/events", headers=headers).text
        return [int(n) for n in re.findall(r"^id: (\d+)$", text, re.MULTILINE)]

    everything = ids("null")
    assert len(everything) >= 2 and ids("-1") == ids("9" * 40) == ids("") == everything
    assert ids(str(everything[0])) == everything[1:]


def test_405_allows_every_method_of_the_path(fuzz_api):
    base, token, _ = fuzz_api
    response = httpx.request("OPTIONS", f"{base}/v1/jobs", headers=auth(token))
    assert_problem(response, 405)
    assert response.headers["allow"] == "GET, POST"


def test_every_error_response_is_documented_as_a_problem(fuzz_api):
    spec = httpx.get(f"{fuzz_api[0]}/openapi.json").json()
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            if operation.get("security"):
                assert "401" in responses, (method, path)
            for status, response in responses.items():
                if status[0] in "45" and path != "/readyz":
                    assert list(response["content"]) == ["application/problem+json"], (method, path, status)
    submit = spec["paths"]["/v1/jobs"]["post"]["responses"]
    assert submit["429"]["headers"]["Retry-After"]["schema"]["type"] == "integer"
    assert "GetJob" in submit["202"]["links"]
