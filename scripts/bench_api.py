"""Load benchmark of the service on this machine, over loopback only.

Starts its own API (one uvicorn process, access log off) and worker, in the embedded mode or
against Postgres + Redis, and measures:

1. submission to first training step: POST -> the worker's claim -> the first step reported
   (server timestamps; the worker idle and warm, progress reported every step);
2. ``GET /v1/jobs/{id}`` at ``--clients`` concurrent clients while a training job runs:
   requests/s and latency percentiles;
3. ``POST /v1/jobs`` throughput at ``--post-clients`` concurrent clients (the jobs are
   cancelled afterwards and never train);
4. with ``--soak SECONDS``: a mixed read load (job, list, metrics, checkpoints) at
   ``--soak-clients`` while a job trains, with the resident memory of the API and worker
   processes at its start and end, errors and latency percentiles;
5. with ``--failover``: a second worker waits idle; the worker running a job is killed with
   SIGKILL, and the time until the job runs again on the other worker is measured (it is
   ``CSSL_HEARTBEAT_TIMEOUT`` plus up to one ``CSSL_SWEEP_INTERVAL``; ``--heartbeat-timeout``).

Every loop is bounded in time and count; the client runs on the same 2 cores as the service.

    python scripts/bench_api.py --mode postgres      # CSSL_BENCH_POSTGRES / CSSL_BENCH_REDIS override the servers
    python scripts/bench_api.py --mode embedded
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

from benchmarks.service import ServiceUnderTest

TINY = {"backbone": "small", "epochs": 1, "batch_size": 32, "subset": 128, "precision": "fp32"}
LONG = {
    "backbone": "small",
    "epochs": 1000,
    "batch_size": 32,
    "subset": 128,
    "precision": "fp32",
    "checkpoint_every": 0,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=["postgres", "embedded"], default="postgres")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of GET load (bounded)")
    parser.add_argument("--max-requests", type=int, default=200_000)
    parser.add_argument("--post-clients", type=int, default=10)
    parser.add_argument("--posts", type=int, default=500)
    parser.add_argument("--first-step-runs", type=int, default=5)
    parser.add_argument("--api-workers", type=int, default=1, help="API processes (cssl api --workers)")
    parser.add_argument("--soak", type=float, default=0, help="seconds of mixed load with memory sampled (0: none)")
    parser.add_argument("--soak-clients", type=int, default=10)
    parser.add_argument("--failover", action="store_true", help="measure a lost worker's job moving to another")
    parser.add_argument("--heartbeat-timeout", type=float, default=60.0, help="CSSL_HEARTBEAT_TIMEOUT of the service")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()

    # No submission limit: the POST load measures the API, not the limit.
    env = {"CSSL_PROGRESS_EVERY": "1", "CSSL_SUBMIT_RATE": "0", "CSSL_HEARTBEAT_TIMEOUT": str(args.heartbeat_timeout)}
    with ServiceUnderTest(args.mode, api_workers=args.api_workers, env=env) as service:
        results = {"mode": args.mode, "api_workers": args.api_workers, "cores": os.cpu_count()}
        results["first_step"] = first_step(service, args.first_step_runs)
        print(json.dumps({"first_step": results["first_step"]}, indent=1), flush=True)
        long_job = service.submit(LONG, evaluate=[])
        service.wait_for_status(long_job, "running")
        while not service.get(long_job)["progress"]:  # its first step, which loads the data, is slow
            time.sleep(0.5)
        # The training job's own pace, alone and under the load: both share the 2 cores.
        time.sleep(3)
        step_0 = service.get(long_job)["progress"]["step"]
        time.sleep(10)
        step_1 = service.get(long_job)["progress"]["step"]
        results["get_job"] = asyncio.run(get_load(service, long_job, args.clients, args.duration, args.max_requests))
        step_2 = service.get(long_job)["progress"]["step"]
        results["get_job"]["training_steps_per_second_alone"] = round((step_1 - step_0) / 10, 2)
        results["get_job"]["training_steps_per_second_under_load"] = round(
            (step_2 - step_1) / results["get_job"]["seconds"], 2
        )
        print(json.dumps({"get_job": results["get_job"]}, indent=1), flush=True)
        results["post_job"] = asyncio.run(post_load(service, args.post_clients, args.posts, args.duration))
        print(json.dumps({"post_job": results["post_job"]}, indent=1), flush=True)
        service.cancel_all()
        if args.soak:
            results["soak"] = soak(service, args.soak_clients, args.soak)
            print(json.dumps({"soak": results["soak"]}, indent=1), flush=True)
        if args.failover:
            results["failover"] = failover(service)
            print(json.dumps({"failover": results["failover"]}, indent=1), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


def first_step(service: ServiceUnderTest, runs: int) -> dict:
    claim, step = [], []
    service.wait_for_status(service.submit(TINY, evaluate=[]), "succeeded")  # warm the worker (imports, data)
    for _ in range(runs):
        job = service.submit(TINY, evaluate=[])
        service.wait_for_status(job, "succeeded")
        created = _time(service.get(job)["timings"]["created_at"])
        events = service.events_until(job, lambda event: False)  # all of them
        running = next(e for e in events if e["event"] == "state" and e["data"]["status"] == "running")
        progress = next(e for e in events if e["event"] == "progress")
        claim.append(_time(running["data"]["at"]) - created)
        step.append(_time(progress["data"]["at"]) - created)
    return {
        "runs": runs,
        "post_to_claim_s_median": round(statistics.median(claim), 3),
        "post_to_first_step_s_median": round(statistics.median(step), 3),
        "post_to_first_step_s_max": round(max(step), 3),
    }


class RawConnection:
    """One keep-alive HTTP/1.1 connection over asyncio streams. Much cheaper per request than
    httpx, so that on 2 cores the load generator takes less of the CPU the service needs."""

    def __init__(self, port: int, headers: dict[str, str]):
        self.port = port
        self.header_lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())

    async def open(self) -> RawConnection:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        return self

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{self.header_lines}"
        if body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + body)
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = next(int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:"))
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


async def _load(
    service: ServiceUnderTest,
    clients: int,
    duration: float,
    max_requests: int,
    method: str,
    path: str,
    body: bytes,
    expect: int,
) -> dict:
    latencies: list[float] = []
    errors = 0
    connections = [await RawConnection(service.port, service.headers).open() for _ in range(clients)]
    deadline = time.monotonic() + duration

    async def one_client(connection: RawConnection):
        nonlocal errors
        while time.monotonic() < deadline and len(latencies) < max_requests:
            start = time.perf_counter()
            status, _ = await connection.request(method, path, body)
            latencies.append(time.perf_counter() - start)
            errors += status != expect

    start = time.monotonic()
    await asyncio.gather(*(one_client(c) for c in connections))
    elapsed = time.monotonic() - start
    for connection in connections:
        connection.close()
    return {"clients": clients, "seconds": round(elapsed, 1), "errors": errors, **_summary(latencies, elapsed)}


async def get_load(service: ServiceUnderTest, job_id: str, clients: int, duration: float, max_requests: int) -> dict:
    return await _load(service, clients, duration, max_requests, "GET", f"/v1/jobs/{job_id}", b"", 200)


async def post_load(service: ServiceUnderTest, clients: int, posts: int, duration: float) -> dict:
    body = {
        "kind": "pretrain",
        "method": "simclr",
        "dataset": {"name": "synthetic"},
        "config": TINY,
        "evaluate": [],
        "priority": 0,
    }
    return await _load(service, clients, duration, posts, "POST", "/v1/jobs", json.dumps(body).encode(), 202)


def soak(service: ServiceUnderTest, clients: int, seconds: float) -> dict:
    job = service.submit(LONG, evaluate=[])
    service.wait_for_status(job, "running")
    paths = [f"/v1/jobs/{job}", "/v1/jobs?limit=20", f"/v1/jobs/{job}/metrics", "/v1/checkpoints"]
    memory_start = memory(service)
    latencies: list[float] = []
    errors: dict[str, int] = {}

    async def run() -> float:
        connections = [await RawConnection(service.port, service.headers).open() for _ in range(clients)]
        deadline = time.monotonic() + seconds

        async def one_client(connection: RawConnection, offset: int):
            turn = offset
            while time.monotonic() < deadline:
                path = paths[turn % len(paths)]
                turn += 1
                start = time.perf_counter()
                status, _ = await connection.request("GET", path)
                latencies.append(time.perf_counter() - start)
                if status != 200:
                    errors[f"{status} {path}"] = errors.get(f"{status} {path}", 0) + 1
                await asyncio.sleep(0.01)  # a dashboard's pace, not a flood: the job trains beside it

        start = time.monotonic()
        await asyncio.gather(*(one_client(c, i) for i, c in enumerate(connections)))
        for connection in connections:
            connection.close()
        return time.monotonic() - start

    elapsed = asyncio.run(run())
    memory_end = memory(service)
    still = service.get(job)
    service.cancel_all()
    return {
        "seconds": round(elapsed, 1),
        "clients": clients,
        "errors": errors,
        **_summary(latencies, elapsed),
        "rss_mib_start": memory_start,
        "rss_mib_end": memory_end,
        "job_status_at_end": still["status"],
        "job_steps": still["progress"]["step"],
    }


def failover(service: ServiceUnderTest) -> dict:
    spare = service.start_worker("spare")  # up and idle
    job = service.submit(LONG, evaluate=[])
    service.wait_for_status(job, "running")
    first = service.get(job)["worker"]
    victim = service.workers[0] if first.startswith("cssl@") else spare
    victim.send_signal(signal.SIGKILL)
    killed = time.time()
    victim.wait()
    # The events carry the server's times: the new attempt's claim and its first step.
    resumed = {}

    def second_attempt_stepped(event) -> bool:
        if event["event"] == "state" and event["data"]["status"] == "running" and event["data"]["attempt"] == 2:
            resumed["claim"] = _time(event["data"]["at"])
        elif event["event"] == "progress" and "claim" in resumed:
            resumed["step"] = _time(event["data"]["at"])
            return True
        return False

    service.events_until(job, second_attempt_stepped)
    current = service.get(job)
    service.cancel_all()
    return {
        "heartbeat_timeout_s": service.settings.heartbeat_timeout,
        "first_worker": first,
        "second_worker": current["worker"],
        "death_to_claim_s": round(resumed["claim"] - killed, 2),
        "death_to_next_step_s": round(resumed["step"] - killed, 2),
    }


def _summary(latencies: list[float], elapsed: float) -> dict:
    ordered = sorted(latencies)

    def pct(p: float) -> float:
        return round(1000 * ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))], 1)

    return {
        "requests": len(ordered),
        "requests_per_second": round(len(ordered) / elapsed, 1),
        "p50_ms": pct(50),
        "p95_ms": pct(95),
        "p99_ms": pct(99),
        "max_ms": round(1000 * ordered[-1], 1),
    }


def memory(service: ServiceUnderTest) -> dict[str, float]:
    """Resident memory (MiB) of the API and the first worker, each with its child processes."""
    names = {"worker": service.workers[0].pid, "api": service.api_process.pid}
    return {name: round(_rss_kib(pid) / 1024, 1) for name, pid in names.items()}


def _rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` and its descendants, from /proc."""
    total = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except FileNotFoundError:
        return total
    return total + sum(_rss_kib(int(child)) for child in children)


def _time(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


if __name__ == "__main__":
    sys.exit(main())
