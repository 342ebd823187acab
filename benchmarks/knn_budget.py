"""CIFAR-10 kNN accuracy within a fixed training-time budget.

Pretrains ``--method`` on a class-balanced ``--subset`` of CIFAR-10's training split for
``--time-budget`` seconds of training wall time (or exactly ``--epochs`` epochs, no budget: the same
figure however busy the machine is), then scores the weighted kNN (k=200, T=0.1)
with the full 50,000-image training split as the neighbour bank on the full 10,000-image
test split, next to the same backbone at random initialisation. Prints one JSON line per run.

    .venv/bin/python -m benchmarks.knn_budget --method simclr --time-budget 300
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from cssl_core.config import build_config
from cssl_core.evaluation import evaluate_checkpoint
from cssl_core.train import pretrain

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="simclr")
    parser.add_argument("--data", default=os.environ.get("CSSL_CIFAR10", str(DEFAULT_DATA)))
    parser.add_argument("--backbone", default="small")
    parser.add_argument("--subset", type=int, default=10_000, help="0: the whole training split")
    parser.add_argument("--time-budget", type=float, default=300)
    parser.add_argument("--epochs", type=int, help="no time budget: train exactly this many epochs")
    parser.add_argument("--batch-size", type=int, help="default: the method's recipe for the data")
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--random-init", action="store_true", help="also score the random-init backbone")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    overrides = dict(kv.split("=", 1) for kv in args.set)
    if args.batch_size:
        overrides["batch_size"] = args.batch_size
    config = build_config(
        args.method,
        {
            "dataset": "cifar10",
            "data": args.data,
            "backbone": args.backbone,
            "subset": args.subset or None,
            "epochs": args.epochs or 1000,
            "time_budget": None if args.epochs else args.time_budget,
            "checkpoint_every": 0,
            **overrides,
        },
    )
    out = Path(args.out) / f"{args.method}-{args.backbone}-{int(time.time())}"
    result = pretrain(config, out)
    knn = evaluate_checkpoint(result.checkpoint, "knn")
    row = {
        "method": args.method,
        "backbone": args.backbone,
        "subset": args.subset,
        "time_budget": None if args.epochs else args.time_budget,
        "batch_size": config.batch_size,
        "recipe": config.recipe,
        "overrides": overrides,
        "steps": result.steps,
        "epochs": round(result.epochs_completed, 2),
        "train_seconds": round(result.train_seconds, 1),
        "images_per_second": round(result.images_per_second, 1),
        "final_loss": round(result.final_loss, 4),
        "knn_top1": round(knn.top1, 2),
        "knn_top5": round(knn.top5, 2),
        "checkpoint": str(result.checkpoint),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
    }
    if args.random_init:
        row["random_init_knn_top1"] = round(evaluate_checkpoint(result.checkpoint, "knn", random_init=True).top1, 2)
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
