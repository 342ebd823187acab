"""SimCLR v2's semi-supervised protocols on CIFAR-10 against supervised training from scratch.

Takes a pretrained checkpoint (e.g. from ``benchmarks.knn_budget --method simclrv2``) and
reports, on CIFAR-10's 10,000 test images: fine-tuning on 1% and 10% of the training labels,
the same architecture trained from scratch on the same labels for the same time (fine-tuning
from random initialisation), and distillation of the 10% teacher into a student on all 50,000
training images. Every training stage gets ``--time-budget`` seconds (the student twice that).
Prints one JSON line per row.

    .venv/bin/python -m benchmarks.semi_supervised --checkpoint runs/bench/simclrv2-.../checkpoints/last.pt
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

from cssl_core.evaluation import evaluate_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--time-budget", type=float, default=120, help="seconds per training stage")
    parser.add_argument("--fractions", default="0.01,0.1")
    args = parser.parse_args()
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    budget = args.time_budget

    def run(protocol: str, random_init: bool = False, **params) -> None:
        start = time.perf_counter()
        r = evaluate_checkpoint(args.checkpoint, protocol, random_init=random_init, **params)
        print(
            json.dumps(
                {
                    "protocol": protocol,
                    "weights": "random init (supervised from scratch)" if random_init else "pretrained",
                    "params": params,
                    "top1": round(r.top1, 2),
                    "top5": None if r.top5 is None else round(r.top5, 2),
                    "extra": {k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.extra.items()},
                    "wall_seconds": round(time.perf_counter() - start, 1),
                    "machine": machine,
                }
            ),
            flush=True,
        )

    for fraction in (float(f) for f in args.fractions.split(",")):
        run("linear", label_fraction=fraction)
        run("finetune", label_fraction=fraction, time_budget=budget)
        run("finetune", random_init=True, label_fraction=fraction, time_budget=budget)
    run("distill", label_fraction=0.1, finetune_time_budget=budget, time_budget=2 * budget)


if __name__ == "__main__":
    main()
