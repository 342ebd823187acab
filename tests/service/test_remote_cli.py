"""``cssl login`` and ``cssl jobs ...`` as a user runs them: the real CLI in its own process
against a real API process and worker; exit codes say how a job ended."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import httpx
import pytest

from .support import auth

RUN = ["--method", "simclr", "--dataset", "synthetic", "--backbone", "small", "--batch-size", "32"]
TINY_FLAGS = [*RUN, "--epochs", "1", "--subset", "128", "--precision", "fp32"]


@pytest.fixture(scope="module")
def profile(tmp_path_factory):
    return tmp_path_factory.mktemp("cli") / "profile.json"


def cssl(*args: str, env: dict | None = None, stdin: str | None = None, timeout: float = 300):
    """Run the CLI; the service comes from the profile unless ``env`` names one."""
    environment = {k: v for k, v in os.environ.items() if k not in ("CSSL_API_URL", "CSSL_TOKEN")}
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        env={**environment, **(env or {})},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def signed_in(server, tokens, profile):
    """A profile written by `cssl login`, the token read from stdin."""
    refused = cssl("login", server, env={"CSSL_PROFILE": str(profile)}, stdin="cssl_not-a-token\n")
    assert refused.returncode == 2 and not profile.exists(), refused.stderr
    done = cssl("login", server, env={"CSSL_PROFILE": str(profile)}, stdin=tokens["alice"] + "\n")
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(profile.stat().st_mode) == 0o600
    assert json.loads(profile.read_text()) == {"url": server, "token": tokens["alice"]}
    return {"CSSL_PROFILE": str(profile)}


def job_id(result) -> str:
    assert result.stdout.startswith("submitted "), (result.stdout, result.stderr)
    return result.stdout.split()[1]


def test_submit_follow_list_show_and_evaluate(server, worker, signed_in, tokens):
    result = cssl(
        "jobs", "submit", *TINY_FLAGS, "--evaluate", "knn", "--name", "from the cli", "--tag", "src=cli", "-f",
        env=signed_in,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    job = job_id(result)
    assert f"{job}: succeeded" in result.stdout and "knn_top1" in result.stdout
    assert "running (attempt 1)" in result.stderr  # the events, followed as they came

    stored = httpx.get(f"{server}/v1/jobs/{job}", headers=auth(tokens["alice"])).json()
    assert stored["name"] == "from the cli" and stored["tags"] == {"src": "cli"}
    # The flags became the same config keys `cssl pretrain` gives.
    assert stored["config"]["backbone"] == "small" and stored["config"]["subset"] == 128

    listed = cssl("jobs", "ls", "--tag", "src=cli", env=signed_in)
    assert listed.returncode == 0 and job in listed.stdout and "from the cli" in listed.stdout
    rows = [
        json.loads(line)
        for line in cssl("jobs", "ls", "--json", "--tag", "src=cli", env=signed_in).stdout.split("\n")
        if line
    ]
    assert [row["id"] for row in rows] == [job]
    assert cssl("jobs", "ls", "--tag", "src=nowhere", "--json", env=signed_in).stdout == ""

    shown = cssl("jobs", "show", job, env=signed_in)
    assert shown.returncode == 0 and "succeeded (attempt 1)" in shown.stdout and "src=cli" in shown.stdout
    assert json.loads(cssl("jobs", "show", job, "--json", env=signed_in).stdout)["id"] == job

    evaluated = cssl("jobs", "evaluate", job, "--protocol", "knn", "--set", "knn.k=5", "-f", env=signed_in)
    assert evaluated.returncode == 0, evaluated.stderr
    evaluation = job_id(evaluated)
    assert httpx.get(f"{server}/v1/jobs/{evaluation}", headers=auth(tokens["alice"])).json()["config"]["knn"]["k"] == 5

    labelled = cssl("jobs", "label", job, "--tag", "best=yes", "--untag", "src", env=signed_in)
    assert labelled.returncode == 0 and "best=yes" in labelled.stdout and "src=" not in labelled.stdout

    logs = cssl("jobs", "logs", job, env=signed_in)
    assert logs.returncode == 0 and logs.stdout.strip()


def test_download_resumes_where_it_stopped(server, worker, signed_in, tokens, tmp_path):
    result = cssl("jobs", "submit", *TINY_FLAGS, "-f", env=signed_in)
    assert result.returncode == 0, result.stderr
    job = job_id(result)
    checkpoints = httpx.get(f"{server}/v1/checkpoints", params={"job": job}, headers=auth(tokens["alice"])).json()
    final = next(c for c in checkpoints if c["final"])
    whole = httpx.get(server + final["download"], headers=auth(tokens["alice"])).content
    assert len(whole) == final["size_bytes"]

    out = tmp_path / "last.pt"
    assert cssl("jobs", "download", job, "-o", str(out), env=signed_in).returncode == 0
    assert out.read_bytes() == whole

    # An interrupted download left its first half; a marked byte shows the half is kept, not fetched again.
    out.unlink()
    part = tmp_path / "last.pt.part"
    half = bytearray(whole[: len(whole) // 2])
    half[0] ^= 0xFF
    part.write_bytes(bytes(half))
    resumed = cssl("jobs", "download", job, "-o", str(out), env=signed_in)
    assert resumed.returncode == 0, resumed.stderr
    got = out.read_bytes()
    assert got[1:] == whole[1:] and got[0] == whole[0] ^ 0xFF and not part.exists()

    deleted = cssl("jobs", "delete", job, env=signed_in)
    assert deleted.returncode == 0 and f"{job}: deleted" in deleted.stdout, deleted.stderr
    assert httpx.get(server + final["download"], headers=auth(tokens["alice"])).status_code == 404
    again = cssl("jobs", "delete", job, env=signed_in)
    assert again.returncode == 2 and "404" in again.stderr


def test_exit_codes_say_how_it_ended(server, worker, signed_in):
    long_run = job_id(cssl("jobs", "submit", *RUN, "--epochs", "100000", "--time-budget", "120", env=signed_in))
    assert cssl("jobs", "cancel", long_run, env=signed_in).returncode == 0
    followed = cssl("jobs", "logs", long_run, "-f", env=signed_in)
    assert followed.returncode == 3 and f"{long_run}: cancelled" in followed.stdout

    refused = cssl("jobs", "submit", *TINY_FLAGS, "--set", "temperature=-1", env=signed_in)
    assert refused.returncode == 2 and "temperature" in refused.stderr and refused.stdout == ""
    missing = cssl("jobs", "show", "0" * 32, env=signed_in)
    assert missing.returncode == 2 and "404" in missing.stderr
    # The environment wins over the profile; nothing listens on port 9.
    away = cssl("jobs", "ls", env={**signed_in, "CSSL_API_URL": "http://127.0.0.1:9", "CSSL_TOKEN": "x"})
    assert away.returncode == 4 and "could not reach" in away.stderr
    nowhere = cssl("jobs", "ls", env={"CSSL_PROFILE": str(signed_in["CSSL_PROFILE"]) + ".none"})
    assert nowhere.returncode == 2 and "cssl login" in nowhere.stderr
