"""Streaming an image folder (``data_mode stream``): the memory a run holds over an epoch, and
its images/s against the in-memory path.

    .venv/bin/python -m benchmarks.stream_memory --images 20000 --steps 0
    .venv/bin/python -m benchmarks.stream_memory --images 2000 --steps 30 --batch-size 32
    .venv/bin/python -m benchmarks.stream_memory --images 4000 --loader-only --batch-size 64 --epochs 3

1. Writes ``--images`` generated 500x375 JPEGs (ImageNet's typical size, quality 90, as
   :mod:`benchmarks.jpeg_decode` makes them) into ``--folder`` (default: a temporary folder,
   removed after), then trains SimCLR at ``--image-size`` (224) streamed from it: one epoch
   (``--steps 0``) or ``--steps`` steps. The resident memory of the process and of its
   DataLoader workers is sampled every 0.2 s from ``/proc`` (the workers' private pages only:
   a forked worker shares the training process's pages until either writes them) and printed
   at the first, middle and last step with the peak and the images/s.
2. SimCLR on CIFAR-10 (``--cifar``, the JPEG archive in ``../shared/data``, extracted to a
   temporary folder) at 32 px for ``--cifar-steps`` steps (``--cifar-backbone``: the small
   convnet), decoded in memory and streamed: images/s of each (the in-memory path's one-off
   decode is printed apart).

Each result is one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.jpeg_decode import SIZE

CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"


def write_jpegs(folder: Path, count: int, seed: int = 0) -> None:
    """``count`` smooth random 500x375 JPEGs, 1,000 to a sub-folder (an unlabelled folder)."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        path = folder / f"{i // 1000:04d}" / f"{i:07d}.jpg"
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        coarse = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize(SIZE, Image.Resampling.BICUBIC)
        noise = rng.integers(-12, 13, (SIZE[1], SIZE[0], 3))
        Image.fromarray(np.clip(np.asarray(image, np.int16) + noise, 0, 255).astype(np.uint8)).save(path, quality=90)


def resident_bytes(pid: int) -> tuple[int, int]:
    """Resident memory of ``pid``, and the private resident memory of its descendants (DataLoader
    workers) in bytes: a forked worker's pages still shared with ``pid`` count once, in ``pid``."""
    found, todo = {}, [pid]
    while todo:
        current = todo.pop()
        try:
            if current == pid:
                status = Path(f"/proc/{pid}/status").read_text().splitlines()
                found[pid] = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) * 1024
            else:
                rollup = Path(f"/proc/{current}/smaps_rollup").read_text().splitlines()
                private = ("Private_Clean:", "Private_Dirty:")
                found[current] = sum(int(line.split()[1]) for line in rollup if line.startswith(private)) * 1024
            for task in Path(f"/proc/{current}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
        except (FileNotFoundError, ProcessLookupError):
            continue  # a worker that has just exited
    return found.get(pid, 0), sum(v for k, v in found.items() if k != pid)


class MemorySampler(threading.Thread):
    def __init__(self, every: float = 0.2):
        super().__init__(daemon=True)
        self.every, self.samples, self.done = every, [], threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.samples.append(sum(resident_bytes(os.getpid())))
            self.done.wait(self.every)

    def now(self) -> tuple[int, int]:
        return resident_bytes(os.getpid())


def train(keys: dict, steps: int) -> tuple[dict, float, float]:
    """Pretrain SimCLR with ``keys`` for ``steps`` steps (0: the configured epochs); the RSS
    at each step, the training seconds and the images/s."""
    from cssl_core.config import build_config
    from cssl_core.train import pretrain

    config = build_config("simclr", {"checkpoint_every": 0, "epochs": 1, "precision": "fp32", **keys})
    rss, done = {}, {"steps": 0}
    sampler = MemorySampler()
    sampler.start()

    def on_progress(progress) -> None:
        rss[progress.step] = sampler.now()

    def should_stop() -> bool:
        done["steps"] += 1
        return steps > 0 and done["steps"] >= steps

    with tempfile.TemporaryDirectory() as out:
        result = pretrain(config, out, on_progress=on_progress, should_stop=should_stop, progress_every=1)
    sampler.done.set()
    sampler.join()
    rss["peak"] = max(sampler.samples)
    return rss, result.train_seconds, result.steps * config.batch_size / result.train_seconds


def load_only(
    folder: Path, batch_size: int, image_size: int, workers: int | None, epochs: int, bounded: bool
) -> tuple[dict, float, float, list]:
    """``epochs`` epochs of the streamed data path alone, no model: the index, decoding and
    SimCLR's two crops at ``image_size`` in the loader processes, the other stages (jitter,
    grayscale, blur) in this one, as a run makes them (with glibc's default mmap threshold unless
    ``bounded``). The RSS at each batch, the seconds, the images/s and the RSS at each epoch's end."""
    from cssl_core.augment import ViewGenerator
    from cssl_core.augment.presets import simclr
    from cssl_core.data.stream import StreamBatches, bound_heap, build_index, default_workers, stream_batches
    from cssl_core.train.loop import epoch_permutation

    if bounded:
        bound_heap()  # as a streamed run does
    index = build_index(folder, Path(os.environ["CSSL_CACHE_DIR"]))
    views = ViewGenerator(simclr(image_size, None), mean=(0.5,) * 3, std=(0.25,) * 3)
    generator = torch.Generator().manual_seed(0)
    rss, ends, sampler, step = {}, [], MemorySampler(), 0
    sampler.start()
    start = time.perf_counter()
    for epoch in range(epochs):
        order = epoch_permutation(0, epoch, len(index))
        batches = StreamBatches(index, order, batch_size, views.views, seed=0, epoch=epoch, rows=slice(None))
        for _, crops in stream_batches(batches, 0, default_workers() if workers is None else workers, False):
            views.finish(crops, generator)
            step += 1
            rss[step] = sampler.now()
        ends.append([mib(v) for v in rss[step]])
    seconds = time.perf_counter() - start
    sampler.done.set()
    sampler.join()
    rss["peak"] = max(sampler.samples)
    return rss, seconds, step * batch_size / seconds, ends


def mib(n: int) -> float:
    return round(n / 2**20, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--folder", type=Path, help="where to write the JPEGs (kept); default: a temporary folder")
    parser.add_argument("--steps", type=int, default=0, help="0: one epoch")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--workers", type=int, help="DataLoader processes; default: the run's")
    parser.add_argument(
        "--loader-only", action="store_true", help="one epoch of the data path alone (no model); no CIFAR runs"
    )
    parser.add_argument("--epochs", type=int, default=1, help="with --loader-only: epochs to run")
    parser.add_argument(
        "--glibc-default", action="store_true", help="with --loader-only: keep glibc's own mmap threshold"
    )
    parser.add_argument("--cifar", type=Path, default=CIFAR)
    parser.add_argument("--cifar-steps", type=int, default=20)
    parser.add_argument("--cifar-batch-size", type=int, default=256)
    parser.add_argument("--cifar-backbone", default="small", help="the CIFAR-sized convnet by default")
    args = parser.parse_args()
    workers = {} if args.workers is None else {"data_workers": args.workers}
    common = {"backbone": args.backbone, **workers}

    with tempfile.TemporaryDirectory() as scratch:
        os.environ["CSSL_CACHE_DIR"] = str(Path(scratch) / "cache")
        folder = args.folder or Path(scratch) / "jpegs"
        start = time.perf_counter()
        write_jpegs(folder, args.images)
        written = time.perf_counter() - start
        keys = {"dataset": "imagefolder", "data": str(folder), "data_mode": "stream", "image_size": args.image_size}
        ends = None
        if args.loader_only:
            rss, seconds, speed, ends = load_only(
                folder, args.batch_size, args.image_size, args.workers, args.epochs, not args.glibc_default
            )
        else:
            rss, seconds, speed = train({**keys, "batch_size": args.batch_size, **common}, args.steps)
        steps = sorted(k for k in rss if k != "peak")
        row = {
            "benchmark": "stream_rss_loader_only" if args.loader_only else "stream_rss",
            "images": args.images,
            "image_size": args.image_size,
            "batch_size": args.batch_size,
            "steps": steps[-1],
            "jpegs_written_seconds": round(written, 1),
            # (main process, its DataLoader workers' private pages together)
            "rss_mib_first_step": [mib(v) for v in rss[steps[0]]],
            "rss_mib_middle_step": [mib(v) for v in rss[steps[len(steps) // 2]]],
            "rss_mib_last_step": [mib(v) for v in rss[steps[-1]]],
            "rss_mib_peak_total": mib(rss["peak"]),
            **({"rss_mib_epoch_ends": ends, "glibc_default_heap": args.glibc_default} if ends else {}),
            "train_seconds": round(seconds, 1),
            "images_per_second": round(speed, 1),
        }
        print(json.dumps(row), flush=True)

        if args.loader_only:
            return
        if not args.cifar.is_file():
            print(json.dumps({"benchmark": "cifar10_stream_vs_memory", "skipped": f"no {args.cifar}"}))
            return
        cifar = Path(scratch) / "cifar10"
        with tarfile.open(args.cifar) as tar:
            tar.extractall(cifar, filter="data")
        keys = {"dataset": "imagefolder", "data": str(cifar), "image_size": 32, "batch_size": args.cifar_batch_size}
        for mode in ("memory", "stream"):
            start = time.perf_counter()
            if mode == "memory":
                from cssl_core.data import load_dataset

                load_dataset("imagefolder", cifar, image_size=32)  # decoded once, cached: timed apart
            decoded = time.perf_counter() - start
            cifar_keys = {**keys, "data_mode": mode, "backbone": args.cifar_backbone, **workers}
            _, seconds, speed = train(cifar_keys, args.cifar_steps)
            row = {
                "benchmark": "cifar10_stream_vs_memory",
                "data_mode": mode,
                "steps": args.cifar_steps,
                "batch_size": args.cifar_batch_size,
                "backbone": args.cifar_backbone,
                "decode_seconds": round(decoded, 1) if mode == "memory" else None,
                "images_per_second": round(speed, 1),
            }
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
