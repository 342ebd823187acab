"""What the collapse guard costs: one measurement of its probe (256 training images through the
evaluation encoder) against one training step, per backbone, and the share of training time it
takes at one measurement every ``COLLAPSE_CHECK_EVERY`` steps.

    .venv/bin/python -m benchmarks.collapse_guard --backbones small resnet18
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from cssl_core.config import build_config
from cssl_core.train import loop


def measure(method: str, backbone: str, batch_size: int, repeats: int) -> dict:
    config = build_config(
        method, {"dataset": "synthetic", "backbone": backbone, "batch_size": batch_size, "subset": 500, "epochs": 1}
    )
    trainer = loop.Trainer(config, Path(tempfile.mkdtemp()), loop.Callbacks(), 10, None)
    encoder = trainer.model.encoder_for_eval()
    trainer.guard.measure(encoder)  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        trainer.guard.measure(encoder)
    measure_seconds = (time.perf_counter() - start) / repeats
    trainer._train_step(trainer._next_batch(0, 0))  # warm-up
    start = time.perf_counter()
    for i in range(repeats):
        trainer._train_step(trainer._next_batch(0, i + 1))
    step_seconds = (time.perf_counter() - start) / repeats
    return {
        "method": method,
        "backbone": backbone,
        "batch_size": batch_size,
        "measure_ms": round(measure_seconds * 1000, 1),
        "step_ms": round(step_seconds * 1000, 1),
        "share_of_training_percent": round(100 * measure_seconds / (loop.COLLAPSE_CHECK_EVERY * step_seconds), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="simclr")
    parser.add_argument("--backbones", nargs="+", default=["small", "resnet18"])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    for backbone in args.backbones:
        print(json.dumps(measure(args.method, backbone, args.batch_size, args.repeats)), flush=True)


if __name__ == "__main__":
    main()
