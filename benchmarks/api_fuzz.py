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
import subprocess
import sys
import time
from collections import Counter

import httpx

from benchmarks.service import REPO, ServiceUnderTest

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
    env = {"CSSL_SUBMIT_RATE": args.submit_rate, "CSSL_SUBMIT_BURST": "100"}
    with ServiceUnderTest(args.mode, name="fuzz", workers=0, access_log=True, env=env) as service:
        # Jobs for the links to lead to: most of the fuzzer's own submissions are refused.
        seeded = [service.submit({"backbone": "small", "epochs": 1}, evaluate=[]) for _ in range(3)]
        httpx.post(f"{service.base}/v1/jobs/{seeded[0]}/cancel", headers=service.headers).raise_for_status()
        setup_requests = len(requests_answered(service))
        while (
            len(requests_answered(service)) - setup_requests < args.requests
            and time.monotonic() - started < args.max_minutes * 60
        ):
            # The first run has every phase; later ones draw new data with new seeds.
            phases = "examples,coverage,fuzzing,stateful" if not runs else "fuzzing,stateful"
            max_examples = args.max_examples if not runs else max(1, args.max_examples // 4)
            report, code = schemathesis(service, args.seed + len(runs), max_examples, phases)
            runs.append(
                {
                    "seed": args.seed + len(runs),
                    "phases": phases,
                    "exit_code": code,
                    "test_cases": report.get("test_cases", {}).get("generated"),
                    "requests": len(requests_answered(service)) - setup_requests,
                }
            )
            reports.append(report)
            print(json.dumps({"run": runs[-1]}), file=sys.stderr, flush=True)
        wall = time.monotonic() - started
        statuses = Counter(requests_answered(service)[setup_requests:])
        jobs_accepted = len(ACCEPTED_JOB.findall(service.api_log.read_bytes())) - len(seeded)
        service.cancel_all()
    print(
        json.dumps(
            {
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
            }
        ),
        flush=True,
    )
    return 0 if all(run["exit_code"] == 0 for run in runs) else 1


def requests_answered(service: ServiceUnderTest) -> list[str]:
    """The status code of every request the API answered, from its access log."""
    return [m.decode() for m in STATUS.findall(service.api_log.read_bytes())]


def schemathesis(service: ServiceUnderTest, seed: int, max_examples: int, phases: str) -> tuple[dict, int]:
    report = service.state / f"report-{seed}.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "--no-color",
            "run",
            f"{service.base}/openapi.json",
            "--checks",
            "all",
            "-H",
            f"Authorization: Bearer {service.token}",
            "--workers",
            "1",
            "--seed",
            str(seed),
            "--max-examples",
            str(max_examples),
            "--phases",
            phases,
            "--report",
            "json",
            "--report-json-path",
            str(report),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        print(result.stdout[-8000:], file=sys.stderr)
    return (json.loads(report.read_text()) if report.exists() else {}), result.returncode


if __name__ == "__main__":
    sys.exit(main())
