"""The embedded service (SQLite + file-system queue, nothing else installed): the `make demo`
path end to end, and the state folder it leaves."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys

from .support import REPO


def test_demo_through_http_in_embedded_mode(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}  # no CSSL_* variables: embedded defaults
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli.service_demo",
            "--epochs",
            "1",
            "--subset",
            "256",
            "--batch-size",
            "64",
            "--state-dir",
            str(state),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stdout + run.stderr + (state / "service.log").read_text()
    assert "state: succeeded" in run.stdout
    assert re.search(r"knn +top-1 \d+\.\d%", run.stdout) and re.search(r"linear top-1 \d+\.\d%", run.stdout), run.stdout
    assert "service stopped" in run.stdout
    # Everything lies under the state folder: database, queue, artifacts.
    with sqlite3.connect(state / "cssl.db") as db:
        assert db.execute("select status, attempt from jobs").fetchall() == [("succeeded", 1)]
        assert db.execute("select count(*) from evaluations where checkpoint_id is not null").fetchone() == (2,)
    assert list((state / "artifacts" / "jobs").glob("*/checkpoints/epoch_0001.pt"))
    assert (state / "queue" / "messages").is_dir()
    # The service said in its log that authentication was off.
    assert "authentication is OFF" in (state / "service.log").read_text()
