"""One run on 1 and on 2 gloo processes (CPU): images/s and the loss at each step, side by side.

The same config and seed both times (the global batch split over the ranks on 2), through the
service's launcher (:func:`cssl_core.distributed.launch`); rank 0 reports. Prints a table of the
losses and one JSON line per process count.

    .venv/bin/python -m benchmarks.distributed_cpu [--method simclr] [--batch-size 128] [--steps 16]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

from cssl_core import distributed
from cssl_core.config import build_config
from cssl_core.train import pretrain


def run(overrides: dict, steps: int, out: str) -> dict:
    """Rank 0's losses per step and its images/s over the steps after the first (the loop's
    own figure at the last report), on whatever processes this call runs in."""
    points = []
    result = pretrain(
        build_config(overrides["method"], overrides),
        out,
        on_progress=lambda p: points.append((p.step, p.loss, p.images_per_second)),
        should_stop=lambda: len(points) >= steps,
        progress_every=1,
    )
    return {
        "losses": [loss for _, loss, _ in points],
        "images_per_second": result.images_per_second,
        "train_seconds": result.train_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="simclr")
    parser.add_argument("--backbone", default="small")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=16)
    args = parser.parse_args()
    overrides = {
        "method": args.method,
        "dataset": "synthetic",
        "backbone": args.backbone,
        "batch_size": args.batch_size,
        "epochs": 100,
        "precision": "fp32",
        "checkpoint_every": 0,
        "warmup_epochs": 0,
    }
    results = {}
    for nproc in (1, 2):
        with tempfile.TemporaryDirectory() as out:
            started = time.monotonic()
            config = {**overrides, "nproc": nproc}
            results[nproc] = (
                run(config, args.steps, out) if nproc == 1 else distributed.launch(nproc, run, config, args.steps, out)
            )
            results[nproc]["wall_seconds"] = time.monotonic() - started
    print(f"{'step':>4}  {'loss, 1 process':>16}  {'loss, 2 processes':>18}  {'difference':>10}")
    for step, (one, two) in enumerate(zip(results[1]["losses"], results[2]["losses"], strict=False), 1):
        print(f"{step:>4}  {one:>16.6f}  {two:>18.6f}  {two - one:>10.2e}")
    for nproc, result in results.items():
        shown = {k: round(v, 2) for k, v in result.items() if k != "losses"}
        print(json.dumps({"nproc": nproc, "method": args.method, "batch_size": args.batch_size, **shown}))


if __name__ == "__main__":
    main()
