"""Outage drills at full length and default settings: Postgres stopped for 90 s and for 400 s
(past the worker's 300 s retry window) and Redis stopped for 60 s, each under a running
training job from its first progress report on; prints per drill one JSON line: the job's
outcome, its attempts and stalled attempts, metric steps lost or doubled, seconds of training
redone, the outage and the wall time.

Starts its own private Postgres cluster and redis-server (``tests/service/servers.py``), an API
and a worker with no ``CSSL_*`` setting but the URLs, state folder and queue, so every window
is the default one. About 15 minutes, longer on a slow machine.

    .venv/bin/python -m benchmarks.outage_drill [--drills postgres-90,postgres-400,redis-60]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
DRILLS = {"postgres-90": ("postgres", 90), "postgres-400": ("postgres", 400), "redis-60": ("redis", 60)}
# Two minutes of training steps (however fast the machine), a checkpoint every epoch of 4 steps.
JOB = {
    "kind": "pretrain",
    "method": "simclr",
    "dataset": {"name": "synthetic"},
    "evaluate": [],
    "config": {
        "backbone": "small",
        "epochs": 10_000,
        "batch_size": 32,
        "subset": 128,
        "precision": "fp32",
        "checkpoint_every": 1,
        "time_budget": 120,
    },
}


def _private_servers():
    # tests.service.support sets the test suite's CSSL_* variables on import: not for this script.
    saved = dict(os.environ)
    from tests.service.servers import PrivatePostgres, PrivateRedis, unavailable

    os.environ.clear()
    os.environ.update(saved)
    return PrivatePostgres, PrivateRedis, unavailable


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--drills", default=",".join(DRILLS), help=f"comma-separated, of {', '.join(DRILLS)}")
    args = parser.parse_args()
    PrivatePostgres, PrivateRedis, unavailable = _private_servers()
    if why := unavailable():
        print(f"outage_drill: private servers cannot be started here: {why}", file=sys.stderr)
        return 2

    from store import migrate
    from store import tokens as store_tokens
    from store.db import session_scope

    folder = Path(tempfile.mkdtemp(prefix="cssl_outage_drill_"))
    postgres, broker = PrivatePostgres().start(), PrivateRedis(folder / "redis").start()
    processes = []
    try:
        postgres.create_database()
        migrate.upgrade(postgres.url)
        with session_scope(postgres.url) as session:
            headers = {"Authorization": f"Bearer {store_tokens.create_token(session, 'drill')}"}
        env = {key: value for key, value in os.environ.items() if not key.startswith("CSSL_")}
        env.update(
            {
                "CSSL_DATABASE_URL": postgres.url,
                "CSSL_BROKER_URL": broker.url,
                "CSSL_STATE_DIR": str(folder / "state"),
                "CSSL_QUEUE": "outage_drill",
                "CSSL_CACHE_DIR": str(folder / "cache"),
                "PYTHONPATH": str(REPO),
            }
        )
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        processes.append(
            _start(
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
                ],
                env,
                folder / "api.log",
            )
        )
        _wait(lambda: _get(base, "/healthz", {}) is not None, 60, "the API to start")
        processes.append(
            _start(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "worker.app",
                    "worker",
                    "--pool=solo",
                    "-c",
                    "1",
                    "--loglevel=INFO",
                    "--hostname=drill@%h",
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                ],
                env,
                folder / "worker.log",
            )
        )
        _wait(lambda: " ready." in (folder / "worker.log").read_text(errors="replace"), 120, "the worker to start")
        servers = {"postgres": postgres, "redis": broker}
        for name in args.drills.split(","):
            kind, seconds = DRILLS[name]
            print(json.dumps(drill(name, servers[kind], seconds, base, headers)), flush=True)
    finally:
        for process in reversed(processes):
            process.send_signal(signal.SIGQUIT)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
        broker.stop()
        postgres.remove()
    return 0


def drill(name: str, server, outage: float, base: str, headers: dict[str, str]) -> dict:
    started = time.monotonic()
    response = httpx.post(f"{base}/v1/jobs", json=JOB, headers=headers, timeout=30)
    response.raise_for_status()
    job_id = response.json()["id"]
    # Into training: its first progress report (the end of the first epoch, at default settings).
    at_stop = _wait(
        lambda: (j := _get(base, f"/v1/jobs/{job_id}", headers)) and (j.get("progress") or {}).get("step") and j,
        300,
        "training to start",
    )
    server.stop()
    time.sleep(outage)
    server.start()
    job = _wait(
        lambda: (j := _get(base, f"/v1/jobs/{job_id}", headers)) and j["status"] not in ("queued", "running") and j,
        1800,
        "the job to finish",
    )
    wall = time.monotonic() - started
    events = _events(base, job_id, headers)
    steps = (job.get("result") or {}).get("steps") or 0
    seen = [p["step"] for p in _get(base, f"/v1/jobs/{job_id}/metrics", headers)["series"].get("loss", [])]
    every = 10  # CSSL_PROGRESS_EVERY's default; a point also at each epoch's end (4 steps) and at the last step
    expected = {s for s in range(1, steps + 1) if s % every == 0 or s % 4 == 0 or s == steps}
    train_seconds = (job.get("result") or {}).get("train_seconds") or 0.0
    redone = _steps_redone(events)
    return {
        "drill": name,
        "outage_seconds": outage,
        "stopped_at_step": at_stop["progress"]["step"],
        "running_when_stopped": at_stop["status"] == "running",
        "outcome": job["status"],
        "attempts": job["attempt"],
        "stalled_attempts": _stalled(events),
        "states": [f"{e['status']}/{e['attempt']}" for e in events if e["type"] == "state"],
        "steps": steps,
        "steps_lost": len(expected - set(seen)),
        "steps_doubled": len(seen) - len(set(seen)) + len(set(seen) - expected),
        "steps_redone": redone,
        "seconds_redone": round(redone * train_seconds / steps, 1) if steps else None,
        "wall_seconds": round(wall, 1),
    }


def _steps_redone(events: list[dict]) -> int:
    """Per new attempt: how far the one before it got past the checkpoint it resumes from."""
    furthest = checkpoint = redone = 0
    for event in events:
        if event["type"] == "progress":
            furthest = max(furthest, event["step"])
        elif event["type"] == "checkpoint":
            checkpoint = event["step"]
        elif event["type"] == "state" and event["status"] == "running" and event["attempt"] > 1:
            redone += max(0, furthest - checkpoint)
            furthest = checkpoint
    return redone


def _stalled(events: list[dict]) -> int:
    """Attempts the sweeper took for lost (its re-queue messages), which count against CSSL_MAX_ATTEMPTS."""
    return sum(1 for e in events if e["type"] == "state" and "stopped sending heartbeats" in (e.get("message") or ""))


def _events(base: str, job_id: str, headers: dict[str, str]) -> list[dict]:
    out, after = [], 0
    while True:
        response = httpx.get(
            f"{base}/v1/jobs/{job_id}/events", headers={**headers, "Last-Event-ID": str(after)}, timeout=60
        )
        block = [json.loads(line[5:]) | {"type": kind} for kind, line in _sse(response.text)]
        if not block:
            return out
        out += block
        after += len(block)
        if any(e["type"] == "end" for e in block):
            return out


def _sse(text: str):
    kind = None
    for line in text.splitlines():
        if line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:") and kind:
            yield kind, line
            kind = None


def _get(base: str, path: str, headers: dict[str, str]):
    try:
        response = httpx.get(base + path, headers=headers, timeout=30)
    except httpx.TransportError:
        return None
    return response.json() if response.status_code == 200 else None


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(1)
    raise SystemExit(f"outage_drill: timed out after {timeout:g} s waiting for {what}")


def _start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(argv, env=env, cwd=REPO, stdout=open(log, "wb"), stderr=subprocess.STDOUT)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    raise SystemExit(main())
