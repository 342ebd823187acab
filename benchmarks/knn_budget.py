"""CIFAR-10 kNN accuracy within a fixed training-time budget.

Pretrains ``--method`` on a class-balanced ``--subset`` of CIFAR-10's training split for
``--time-budget`` seconds of training wall time (or exactly ``--epochs`` epochs), then scores the
weighted kNN (k=200, T=0.1) with the full 50,000-image training split as the neighbour bank on the
full 10,000-image test split, next to the same backbone at random initialisation. Prints one JSON
line per run. ``--method all`` (or a comma-separated list of names) runs those methods in turn at
the same options, then prints a markdown table with each method's gain over its own random-init
network.

    .venv/bin/python -m benchmarks.knn_budget --method simclr --time-budget 300
    .venv/bin/python -m benchmarks.knn_budget --method all --time-budget 300
    .venv/bin/python -m benchmarks.knn_budget --method swav,dino --time-budget 300
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from cssl_core.config import build_config
from cssl_core.evaluation import evaluate_checkpoint
from cssl_core.methods import method_names
from cssl_core.train import load_checkpoint, pretrain
from cssl_core.train.checkpoint import build_encoder_from_checkpoint

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"
TABLE_COLUMNS = ("method", "batch", "epochs", "images/s", "kNN top-1", "random init", "difference")


def run_one(method: str, args: argparse.Namespace, overrides: dict[str, Any], random_init: dict[str, float]) -> dict:
    """Pretrain ``method`` and score it; ``random_init`` caches the random-init kNN by network
    (see :func:`network_fingerprint`), filled when ``args.random_init``."""
    config = build_config(
        method,
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
    out = Path(args.out) / f"{method}-{args.backbone}-{int(time.time())}"
    curve = []  # (epoch, kNN top-1) of each evaluation during training (--set knn_every=N)
    result = pretrain(config, out, on_evaluation=lambda r: curve.append((r.epoch, round(r.top1, 2))))
    knn = evaluate_checkpoint(result.checkpoint, "knn")
    row = {
        "method": method,
        "backbone": args.backbone,
        "subset": args.subset,
        "time_budget": None if args.epochs else args.time_budget,
        "fixed_epochs": args.epochs,
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
        "knn_curve": curve,
        "checkpoint": str(result.checkpoint),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
    }
    if args.random_init:
        key = network_fingerprint(result.checkpoint)
        if key not in random_init:
            random_init[key] = round(evaluate_checkpoint(result.checkpoint, "knn", random_init=True).top1, 2)
        row["random_init_knn_top1"] = random_init[key]
    return row


def network_fingerprint(checkpoint: Path) -> str:
    """A digest of the checkpoint's evaluation encoder at random initialisation (names, shapes,
    values) and of the images' normalisation: two runs with the same digest have the same
    random-init kNN (``small`` under most methods), while BYOL-GN+WS's network, CMC's split
    encoders or a ViT each have their own."""
    state = load_checkpoint(checkpoint)
    digest = hashlib.sha256(json.dumps(state.get("normalization"), sort_keys=True).encode())
    for name, tensor in build_encoder_from_checkpoint(state, random_init=True).state_dict().items():
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def markdown_table(rows: list[dict]) -> str:
    """One line per run: method, batch, epochs, images/s, kNN top-1, its network's random-init kNN
    top-1, and the difference in points (blank where the random init was not scored)."""
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    for row in rows:
        base = row.get("random_init_knn_top1")
        cells = [
            row["method"],
            str(row["batch_size"]),
            f"{row['epochs']:.2f}",
            f"{row['images_per_second']:.0f}",
            f"{row['knn_top1']:.2f}",
            "" if base is None else f"{base:.2f}",
            "" if base is None else f"{row['knn_top1'] - base:+.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--method", default="simclr", help="a method's name, a comma-separated list, or all: every method in turn"
    )
    parser.add_argument("--data", default=os.environ.get("CSSL_CIFAR10", str(DEFAULT_DATA)))
    parser.add_argument("--backbone", default="small")
    parser.add_argument("--subset", type=int, default=10_000, help="0: the whole training split")
    parser.add_argument("--time-budget", type=float, default=300)
    parser.add_argument("--epochs", type=int, help="train exactly this many epochs, no time budget")
    parser.add_argument("--batch-size", type=int, help="default: the method's recipe for the data")
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument(
        "--random-init", action="store_true", help="also score the random-init backbone (always with several methods)"
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    overrides = dict(kv.split("=", 1) for kv in args.set)
    if args.batch_size:
        overrides["batch_size"] = args.batch_size
    methods = method_names() if args.method == "all" else args.method.split(",")
    unknown = sorted(set(methods) - set(method_names()))
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(method_names())} or all")
    args.random_init = args.random_init or len(methods) > 1
    random_init: dict[str, float] = {}
    rows = []
    for method in methods:
        rows.append(run_one(method, args, overrides, random_init))
        print(json.dumps(rows[-1]), flush=True)
    if len(methods) > 1:
        print(markdown_table(rows), flush=True)


if __name__ == "__main__":
    main()
