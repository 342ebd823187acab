"""Training throughput (images/s) per method and backbone on this machine's CPU or GPU.

Runs each method on 32 px synthetic images for ``--steps`` timed steps after ``--warmup``
untimed ones, through the real training loop (augmentation included), with the method's
default config for such images (its small-image recipe; ``--recipe paper`` for the paper's
heads), and prints one JSON line per (method, backbone).

    .venv/bin/python -m benchmarks.throughput --backbones small resnet18 vit_tiny
"""

from __future__ import annotations

import argparse
import json
import tempfile

import torch

from cssl_core.config import build_config
from cssl_core.methods import method_names
from cssl_core.train import pretrain


def measure(method: str, backbone: str, batch_size: int, warmup: int, steps: int, precision: str, recipe: str) -> dict:
    seen = []
    # Up to four batches of the 500 synthetic images: per-sample state (memories, clusters) has
    # rows to fill, and epoch hooks (DeepCluster's k-means) run once per epoch of them.
    subset = min(4 * batch_size, 500)
    steps_per_epoch = subset // batch_size
    config = build_config(
        method,
        {
            "dataset": "synthetic",
            "subset": subset,
            "backbone": backbone,
            "batch_size": batch_size,
            "epochs": -(-(warmup + steps) // steps_per_epoch),
            "checkpoint_every": 0,
            "precision": precision,
            "recipe": recipe,
        },
    )
    with tempfile.TemporaryDirectory() as out:
        pretrain(config, out, on_progress=seen.append, progress_every=1)
    by_step = {p.step: p.elapsed for p in seen}
    seconds = by_step[warmup + steps] - by_step[warmup]
    return {
        "method": method,
        "backbone": backbone,
        "batch_size": batch_size,
        "precision": precision,
        "recipe": recipe,
        "images_per_second": round(steps * batch_size / seconds, 1),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="*", default=method_names())
    parser.add_argument("--backbones", nargs="*", default=["small", "resnet18", "vit_tiny"])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--recipe", default="auto", choices=["auto", "small_images", "paper"])
    args = parser.parse_args()
    for backbone in args.backbones:
        for method in args.methods:
            print(
                json.dumps(
                    measure(method, backbone, args.batch_size, args.warmup, args.steps, args.precision, args.recipe)
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
