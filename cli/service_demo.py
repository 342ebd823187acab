"""``make demo`` through HTTP: start ``cssl serve`` (embedded, authentication off), submit a
pretraining job, follow its events, print its kNN and linear results next to the same
backbone's at random initialisation, stop the service.

    python -m cli.service_demo [--time-budget 60] [--method simclr] [--state-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import httpx

from cli.processes import free_port, stop_process, wait_until_ready
from cli.sse import parse_events


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cli.service_demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="simclr")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--time-budget", type=float, default=60, help="seconds of training (the job stops then)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--subset", type=int, default=None)
    parser.add_argument("--port", type=int, default=0, help="default: a free port")
    parser.add_argument("--state-dir", help="default: a new temporary folder")
    args = parser.parse_args(argv)

    port = args.port or free_port()
    state_dir = args.state_dir or tempfile.mkdtemp(prefix="cssl-demo-")
    base = f"http://127.0.0.1:{port}"
    # Embedded whatever the environment says, with a progress event every other step.
    env = {k: v for k, v in os.environ.items() if k not in ("CSSL_DATABASE_URL", "CSSL_BROKER_URL")}
    env["CSSL_PROGRESS_EVERY"] = "2"
    print(f"$ cssl serve --no-auth --port {port} --state-dir {state_dir}", flush=True)
    argv = [sys.executable, "-m", "cli.main", "serve", "--no-auth", "--no-access-log", "--port", str(port)]
    with open(os.path.join(state_dir, "service.log"), "ab") as stderr:  # the child keeps its own descriptor
        service = subprocess.Popen([*argv, "--state-dir", state_dir], env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        wait_ready(base, service, state_dir)
        body = {
            "kind": "pretrain",
            "method": args.method,
            "dataset": {"name": args.dataset},
            "config": {
                "backbone": "small",
                "epochs": args.epochs,
                "batch_size": args.batch_size,
                "time_budget": args.time_budget,
                "subset": args.subset,
            },
            "evaluate": ["knn", "linear"],
        }
        print(f"$ curl -X POST {base}/v1/jobs -d '{json.dumps(body)}'", flush=True)
        response = httpx.post(f"{base}/v1/jobs", json=body, timeout=30)
        if response.status_code != 202:
            print(f"submission refused: {response.text}", file=sys.stderr)
            return 1
        job_id = response.json()["id"]
        print(f"job {job_id} queued; following {base}/v1/jobs/{job_id}/events", flush=True)
        _follow(base, job_id)
        job = httpx.get(f"{base}/v1/jobs/{job_id}", timeout=30).json()
        if job["status"] != "succeeded":
            print(f"job {job['status']}: {job['error']}", file=sys.stderr)
            return 1
        evaluations = httpx.get(f"{base}/v1/evaluations", params={"job": job_id}, timeout=30).json()
        print(
            f"\n{args.method} on {args.dataset}, {job['result']['epochs_completed']:.0f} epochs, backbone small "
            f"({job['result']['train_seconds']:.0f} s of training, {job['result']['images_per_second']:.0f} images/s)"
        )
        for evaluation in evaluations:
            if evaluation["checkpoint_id"] is not None:
                top5 = "" if evaluation["top5"] is None else f"  top-5 {evaluation['top5']:.1f}%"
                print(f"  {evaluation['protocol']:<6} top-1 {evaluation['top1']:.1f}%{top5}")
        _print_random_init_baseline(base, job_id, state_dir)
        return 0
    finally:
        stop_service(service, timeout=30)


def stop_service(service: subprocess.Popen, timeout: float) -> None:
    """SIGTERM (the worker checkpoints and gives its job back), then SIGKILL after ``timeout``."""
    stop_process(service, timeout)
    print("service stopped", flush=True)


def _print_random_init_baseline(base: str, job_id: str, state_dir: str) -> None:
    """The same backbone at random initialisation, scored here from the downloaded checkpoint."""
    from cssl_core.evaluation import evaluate_checkpoint

    checkpoints = httpx.get(f"{base}/v1/checkpoints", params={"job": job_id}, timeout=30).json()
    path = os.path.join(state_dir, "demo-checkpoint.pt")
    with (
        httpx.stream("GET", f"{base}/v1/checkpoints/{checkpoints[0]['id']}/download", timeout=120) as r,
        open(path, "wb") as f,
    ):
        for chunk in r.iter_bytes():
            f.write(chunk)
    print("  the same backbone at random initialisation:")
    for protocol in ("knn", "linear"):
        result = evaluate_checkpoint(path, protocol, random_init=True)
        print(f"  {protocol:<6} top-1 {result.top1:.1f}%  top-5 {result.top5:.1f}%")


def _follow(base: str, job_id: str) -> None:
    """Print the job's progress and state changes from its Server-Sent Events stream."""
    last_print = 0.0
    with httpx.stream("GET", f"{base}/v1/jobs/{job_id}/events", timeout=None) as stream:
        for event in parse_events(stream.iter_lines()):
            event_type, data = event["event"], event["data"]
            if event_type == "state":
                print(f"  state: {data['status']}" + (f" ({data['error']})" if data.get("error") else ""), flush=True)
            elif event_type == "progress" and (
                time.monotonic() - last_print > 2 or data["step"] == data["total_steps"]
            ):
                last_print = time.monotonic()
                print(
                    f"  epoch {data['epoch'] + 1}/{data['epochs']}  step {data['step']}/{data['total_steps']}  "
                    f"loss {data['loss']:.3f}  {data['images_per_second']:.0f} images/s",
                    flush=True,
                )
            elif event_type == "evaluation":
                print(f"  {data['protocol']} top-1 {data['top1']:.1f}%", flush=True)
            elif event_type == "end":
                return


def wait_ready(base: str, service: subprocess.Popen, state_dir: str, timeout: float = 120) -> None:
    if not wait_until_ready(f"{base}/readyz", service, timeout):
        why = "exited" if service.poll() is not None else f"was not ready after {timeout:.0f} s"
        raise SystemExit(f"the service {why}; see {state_dir}/service.log")


if __name__ == "__main__":
    sys.exit(main())
