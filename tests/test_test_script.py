"""scripts/test.sh (`make test`, CI) on a machine without Postgres and Redis: the service
tests run on the embedded backend, the rest are named on the last line; under CI a missing
server is an error. The servers are made unreachable by pointing the tests at closed ports."""

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once it is closed


def run_script(*pytest_args: str, **env: str) -> subprocess.CompletedProcess:
    port = closed_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith("CSSL_") and k not in ("CI", "PYTEST_ADDOPTS")}
    base.update(
        CSSL_TEST_POSTGRES_ADMIN=f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres",
        CSSL_TEST_REDIS=f"redis://127.0.0.1:{port}/13",
        VENV=str(Path(sys.executable).parent.parent),
        **env,
    )
    return subprocess.run(
        ["bash", "scripts/test.sh", "-p", "no:cacheprovider", *pytest_args],
        cwd=REPO,
        env=base,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_without_servers_the_service_tests_run_embedded_and_the_last_line_names_the_rest():
    run = run_script(
        "tests/service/test_api.py::test_health_checks_need_no_token",
        "tests/service/test_lifecycle.py::test_a_worker_shutting_down_gives_its_job_back",
    )
    assert run.returncode == 0, run.stdout + run.stderr
    last = run.stdout.strip().splitlines()[-1]
    assert last.startswith(
        "not run: 1 of 2 tests. tests/service/test_lifecycle.py::"
        "test_a_worker_shutting_down_gives_its_job_back: needs Postgres and Redis"
    ), last
    assert "not reachable here (Postgres at 127.0.0.1:" in last and "ran on SQLite and a file queue" in last
    assert "1 passed, 1 skipped" in run.stdout  # the health check ran, on the embedded backend


def test_under_ci_a_missing_server_is_an_error():
    run = run_script("tests/service/test_api.py::test_health_checks_need_no_token", CI="true")
    assert run.returncode == 1, run.stdout + run.stderr
    assert "service tests need Postgres" in run.stdout and "1 error" in run.stdout


def test_no_selected_test_is_not_a_failure():
    run = run_script("tests/test_losses.py", "-k", "no_test_is_called_this")
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip().splitlines()[-1] == "no test was selected"
