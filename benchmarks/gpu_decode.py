"""Streamed JPEGs decoded in the loader processes (CPU) or on the training GPU (nvjpeg): images/s
of each data path alone, and of SimCLR ResNet-18 training steps fed by each (``decode_on``).

    .venv/bin/python -m benchmarks.gpu_decode --images 5000 --workers 8
    .venv/bin/python -m benchmarks.gpu_decode --device cpu --images 300 --batch-size 32 --steps 4

Writes ``--images`` generated 500x375 JPEGs (ImageNet's typical size, quality 90, as
:mod:`benchmarks.stream_memory` writes them) into ``--folder`` (default: a temporary folder), then
measures, on ``--device`` (``cuda``; ``cpu`` runs the same code on the CPU, a check of the script,
not a figure for a GPU):

1. ``loader``: the data path as ``decode_on loader`` runs it: ``--workers`` DataLoader processes
   read, decode (torchvision's decoder) and make SimCLR's two ``--image-size`` crops at each
   image's own resolution; the batches moved to the device.
2. ``device``: as ``decode_on device`` runs it: the processes read the files' bytes only; this
   process decodes each batch in one ``torchvision.io.decode_jpeg(list, device=...)`` call
   (nvjpeg) and crops on the device (``StreamBatches.on_device``).
3. ``device_in_memory``: 2 on batches whose bytes were read up front: nvjpeg and the device
   crops alone, the most the device path can give whatever the disk and loader processes.
4. ``train``: SimCLR, ``--backbone`` (ResNet-18), ``--steps`` steps of ``--batch-size`` streamed
   from the folder with ``decode_on`` loader, then device (bf16 on CUDA, fp32 on the CPU); the
   rate over the steps after ``--warmup``, from the loop's own step times.

1 to 3 run ``--passes`` passes over the folder, each timed from its first batch (the loader
processes' start left out), and take the best. Each figure is one JSON line. On a shared CPU,
``--device cpu`` wants ``OMP_NUM_THREADS=1``: this process's intra-op threads, fighting others
for the cores, slow its per-image crops many times over (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision

from benchmarks.stream_memory import write_jpegs


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def data_path(index, args, device: torch.device, decode_on: str) -> float:
    """Best images/s over ``--passes`` passes of the streamed data path, with the crops (SimCLR's
    two views) on ``device``; the finishing stages (jitter, blur) are left out: both paths share them."""
    from cssl_core.augment.presets import simclr
    from cssl_core.data.stream import StreamBatches, stream_batches
    from cssl_core.train.loop import epoch_permutation

    specs = simclr(args.image_size, None)
    best = 0.0
    for epoch in range(args.passes):
        order = epoch_permutation(0, epoch, len(index))
        decode_device = device if decode_on == "device" else None
        dataset = StreamBatches(index, order, args.batch_size, specs, 0, epoch, slice(None), decode_device)
        batches = stream_batches(dataset, 0, args.workers, device.type == "cuda")
        next(batches)  # the loader processes' start, and nvjpeg's first call
        synchronize(device)
        start = time.perf_counter()
        for _, crops in batches:
            crops = [c.to(device, non_blocking=True) for c in crops]
        synchronize(device)
        best = max(best, (len(dataset) - 1) * args.batch_size / (time.perf_counter() - start))
    return best


def device_in_memory(index, args, device: torch.device) -> float:
    """Best images/s of the device's decode and crops alone, on batches read up front."""
    from cssl_core.augment.presets import simclr
    from cssl_core.data.stream import StreamBatches
    from cssl_core.train.loop import epoch_permutation

    order = epoch_permutation(0, 0, len(index))
    dataset = StreamBatches(index, order, args.batch_size, simclr(args.image_size, None), 0, 0, slice(None), device)
    items = [dataset[k] for k in range(len(dataset))]
    dataset.on_device(items[0])  # nvjpeg's first call
    best = 0.0
    for _ in range(args.passes):
        synchronize(device)
        start = time.perf_counter()
        for item in items:
            dataset.on_device(item)
        synchronize(device)
        best = max(best, len(items) * args.batch_size / (time.perf_counter() - start))
    return best


def train(folder: Path, images: int, args, decode_on: str) -> float:
    """Images/s of SimCLR training steps streamed from ``folder``, after ``--warmup`` steps."""
    from cssl_core.config import build_config
    from cssl_core.train import pretrain

    steps_per_epoch = images // args.batch_size
    keys = {
        "dataset": "imagefolder",
        "data": str(folder),
        "data_mode": "stream",
        "decode_on": decode_on,
        "image_size": args.image_size,
        "backbone": args.backbone,
        "batch_size": args.batch_size,
        "data_workers": args.workers,
        "device": args.device,
        "precision": "bf16" if args.device == "cuda" else "fp32",
        "epochs": -(-args.steps // steps_per_epoch),
        "checkpoint_every": 0,
    }
    elapsed, done = {}, {"steps": 0}

    def on_progress(progress) -> None:
        elapsed[progress.step] = progress.elapsed  # the loop's step times: no start-up, probe or checkpoint

    def should_stop() -> bool:
        done["steps"] += 1
        return done["steps"] >= args.steps

    with tempfile.TemporaryDirectory() as out:
        pretrain(build_config("simclr", keys), out, on_progress=on_progress, should_stop=should_stop, progress_every=1)
    last = max(elapsed)
    return (last - args.warmup) * args.batch_size / (elapsed[last] - elapsed[args.warmup])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--folder", type=Path, help="where to write the JPEGs (kept); default: a temporary folder")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument(
        "--workers", type=int, help="DataLoader processes; default: the run's (cores less one, 8 at most)"
    )
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--passes", type=int, default=2, help="passes over the folder for 1 to 3; the best counts")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--steps", type=int, default=20, help="training steps per decode_on; 0: no training")
    parser.add_argument("--warmup", type=int, default=3, help="training steps left out of the rate")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit(
            "gpu_decode: no CUDA device here. It measures nvjpeg decoding on a GPU; --device cpu runs the same "
            "code on the CPU, to check the script (its figures are not a GPU's)."
        )
    if args.steps and args.steps <= args.warmup:
        parser.error("--steps must exceed --warmup")

    from cssl_core.data.stream import build_index, default_workers

    args.workers = default_workers() if args.workers is None else args.workers
    device = torch.device(args.device)
    common = {
        "benchmark": "gpu_decode",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "workers": args.workers,
        "batch_size": args.batch_size,
        "image_size": args.image_size,
    }
    with tempfile.TemporaryDirectory() as scratch:
        os.environ["CSSL_CACHE_DIR"] = str(Path(scratch) / "cache")
        folder = args.folder or Path(scratch) / "jpegs"
        write_jpegs(folder, args.images)
        index = build_index(folder, Path(scratch) / "cache")
        if len(index) < 2 * args.batch_size:
            sys.exit(f"gpu_decode: {len(index)} images make fewer than 2 batches of {args.batch_size}")
        figures = {
            "loader": lambda: data_path(index, args, device, "loader"),
            "device": lambda: data_path(index, args, device, "device"),
            "device_in_memory": lambda: device_in_memory(index, args, device),
        }
        for name, measure in figures.items():
            row = {**common, "figure": name, "images": len(index), "images_per_second": round(measure(), 1)}
            print(json.dumps(row), flush=True)
        if not args.steps:
            return
        for decode_on in ("loader", "device"):
            speed = train(folder, len(index), args, decode_on)
            row = {**common, "figure": "train", "decode_on": decode_on, "backbone": args.backbone}
            print(json.dumps({**row, "steps": args.steps, "images_per_second": round(speed, 1)}), flush=True)


if __name__ == "__main__":
    main()
