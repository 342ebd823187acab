"""How long ``GET /v1/jobs/{id}/metrics?points=N`` takes on a long run: a job with ``--rows``
metric rows (five series each, as a run with two statistics reports), every request timed
through the whole API in-process; prints one JSON line (median and fastest in ms).

Makes its own Postgres database (``--mode embedded``: a SQLite file in a temporary folder), and
drops it at the end; no API or worker process.

    .venv/bin/python -m benchmarks.metric_series --rows 100000 --points 2000
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import timedelta

import numpy as np

from benchmarks.service import ServiceUnderTest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--points", type=int, default=2000)
    parser.add_argument("--requests", type=int, default=5)
    parser.add_argument("--mode", choices=["postgres", "embedded"], default="postgres")
    args = parser.parse_args()

    with ServiceUnderTest(args.mode, name="series", api=False, workers=0) as service:
        print(json.dumps(run(service, args)))
    return 0


def run(service: ServiceUnderTest, args) -> dict:
    from fastapi.testclient import TestClient
    from sqlalchemy import insert

    from api.main import create_app
    from store.db import session_scope
    from store.models import Job, MetricPoint, utcnow

    rng = np.random.default_rng(0)
    started = utcnow()
    with session_scope(service.database_url) as session:
        job = Job(
            owner="bench",
            kind="pretrain",
            method="simclr",
            dataset="synthetic",
            config={},
            evaluate=[],
            status="succeeded",
            started_at=started,
        )
        session.add(job)
        session.flush()
        loss = 5 * np.exp(-np.arange(args.rows) / (args.rows / 3)) + rng.random(args.rows) * 0.1
        session.execute(
            insert(MetricPoint),
            [
                {
                    "job_id": job.id,
                    "step": i + 1,
                    "epoch": i // 1000,
                    "created_at": started + timedelta(seconds=0.05 * i),
                    "values": {
                        "loss": float(loss[i]),
                        "lr": 0.1,
                        "images_per_second": float(1000 + rng.random()),
                        "pos_similarity": float(rng.random()),
                        "neg_similarity": float(rng.random()),
                    },
                }
                for i in range(args.rows)
            ],
        )
    app = create_app(service.settings, sweep=False)
    timings = []
    with TestClient(app) as client:
        for _ in range(args.requests):
            begin = time.perf_counter()
            response = client.get(f"/v1/jobs/{job.id}/metrics", params={"points": args.points}, headers=service.headers)
            timings.append((time.perf_counter() - begin) * 1000)
            assert response.status_code == 200, response.text
    series = response.json()["series"]
    return {
        "mode": args.mode,
        "rows": args.rows,
        "points": args.points,
        "requests": args.requests,
        "median_ms": round(statistics.median(timings)),
        "fastest_ms": round(min(timings)),
        "points_returned": {name: len(points) for name, points in series.items()},
    }


if __name__ == "__main__":
    sys.exit(main())
