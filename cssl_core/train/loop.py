"""The pretraining loop: read it top to bottom.

Data order is a function of (seed, epoch), augmentation draws from one generator whose state
is checkpointed, and schedules are per-step arrays: so a run stopped at any step and resumed
from its checkpoint continues exactly as if it had not stopped.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from cssl_core.augment import build_views
from cssl_core.backbones import build_backbone
from cssl_core.config import PretrainConfig, build_config
from cssl_core.device import autocast_for, resolve_device
from cssl_core.data import ImageDataset, class_balanced_subset, load_dataset
from cssl_core.errors import ConfigError, TrainingError
from cssl_core.evaluation import EvalResult, evaluate_backbone
from cssl_core.methods import get_method
from cssl_core.train.checkpoint import CheckpointInfo, load_checkpoint, save_checkpoint
from cssl_core.train.optim import build_optimizer
from cssl_core.train.schedules import momentum_schedule, warmup_cosine, warmup_steps_for

# A time budget is first turned into a step count after timing steps 6 to 15 (the first ones are slow).
_CALIBRATION_SKIP = 5
_CALIBRATION_STEPS = 10
# Keep the whole uint8 training set on the device when it is at most this large.
_MAX_DEVICE_DATA_BYTES = 2 << 30


@dataclass
class Progress:
    epoch: int  # 0-based epoch in progress
    step: int  # optimiser steps done
    total_steps: int
    epochs: int
    loss: float
    lr: float
    images_per_second: float
    elapsed: float  # training seconds
    stats: dict[str, float] = field(default_factory=dict)


@dataclass
class PretrainResult:
    checkpoint: Path
    steps: int
    epochs_completed: float
    stopped: str  # "completed" | "time_budget" | "cancelled"
    train_seconds: float
    images_per_second: float
    final_loss: float


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] of a uint8 (N, 3, H, W) set, from up to 10,000 images."""
    sample = images[: 10_000].float().div_(255)
    return sample.mean(dim=(0, 2, 3)).tolist(), sample.std(dim=(0, 2, 3)).tolist()


def epoch_permutation(seed: int, epoch: int, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def pretrain(
    config: PretrainConfig,
    out_dir: str | Path,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_checkpoint: Callable[[CheckpointInfo], None] | None = None,
    on_evaluation: Callable[[EvalResult], None] | None = None,
    resume_from: str | Path | None = None,
    progress_every: int = 10,
    dataset: ImageDataset | None = None,
) -> PretrainResult:
    """Pretrain ``config.method`` and write checkpoints under ``out_dir/checkpoints``."""
    out_dir = Path(out_dir)
    resumed = load_checkpoint(resume_from) if resume_from else None
    if resumed:
        config = build_config(resumed["config"]["method"], resumed["config"])
    config.validate()
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)

    # Data: uint8 images, on the device when they fit, views made there per batch.
    data = dataset or load_dataset(config.dataset, config.data)
    split = data.pretrain_split()
    if config.subset:
        split = class_balanced_subset(split, config.subset, config.seed)
    n = len(split)
    steps_per_epoch = n // config.batch_size
    if steps_per_epoch == 0:
        raise ConfigError(f"batch_size {config.batch_size} is larger than the training set ({n} images); lower it")
    images = split.images
    if images.numel() <= _MAX_DEVICE_DATA_BYTES:
        images = images.to(device)
    image_size = data.image_size
    mean, std = channel_stats(split.images)
    mc = config.method_config
    crop_scale = (mc.crop_min_scale, 1.0) if mc.crop_min_scale else None
    make_views = build_views(
        mc.augmentation, image_size, mean, std, crop_scale=crop_scale, jitter_strength=mc.jitter_strength
    )
    augment_rng = torch.Generator()
    augment_rng.manual_seed(config.seed)

    # Model and optimiser.
    backbone, feature_dim = build_backbone(config.backbone, image_size)
    model = get_method(config.method)(backbone, feature_dim, mc).to(device)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = build_optimizer(model.parameter_groups(), config)

    total_steps = nominal_steps = config.epochs * steps_per_epoch
    step, elapsed = 0, 0.0
    if resumed:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        step, elapsed, total_steps = resumed["step"], resumed["elapsed"], resumed["total_steps"]
        augment_rng.set_state(resumed["rng"]["augment"])
        torch.set_rng_state(resumed["rng"]["torch"])
    fit_budget = resumed is None and config.time_budget is not None
    calibration_step, calibration_elapsed = _CALIBRATION_SKIP, 0.0
    next_fit = calibration_step + _CALIBRATION_STEPS

    def schedules(total: int) -> tuple[list[float], list[float]]:
        warmup = warmup_steps_for(mc.warmup_epochs, steps_per_epoch, total)
        lr = warmup_cosine(config.lr, total, warmup).tolist()
        mom = momentum_schedule(mc.momentum, total, mc.momentum_cosine).tolist() if model.uses_momentum_encoder else []
        return lr, mom

    lr_schedule, momentum_values = schedules(total_steps)

    def checkpoint(final: bool) -> CheckpointInfo:
        epoch_done, in_epoch = divmod(step, steps_per_epoch)
        name = f"epoch_{epoch_done:04d}.pt" if in_epoch == 0 else f"step_{step:08d}.pt"
        state = {
            "config": config.to_dict(),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "total_steps": total_steps,
            "steps_per_epoch": steps_per_epoch,
            "elapsed": elapsed,
            "rng": {"augment": augment_rng.get_state(), "torch": torch.get_rng_state()},
            "image_size": image_size,
            "feature_dim": feature_dim,
            "normalization": {"mean": mean, "std": std},
            "classes": data.classes,
        }
        path = save_checkpoint(state, out_dir / "checkpoints" / name)
        save_checkpoint(state, out_dir / "checkpoints" / "last.pt")
        info = CheckpointInfo(path=path, epoch=epoch_done, step=step, final=final)
        if on_checkpoint:
            on_checkpoint(info)
        return info

    model.train()
    loss_sum = torch.zeros((), device=device)
    loss_count, last_loss = 0, float("nan")
    window_start, window_images = time.perf_counter(), 0
    images_per_second = 0.0
    stopped = "completed"
    last_info: CheckpointInfo | None = None
    order, order_epoch = None, -1

    def mean_loss() -> float:
        """The mean loss since the last call: one device sync per report, not per step."""
        nonlocal loss_count
        value = loss_sum.item() / loss_count
        if not math.isfinite(value):
            raise TrainingError(f"loss became {value} at step {step} (epoch {epoch}); lower base_lr or use precision=fp32")
        loss_sum.zero_()
        loss_count = 0
        return value

    while step < total_steps:
        step_start = time.perf_counter()
        epoch, index_in_epoch = divmod(step, steps_per_epoch)
        if epoch != order_epoch:
            order, order_epoch = epoch_permutation(config.seed, epoch, n), epoch
        idx = order[index_in_epoch * config.batch_size:(index_in_epoch + 1) * config.batch_size]
        batch = images[idx.to(images.device)].to(device, non_blocking=True)
        views = [v.contiguous(memory_format=memory_format) for v in make_views(batch, augment_rng)]

        lr = lr_schedule[step]
        for group in optimizer.param_groups:
            group["lr"] = config.lr if group["fixed_lr"] else lr * group["lr_scale"]
        with autocast_for(device, config.precision):
            out = model(views)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        if momentum_values:
            model.momentum_update(momentum_values[step])
        step += 1
        loss_sum += out.loss.detach()
        loss_count += 1
        window_images += config.batch_size

        report = step % progress_every == 0 or step % steps_per_epoch == 0 or step == total_steps
        if report:
            last_loss = mean_loss()
        elapsed += time.perf_counter() - step_start
        stop = None
        if step < total_steps:
            if config.time_budget is not None and elapsed >= config.time_budget:
                stop = "time_budget"
            elif should_stop and should_stop():
                stop = "cancelled"
        if stop is not None and not report:  # the steps since the last report are reported too
            last_loss, report = mean_loss(), True

        # A time budget becomes a step count from the timed steps so far, refitted at doubling
        # intervals (the first steps are slow while kernels are prepared), schedules refitted with it.
        if fit_budget and step == calibration_step:
            calibration_elapsed = elapsed
        elif fit_budget and step == next_fit:
            seconds_per_step = (elapsed - calibration_elapsed) / (step - calibration_step)
            remaining = int((config.time_budget - elapsed) / seconds_per_step)
            total_steps = max(step + 1, min(nominal_steps, step + remaining))
            lr_schedule, momentum_values = schedules(total_steps)
            next_fit = calibration_step + 2 * (next_fit - calibration_step)
            fit_budget = next_fit < 0.9 * total_steps

        if report:
            now = time.perf_counter()
            images_per_second = window_images / max(now - window_start, 1e-9)
            window_start, window_images = now, 0
            if on_progress:
                on_progress(Progress(
                    epoch=epoch, step=step, total_steps=total_steps, epochs=math.ceil(total_steps / steps_per_epoch),
                    loss=last_loss, lr=lr, images_per_second=images_per_second, elapsed=elapsed, stats=out.stats,
                ))

        epoch_end = step % steps_per_epoch == 0
        if epoch_end and config.checkpoint_every and (step // steps_per_epoch) % config.checkpoint_every == 0 and step < total_steps:
            last_info = checkpoint(final=False)
        if epoch_end and config.knn_every and (step // steps_per_epoch) % config.knn_every == 0:
            result = evaluate_backbone(model.backbone, data, "knn", mean=mean, std=std, device=device)
            result.epoch = step // steps_per_epoch
            model.train()
            if on_evaluation:
                on_evaluation(result)
            window_start = time.perf_counter()
        if stop is not None:
            stopped = stop
            break

    if stopped == "completed" and total_steps < nominal_steps:
        stopped = "time_budget"  # the budget, not the epoch count, set the run's length
    if last_info is None or last_info.step != step:
        last_info = checkpoint(final=stopped != "cancelled")
    return PretrainResult(
        checkpoint=last_info.path,
        steps=step,
        epochs_completed=step / steps_per_epoch,
        stopped=stopped,
        train_seconds=elapsed,
        images_per_second=images_per_second,
        final_loss=last_loss,
    )
