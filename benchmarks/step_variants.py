"""One training step under each numeric setting: bf16 or fp32, channels_last or not, eager or
torch.compile. Random 32 px inputs stand in for views; the rest is the training loop's step
(forward, loss, backward, optimiser). Prints one JSON line per setting.

    .venv/bin/python -m benchmarks.step_variants [--method simclr] [--backbone small] [--compile]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from cssl_core.config import build_config
from cssl_core.device import autocast_for, resolve_device
from cssl_core.methods import Batch, build_method
from cssl_core.train.optim import build_optimizer


def measure(
    method: str,
    backbone: str,
    batch_size: int,
    precision: str,
    channels_last: bool,
    compile_: bool,
    steps: int,
    device: torch.device,
) -> dict:
    torch.manual_seed(0)
    config = build_config(method, {"backbone": backbone, "batch_size": batch_size, "precision": precision})
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = build_method(config, 32, batch_size).to(device).to(memory_format=memory_format)
    optimizer = build_optimizer(model.parameter_groups(), config)
    forward = torch.compile(model) if compile_ else model
    sizes = [spec.size for spec in type(model).view_specs(config.method_config, 32)]
    views = [torch.randn(batch_size, 3, s, s, device=device).contiguous(memory_format=memory_format) for s in sizes]
    schedules = {
        "lr": config.lr,
        "weight_decay": 0.0,
        **{k: float(v[0]) for k, v in model.schedules(steps, steps).items()},
    }
    batch = Batch(views=views, indices=torch.arange(batch_size, device=device), step=0, epoch=0, schedules=schedules)
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        with autocast_for(device, precision):
            out = forward(batch)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        model.after_step(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds[steps // 3 :])
    return {
        "method": method,
        "backbone": backbone,
        "batch_size": batch_size,
        "precision": precision,
        "channels_last": channels_last,
        "compile": compile_,
        "first_step_s": round(seconds[0], 2),
        "median_step_s": round(median, 3),
        "images_per_second": round(batch_size / median, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="simclr")
    parser.add_argument("--backbone", default="small")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (bf16 and fp32, channels_last)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    variants = [("bf16", True, False), ("fp32", True, False), ("fp32", False, False), ("bf16", False, False)]
    if args.compile:
        variants += [("bf16", True, True), ("fp32", True, True)]
    for precision, channels_last, compile_ in variants:
        row = measure(
            args.method, args.backbone, args.batch_size, precision, channels_last, compile_, args.steps, device
        )
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
