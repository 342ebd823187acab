"""The dashboard under load, in headless chromium against a real API process: how long a run
page whose series has 100,000 steps takes to draw its charts (target: under 1 s), and what 20
tabs following live runs cost the API process in CPU, against the same time with no tab open.
Prints one JSON object.

Starts its own API (one uvicorn process, no worker) on a fresh Postgres database and queue
(``--mode embedded``: SQLite in a temporary folder). The 100,000-step job is written straight
to the database (metric rows and periodic kNN results); the live runs are running jobs that a
thread of this process moves along as a worker would, one progress report (an event and a
metric point) per job per second, through store/jobs.py and store/records.py.

    .venv/bin/python -m benchmarks.ui_load [--mode postgres|embedded] [--tabs 20] [--seconds 30]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import httpx
import numpy as np

from benchmarks.service import ServiceUnderTest

CHROMIUM = os.environ.get("CSSL_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
TICKS = os.sysconf("SC_CLK_TCK")
# Run in each tab before the page's own scripts: notes when the run page's charts section stops
# being aria-busy, which is when a user sees the charts drawn.
CHARTS_DRAWN_WATCH = """
addEventListener("DOMContentLoaded", () => {
  new MutationObserver(() => {
    const charts = document.getElementById("charts");
    if (window.benchmarkChartsDrawn === undefined && charts?.getAttribute("aria-busy") === "false")
      window.benchmarkChartsDrawn = performance.now();
  }).observe(document.body, { subtree: true, childList: true, attributes: true, attributeFilter: ["aria-busy"] });
});
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=["postgres", "embedded"], default="postgres")
    parser.add_argument("--steps", type=int, default=100_000, help="steps of the long run's series")
    parser.add_argument("--loads", type=int, default=5, help="cold loads of its run page (a new browser context each)")
    parser.add_argument("--tabs", type=int, default=20, help="tabs, each following one live run")
    parser.add_argument("--seconds", type=float, default=30, help="each CPU measurement's length")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    # No worker reads the queue; the sweeper leaves the fake running jobs alone.
    env = {"CSSL_SUBMIT_RATE": "0", "CSSL_HEARTBEAT_TIMEOUT": "86400"}
    with ServiceUnderTest(args.mode, name="ui_load", workers=0, env=env) as service, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        long_run = make_long_run(service.database_url, args.steps)
        first_paint = measure_first_paint(browser, service, long_run, args.loads)
        live = measure_live_tabs(browser, service, args.tabs, args.seconds)
        browser.close()
    print(
        json.dumps(
            {
                "run_page": {"steps": args.steps, **first_paint},
                "live_tabs": live,
                "mode": args.mode,
                "cores": os.cpu_count(),
            }
        ),
        flush=True,
    )
    return 0


def measure_first_paint(browser, service, job_id: str, loads: int) -> dict:
    """Navigation start to the charts drawn (the charts section no longer aria-busy), each load in a
    new context, so with nothing cached."""
    timings = []
    for _ in range(loads):
        context = signed_in(browser, service)
        page = context.new_page()
        page.goto(f"{service.base}/ui/jobs/{job_id}")
        timings.append(charts_ready(page))
        points = int(page.locator("#chart-loss").get_attribute("data-points"))
        context.close()
    begin = time.perf_counter()
    response = httpx.get(
        f"{service.base}/v1/jobs/{job_id}/metrics", params={"points": 2000}, headers=service.headers, timeout=60
    )
    metrics_ms = (time.perf_counter() - begin) * 1000
    return {
        "charts_ready_ms": [round(t) for t in timings],
        "median_ms": round(statistics.median(timings)),
        "target_ms": 1000,
        "loss_points_drawn": points,
        "metrics_response_kb": round(len(response.content) / 1024),
        "metrics_response_ms": round(metrics_ms),
    }


def measure_live_tabs(browser, service, tabs: int, seconds: float) -> dict:
    jobs = make_live_runs(service.database_url, tabs)
    feeder = Feeder(service.database_url, jobs)
    feeder.start()
    try:
        time.sleep(3)
        idle = api_cpu(service, seconds)
        # A context per tab: like tabs of as many browsers, not sharing one profile's few
        # connections per server.
        contexts = [signed_in(browser, service) for _ in jobs]
        pages = []
        for context, job_id in zip(contexts, jobs):
            page = context.new_page()
            page.goto(f"{service.base}/ui/jobs/{job_id}")
            pages.append(page)
        for page in pages:
            charts_ready(page)
        visible = sum(page.evaluate("document.visibilityState") == "visible" for page in pages)
        time.sleep(5)  # the streams have caught up
        before = [int(page.locator("#chart-loss").get_attribute("data-points")) for page in pages]
        events_before = feeder.reports
        busy = api_cpu(service, seconds)
        after = [int(page.locator("#chart-loss").get_attribute("data-points")) for page in pages]
        events = feeder.reports - events_before
        for context in contexts:
            context.close()
    finally:
        feeder.stop()
    gained = [b - a for a, b in zip(before, after)]
    return {
        "tabs": len(jobs),
        "visible_tabs": visible,
        "seconds": seconds,
        "progress_reports_per_second": round(events / seconds, 1),
        "api_cpu_percent_no_tabs": idle,
        "api_cpu_percent_with_tabs": busy,
        "api_cpu_percent_per_tab": round((busy - idle) / len(jobs), 2),
        "points_gained_per_tab": {"min": min(gained), "median": statistics.median(gained), "max": max(gained)},
    }


def charts_ready(page, timeout: float = 60) -> float:
    """When the page drew its charts, in ms since navigation (page.wait_for_function would
    evaluate a string, which the dashboard's Content-Security-Policy forbids)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready = page.evaluate("window.benchmarkChartsDrawn ?? null")
        if ready is not None:
            return ready
        time.sleep(0.02)
    raise TimeoutError(f"{page.url}: charts not drawn after {timeout} s")


def signed_in(browser, service):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.add_init_script(f"sessionStorage.setItem('cssl.token', {service.token!r})")
    context.add_init_script(CHARTS_DRAWN_WATCH)
    return context


class Feeder(threading.Thread):
    """Moves the live runs along as a worker does: every second, per job, a progress report
    (job row, event) and a metric point."""

    def __init__(self, database_url: str, jobs: list[str]):
        super().__init__(daemon=True)
        self.database_url, self.jobs = database_url, jobs
        self.halt = threading.Event()
        self.reports = 0

    def run(self) -> None:
        from store import jobs as store_jobs
        from store import records
        from store.db import session_scope

        step = 1000
        started = time.monotonic()
        while not self.halt.wait(max(0.0, started + (step - 999) - time.monotonic())):
            step += 1
            for job_id in self.jobs:
                loss = 5.0 * np.exp(-step / 3000)
                progress = {
                    "epoch": step // 100,
                    "epochs": 1000,
                    "step": step,
                    "total_steps": 100_000,
                    "loss": loss,
                    "lr": 0.1,
                    "images_per_second": 1000.0,
                    "elapsed": float(step),
                }
                values = {"loss": loss, "lr": 0.1, "images_per_second": 1000.0}
                with session_scope(self.database_url) as session:
                    store_jobs.record_progress(session, job_id, 1, progress, values)
                    records.add_metric_point(session, job_id, step, step // 100, values)
                self.reports += 1

    def stop(self) -> None:
        self.halt.set()
        self.join(10)


def _job(session, **fields):
    from cssl_core.config import build_config
    from store.models import Job, utcnow

    config = build_config("simclr", {"dataset": "cifar10", "backbone": "resnet18", "epochs": 1000}).to_dict()
    job = Job(
        owner="bench",
        kind="pretrain",
        method="simclr",
        dataset="cifar10",
        config=config,
        evaluate=["knn", "linear"],
        **{"started_at": utcnow(), "attempt": 1, "worker": "bench@host", **fields},
    )
    session.add(job)
    session.flush()
    return job


def make_long_run(database_url: str, steps: int) -> str:
    """A finished job with a series of ``steps`` points (loss, lr, images/s and two statistics
    each) over 100 epochs, and a periodic kNN result per epoch."""
    from sqlalchemy import insert

    from store import records
    from store.db import session_scope
    from store.models import MetricPoint

    rng = np.random.default_rng(0)
    loss = 6 * np.exp(-np.arange(steps) / (steps / 4)) + rng.random(steps) * 0.2
    per_epoch = max(1, steps // 100)
    with session_scope(database_url) as session:
        job = _job(
            session,
            status="succeeded",
            progress={
                "epoch": 99,
                "epochs": 100,
                "step": steps,
                "total_steps": steps,
                "loss": float(loss[-1]),
                "lr": 0.0,
                "images_per_second": 2000.0,
                "elapsed": steps * 0.05,
            },
        )
        started = job.started_at
        job.finished_at = started + timedelta(seconds=steps * 0.05)
        session.execute(
            insert(MetricPoint),
            [
                {
                    "job_id": job.id,
                    "step": i + 1,
                    "epoch": i // per_epoch,
                    "created_at": started + timedelta(seconds=0.05 * (i + 1)),
                    "values": {
                        "loss": float(loss[i]),
                        "lr": 0.3 * (1 - i / steps),
                        "images_per_second": float(2000 + rng.random() * 50),
                        "pos_similarity": float(rng.random()),
                        "neg_similarity": float(rng.random()),
                    },
                }
                for i in range(steps)
            ],
        )
        for epoch in range(1, 101):
            records.record_evaluation(
                session,
                job.id,
                None,
                {
                    "protocol": "knn",
                    "top1": 80 * (1 - np.exp(-epoch / 30)),
                    "epoch": epoch,
                    "dataset": "cifar10",
                    "num_train": 50_000,
                    "num_test": 10_000,
                },
            )
        return job.id


def make_live_runs(database_url: str, count: int) -> list[str]:
    """Running jobs with 1,000 steps done, for the feeder to move along."""
    from sqlalchemy import insert

    from store.db import session_scope
    from store.models import MetricPoint

    ids = []
    with session_scope(database_url) as session:
        for _ in range(count):
            job = _job(session, status="running")
            session.execute(
                insert(MetricPoint),
                [
                    {
                        "job_id": job.id,
                        "step": s,
                        "epoch": s // 100,
                        "values": {"loss": 5.0 * np.exp(-s / 3000), "lr": 0.1, "images_per_second": 1000.0},
                    }
                    for s in range(1, 1001)
                ],
            )
            ids.append(job.id)
    return ids


def api_cpu(service: ServiceUnderTest, seconds: float) -> float:
    """The API process's CPU use over ``seconds``, in percent of one core (utime + stime)."""

    def ticks() -> int:
        fields = Path(f"/proc/{service.api_process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])

    start, begin = ticks(), time.monotonic()
    time.sleep(seconds)
    return round(100 * (ticks() - start) / TICKS / (time.monotonic() - begin), 1)


if __name__ == "__main__":
    sys.exit(main())
