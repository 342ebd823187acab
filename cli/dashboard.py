"""``make dashboard``: the embedded service (SQLite and a file queue in the state folder, one
worker) kept up with authentication on, and the dashboard's address and a token to sign in
with. Ctrl-C stops it; jobs, checkpoints and tokens stay in the state folder for next time.

    python -m cli.dashboard [--port 8000] [--state-dir .state] [--owner NAME] [--example]
"""

from __future__ import annotations

import argparse
import getpass
import os
import subprocess
import sys
from pathlib import Path

import httpx

from cli.processes import free_port
from cli.service_demo import stop_service, wait_ready

# --example: a short run with periodic kNN, so that every chart of the run page moves.
EXAMPLE_JOB = {
    "kind": "pretrain",
    "method": "simclr",
    "dataset": {"name": "digits"},
    "config": {"backbone": "small", "epochs": 300, "time_budget": 120, "knn_every": 1, "precision": "fp32"},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cli.dashboard", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0: a free port")
    parser.add_argument("--state-dir", default=".state", help="kept between runs (default: ./.state)")
    parser.add_argument("--owner", default=_user(), help="whose token to create (default: your user name)")
    parser.add_argument("--example", action="store_true", help="submit a 2-minute SimCLR run on digits to watch")
    args = parser.parse_args(argv)

    port = args.port or free_port()
    state_dir = Path(args.state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    base = f"http://{args.host}:{port}"
    # Embedded whatever the environment says.
    env = {
        k: v for k, v in os.environ.items() if k not in ("CSSL_DATABASE_URL", "CSSL_BROKER_URL", "CSSL_AUTH_DISABLED")
    }
    env["CSSL_STATE_DIR"] = str(state_dir)
    log = state_dir / "service.log"
    with open(log, "ab") as stderr:  # the child keeps its own copy of the descriptor
        service = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "serve", "--no-access-log", "--host", args.host, "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        wait_ready(base, service, str(state_dir))
        created = subprocess.run(
            [sys.executable, "-m", "cli.main", "token", "create", "--owner", args.owner],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        token = created.stdout.strip().splitlines()[-1]
        print(
            f"dashboard: {base}/ui/\n"
            f"token for {args.owner} (paste it into the dashboard; shown once): {token}\n"
            f"state: {state_dir} (log: {log}); Ctrl-C stops the service",
            flush=True,
        )
        if args.example:
            job = httpx.post(
                f"{base}/v1/jobs", json=EXAMPLE_JOB, headers={"Authorization": f"Bearer {token}"}, timeout=30
            )
            job.raise_for_status()
            print(f"example run: {base}/ui/jobs/{job.json()['id']}", flush=True)
        service.wait()
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        stop_service(service, timeout=60)


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "local"


if __name__ == "__main__":
    sys.exit(main())
