"""Time every preset on random uint8 batches: ``python -m cssl_core.augment.bench``.

Prints milliseconds per batch (all of a preset's views) at batch 256 for 32 px and 96 px
images, on the CPU unless ``--device`` says otherwise: the fastest and the median wall time
of the repeats, and the process's CPU time per batch. On a shared machine the fastest wall
time is the better estimate of the cost; ``--threads`` sets torch's intra-op threads.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from cssl_core.augment.presets import build_views, preset_names

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)  # CIFAR-10


def time_preset(
    preset: str, image_size: int, batch_size: int, repeats: int, device: torch.device
) -> tuple[list[float], float]:
    """Wall times (ms) of ``repeats`` calls after two warm-up calls, and their mean CPU time."""
    views = build_views(preset, image_size, MEAN, STD)
    images = torch.randint(0, 256, (batch_size, 3, image_size, image_size), dtype=torch.uint8, device=device)
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):
        views(images, generator)
    times = []
    cpu_start = time.process_time()
    for _ in range(repeats):
        start = time.perf_counter()
        views(images, generator)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return times, (time.process_time() - cpu_start) * 1e3 / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 96])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device {device}, torch threads {torch.get_num_threads()}, batch {args.batch_size}")
    for size in args.sizes:
        for preset in preset_names():
            times, cpu = time_preset(preset, size, args.batch_size, args.repeats, device)
            print(
                f"{size:4d} px  {preset:10s} min {min(times):7.1f} ms   median {statistics.median(times):7.1f} ms"
                f"   cpu {cpu:7.1f} ms"
            )


if __name__ == "__main__":
    main()
