"""Time every preset on random uint8 batches: ``python -m cssl_core.augment.bench``.

Prints milliseconds per batch (all of a preset's views) at batch 256 for 32 px and 96 px
images, on the CPU unless ``--device`` says otherwise. Reports the fastest and the median of
the repeats: on a shared machine the fastest is the better estimate of the cost.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from cssl_core.augment.presets import build_views, preset_names

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)  # CIFAR-10


def time_preset(preset: str, image_size: int, batch_size: int, repeats: int, device: torch.device) -> list[float]:
    views = build_views(preset, image_size, MEAN, STD)
    images = torch.randint(0, 256, (batch_size, 3, image_size, image_size), dtype=torch.uint8, device=device)
    generator = torch.Generator().manual_seed(0)
    times = []
    for step in range(repeats + 2):  # two warm-up calls
        start = time.perf_counter()
        views(images, generator)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= 2:
            times.append((time.perf_counter() - start) * 1e3)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 96])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"device {device}, torch threads {torch.get_num_threads()}, batch {args.batch_size}")
    for size in args.sizes:
        for preset in preset_names():
            times = time_preset(preset, size, args.batch_size, args.repeats, device)
            print(f"{size:4d} px  {preset:10s} min {min(times):7.1f} ms   median {statistics.median(times):7.1f} ms")


if __name__ == "__main__":
    main()
