"""The pretraining loop: read :meth:`Trainer.run` top to bottom.

Data order is a function of (seed, epoch), augmentation draws from one generator whose state
is checkpointed, schedules are per-step arrays, and every method keeps its state in its
``state_dict``: so a run stopped at any step and resumed from its checkpoint continues exactly
as if it had not stopped. The loop knows no method by name; what a method needs (its views,
schedules, hooks, frozen parameters) it declares through :class:`cssl_core.methods.Method`.

On several processes (:mod:`cssl_core.distributed`) every rank draws the augmentation of the
whole global batch from the same generator and applies its rows to its contiguous slice, so
views, data order and resume are those of one process; gradients are averaged over ranks after the backward, before
the hooks that follow it (freezing, per-tensor clipping, the optimiser, ``after_step``). Rank 0
alone reports progress, measures collapse, evaluates and writes checkpoints; the others wait.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cssl_core import distributed
from cssl_core.augment import ViewGenerator
from cssl_core.backbones.global_batch_norm import convert_to_global_batch_norm
from cssl_core.config import PretrainConfig, check_batch_split, rebuild_config
from cssl_core.data import (
    FileIndex,
    ImageDataset,
    class_balanced_indices,
    class_balanced_subset,
    dataset_image_size,
    load_eval_dataset,
    open_dataset,
)
from cssl_core.data.stream import (
    StreamBatches,
    bound_heap,
    decode_place,
    default_workers,
    eval_images,
    stream_batches,
)
from cssl_core.device import autocast_for, resolve_device
from cssl_core.errors import ConfigError, TrainingError
from cssl_core.evaluation import EvalResult, evaluate_backbone
from cssl_core.evaluation.bank_knn import evaluate_memory_bank
from cssl_core.evaluation.features import extract_features
from cssl_core.methods import Batch, StepOutput, TrainingSet, build_method, get_method
from cssl_core.train.checkpoint import CheckpointInfo, load_checkpoint, save_checkpoint
from cssl_core.train.collapse import CollapseGuard
from cssl_core.train.optim import build_optimizer
from cssl_core.train.schedules import BudgetFit, warmup_cosine, warmup_steps_for

# Keep the whole uint8 training set on the device when it is at most this large.
_MAX_DEVICE_DATA_BYTES = 2 << 30
# Images of a streamed data set decoded up front for its channel statistics and the collapse probe.
STREAM_SAMPLE_IMAGES = 1024
# Steps between two measurements of the collapse guard (also at every epoch's end).
COLLAPSE_CHECK_EVERY = 50
# What stops a run early, as the ranks agree on it (an index into this tuple).
STOP_REASONS = (None, "time_budget", "cancelled")


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
    # Said once, the first time the collapse guard finds the features collapsed (cssl_core.train.collapse).
    warning: str | None = None


@dataclass
class PretrainResult:
    checkpoint: Path
    steps: int
    epochs_completed: float
    stopped: str  # "completed" | "time_budget" | "cancelled"
    train_seconds: float
    images_per_second: float
    final_loss: float


@dataclass
class Callbacks:
    on_progress: Callable[[Progress], None] | None = None
    should_stop: Callable[[], bool] | None = None
    on_checkpoint: Callable[[CheckpointInfo], None] | None = None
    on_evaluation: Callable[[EvalResult], None] | None = None


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] of a uint8 (N, 3, H, W) set, from up to 10,000 images."""
    sample = images[:10_000].float().div_(255)
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
    dataset: ImageDataset | FileIndex | None = None,
    eval_dataset: ImageDataset | None = None,
) -> PretrainResult:
    """Pretrain ``config.method`` and write checkpoints under ``out_dir/checkpoints``.

    ``dataset`` and ``eval_dataset``, when given, are :func:`open_dataset`'s ``config.dataset`` (decoded,
    or the file index of a streamed folder) and the decoded ``config.eval_dataset`` (the service checks
    their paths itself).

    Started by ``torchrun`` or ``cssl pretrain --nproc`` (``WORLD_SIZE`` > 1 in the environment),
    it joins that process group, takes its rank's share of each batch and leaves the group at the
    end; only rank 0 calls the callbacks. ``config.nproc`` > 1 without such a launcher is refused:
    the processes must exist before the run does."""
    resumed = load_checkpoint(resume_from) if resume_from else None
    if resumed:
        # The checkpoint's run on this call's processes: a run resumes on another world size
        # (the global batch, the data order and the weights do not depend on it).
        config = rebuild_config({**resumed["config"], "nproc": config.nproc})
    config.validate()
    joined = distributed.init_from_env(resolve_device(config.device).type)
    try:
        if config.nproc > 1 and distributed.world_size() == 1:
            raise ConfigError(
                f"nproc {config.nproc} needs its processes started first: use `cssl pretrain --nproc "
                f"{config.nproc}` or torchrun, or set nproc 1"
            )
        callbacks = Callbacks(on_progress, should_stop, on_checkpoint, on_evaluation)
        if distributed.rank() != 0:
            callbacks = Callbacks()  # one voice: rank 0 reports, the others train
        trainer = Trainer(config, Path(out_dir), callbacks, progress_every, dataset, eval_dataset)
        if resumed:
            trainer.restore(resumed)
        return trainer.run()
    finally:
        if joined:
            distributed.teardown()


class Trainer:
    """One pretraining run: data, views, method and optimiser, and the state that a checkpoint keeps."""

    def __init__(
        self,
        config: PretrainConfig,
        out_dir: Path,
        callbacks: Callbacks,
        progress_every: int,
        dataset: ImageDataset | FileIndex | None,
        eval_dataset: ImageDataset | None = None,
    ):
        self.config, self.out_dir, self.callbacks, self.progress_every = config, out_dir, callbacks, progress_every
        self.rank, self.world = distributed.rank(), distributed.world_size()
        check_batch_split(config.batch_size, self.world)
        get_method(config.method).check_processes(self.world)
        self.device = resolve_device(config.device)
        if self.device.type == "cuda" and self.world > 1 and self.device.index is None:
            self.device = torch.device("cuda", distributed.local_rank())  # one GPU per process
        torch.manual_seed(config.seed)  # the same on every rank: the same initial weights

        # Data: uint8 images in memory (on the device when they fit), or an image folder streamed from
        # disk (cssl_core.data.stream) when config.data_mode says so; views made per batch.
        data = dataset or open_dataset(
            config.dataset, config.data, data_mode=config.data_mode, image_size=config.image_size
        )
        self.stream = data if isinstance(data, FileIndex) else None
        self.data = None if self.stream is not None else data
        self.workers = config.data_workers if config.data_workers is not None else default_workers()
        if self.stream is not None:
            bound_heap()  # the process's resident memory stays flat over a streamed epoch
            self.image_size = dataset_image_size(config.dataset, config.image_size)
            self.classes = self.stream.classes
            if config.subset:
                self.stream = self.stream.subset(class_balanced_indices(self.stream.labels, config.subset, config.seed))
            self.labels, self.images = self.stream.labels, None
            # A fixed sample at the evaluation transform: channel statistics and the collapse probe.
            picked = torch.randperm(len(self.stream), generator=torch.Generator().manual_seed(config.seed))
            paths = [self.stream.paths[i] for i in picked[:STREAM_SAMPLE_IMAGES].tolist()]
            sample = torch.cat(list(eval_images(self.stream.reader, paths, self.image_size, self.workers)))
        else:
            split = self.data.pretrain_split()
            if config.subset:
                split = class_balanced_subset(split, config.subset, config.seed)
            self.images = split.images
            self.labels = split.labels  # in index order, -1 where unlabelled: a memory bank's kNN labels
            if self.images.numel() <= _MAX_DEVICE_DATA_BYTES:
                self.images = self.images.to(self.device)
            self.image_size, self.classes, sample = self.data.image_size, self.data.classes, split.images
        self.num_samples = len(self.labels)
        self.steps_per_epoch = self.num_samples // config.batch_size
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"batch_size {config.batch_size} is larger than the training set ({self.num_samples} images); lower it"
            )
        # kNN during training: on the evaluation set when one is named (at the training resolution).
        self.eval_data = self.data
        if config.knn_every and (eval_dataset is not None or config.eval_dataset or self.stream is not None):
            self.eval_data = eval_dataset or load_eval_dataset(
                config.eval_dataset or config.dataset,
                config.eval_data if config.eval_dataset else self.stream.root,  # the folder streamed from
                image_size=self.image_size,
                streamed=self.stream is not None,
                workers=self.workers,
            )
        if config.knn_every:
            self.eval_data.require_labels("kNN during training (knn_every)")
        self.mean, self.std = channel_stats(sample)
        self.guard = CollapseGuard(
            sample if self.images is None else self.images, config.seed, self.mean, self.std, self.device
        )
        self.method_warned = False
        mc = config.method_config
        self.make_views = ViewGenerator(get_method(config.method).view_specs(mc, self.image_size), self.mean, self.std)
        self.augment_rng = torch.Generator()
        self.augment_rng.manual_seed(config.seed)

        # Method and optimiser.
        self.memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        self.model = build_method(config, self.image_size, self.num_samples, (self.mean, self.std)).to(self.device)
        if self.world > 1:
            convert_to_global_batch_norm(self.model)  # statistics over the global batch, as one process has them
        self.model = self.model.to(memory_format=self.memory_format)
        self.optimizer = build_optimizer(self.model.parameter_groups(), config)
        self.frozen_epochs = self.model.frozen_parameters()
        self.trainable = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.training_set = TrainingSet(self.num_samples, self.steps_per_epoch, self._embed)

        self.step, self.elapsed = 0, 0.0
        self._order, self._order_epoch = torch.empty(0, dtype=torch.long), -1
        self._batches, self._batches_at = None, None  # a streamed data set's loader, and where it stands
        self.nominal_steps = config.epochs * self.steps_per_epoch
        self.budget = BudgetFit(config.time_budget, self.nominal_steps)
        self._fit_schedules(self.nominal_steps)

    def restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.elapsed = state["step"], state["elapsed"]
        self.augment_rng.set_state(state["rng"]["augment"])
        torch.set_rng_state(state["rng"]["torch"])
        if self.device.type == "cuda" and "cuda" in state["rng"]:  # methods' draws on the device (noise samples)
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        self.budget.active = False  # the resumed run keeps the step count it was fitted to
        self._fit_schedules(state["total_steps"])

    def run(self) -> PretrainResult:
        self.model.train()
        self.meter = LossMeter(self.device)
        self.window_start, self.window_images, self.images_per_second = time.perf_counter(), 0, 0.0
        stopped, last_info = "completed", None
        while self.step < self.total_steps:
            step_start = time.perf_counter()
            epoch, index_in_epoch = divmod(self.step, self.steps_per_epoch)
            if index_in_epoch == 0:
                self.model.on_epoch_start(epoch, self.training_set)
            batch = self._next_batch(epoch, index_in_epoch)
            out = self._train_step(batch)
            self.step += 1
            self.meter.add(out.loss)
            self.window_images += self.config.batch_size
            self.elapsed += time.perf_counter() - step_start

            stop = self._stop_reason()
            if self.world > 1:
                stop = self._agree_with_rank0(stop)
            new_total = self.budget.observe(self.step, self.elapsed)
            if new_total is not None:
                self._fit_schedules(new_total)
            if stop or self._report_due():
                self._report(epoch, batch, out)
            if self.step % self.steps_per_epoch == 0:
                last_info = self._end_of_epoch() or last_info
            if stop is not None:
                stopped = stop
                break

        self._batches = None  # stops the loader processes
        if stopped == "completed" and self.total_steps < self.nominal_steps:
            stopped = "time_budget"  # the budget, not the epoch count, set the run's length
        if last_info is None or last_info.step != self.step:
            last_info = self._checkpoint(final=stopped != "cancelled")
        return PretrainResult(
            checkpoint=last_info.path,
            steps=self.step,
            epochs_completed=self.step / self.steps_per_epoch,
            stopped=stopped,
            train_seconds=self.elapsed,
            images_per_second=self.images_per_second,
            final_loss=self.meter.last,
        )

    def _agree_with_rank0(self, stop: str | None) -> str | None:
        """Rank 0's clock and stop decision on every rank, so that all stop at the same step and a
        time budget fits the same schedules everywhere."""
        elapsed, reason = distributed.broadcast_from_rank0([self.elapsed, STOP_REASONS.index(stop)])
        self.elapsed = elapsed
        return STOP_REASONS[int(reason)]

    def _fit_schedules(self, total_steps: int) -> None:
        """Every per-step schedule for a run of ``total_steps`` steps."""
        self.total_steps = total_steps
        mc = self.config.method_config
        warmup = warmup_steps_for(mc.warmup_epochs, self.steps_per_epoch, total_steps)
        weight_decay = (
            np.full(total_steps, mc.weight_decay)
            if mc.weight_decay_end is None
            else warmup_cosine(mc.weight_decay, total_steps, 0, final=mc.weight_decay_end)
        )
        # Each freeze keeps its share of the planned epochs, whatever length a budget gives the run.
        self.frozen = [
            (params, round(total_steps * epochs / self.config.epochs)) for params, epochs in self.frozen_epochs
        ]
        # So does a method's schedule in epochs: it gets the steps of one planned epoch of this run.
        planned_epoch_steps = max(1, round(total_steps / self.config.epochs))
        self.schedules = {
            "lr": warmup_cosine(self.config.lr, total_steps, warmup),
            "weight_decay": weight_decay,
            **self.model.schedules(total_steps, planned_epoch_steps),
        }

    def _next_batch(self, epoch: int, index_in_epoch: int) -> Batch:
        if self._order_epoch != epoch:
            self._order, self._order_epoch = epoch_permutation(self.config.seed, epoch, self.num_samples), epoch
        size = self.config.batch_size
        rows = slice(self.rank * size // self.world, (self.rank + 1) * size // self.world)
        # On several processes: this rank's slice, with its rows of the draws one process makes for the batch.
        share = (size, rows) if self.world > 1 else None
        if self.stream is not None:
            idx, crops = self._streamed(epoch, index_in_epoch, rows)
            crops = [c.to(self.device, non_blocking=True) for c in crops]
            views = self.make_views.finish(crops, self.augment_rng, share)
        else:
            idx = self._order[index_in_epoch * size : (index_in_epoch + 1) * size][rows]
            images = self.images[idx.to(self.images.device)].to(self.device, non_blocking=True)
            views = self.make_views(images, self.augment_rng, share)
        views = [v.contiguous(memory_format=self.memory_format) for v in views]
        return Batch(
            views=views,
            indices=idx.to(self.device),
            step=self.step,
            epoch=epoch,
            schedules={name: float(values[self.step]) for name, values in self.schedules.items()},
        )

    def _streamed(self, epoch: int, index_in_epoch: int, rows: slice) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Batch ``index_in_epoch`` of the epoch from the loader processes, whose crops are a function
        of (seed, epoch, batch): a loader starts at the batch asked for (a resumed run's, a new epoch's)."""
        if self._batches is None or self._batches_at != (epoch, index_in_epoch):
            specs = self.make_views.views
            # On a GPU the loader processes only read the files; this process decodes and crops on the device.
            on_device = decode_place(self.config.decode_on, self.device) == "device"
            batches = StreamBatches(
                self.stream,
                self._order,
                self.config.batch_size,
                specs,
                self.config.seed,
                epoch,
                rows,
                self.device if on_device else None,
            )
            self._batches = stream_batches(batches, index_in_epoch, self.workers, self.device.type == "cuda")
        self._batches_at = (epoch, index_in_epoch + 1)
        return next(self._batches)

    def _train_step(self, batch: Batch) -> StepOutput:
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.lr if group["fixed_lr"] else batch.schedules["lr"] * group["lr_scale"]
            group["weight_decay"] = batch.schedules["weight_decay"] * group["wd_scale"]
        with autocast_for(self.device, self.config.precision):
            out = self.model(batch)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        distributed.average_gradients(self.trainable)
        for params, until in self.frozen:
            if batch.step < until:
                for p in params:
                    p.grad = None  # no update at all, momentum and weight decay included
        if self.config.method_config.grad_clip:
            clip_each_gradient(self.trainable, self.config.method_config.grad_clip)
        self.optimizer.step()
        self.model.after_step(batch)
        return out

    def _stop_reason(self) -> str | None:
        if self.step >= self.total_steps:
            return None
        if self.config.time_budget is not None and self.elapsed >= self.config.time_budget:
            return "time_budget"
        if self.callbacks.should_stop and self.callbacks.should_stop():
            return "cancelled"
        return None

    def _report_due(self) -> bool:
        return (
            self.step % self.progress_every == 0
            or self.step % self.steps_per_epoch == 0
            or self.step == self.total_steps
        )

    def _report(self, epoch: int, batch: Batch, out: StepOutput) -> None:
        loss = self.meter.mean(self.step, epoch)
        stats, warning = {name: float(value) for name, value in out.stats.items()}, None
        guard_due = self.step % COLLAPSE_CHECK_EVERY == 0 or self.step % self.steps_per_epoch == 0
        if guard_due and self.rank == 0:
            measured = time.perf_counter()
            spread = self.guard.measure(self.model.encoder_for_eval())
            stats, warning = {**stats, **spread}, self.guard.warning(spread, self.step)
            self.window_start += time.perf_counter() - measured  # images/s counts training alone
        if warning is None and not self.method_warned:
            warning = self.model.step_warning(stats)
            self.method_warned = warning is not None
        if self.device.type == "cuda":
            stats = {**stats, "gpu_memory_bytes": float(torch.cuda.max_memory_allocated(self.device))}
        now = time.perf_counter()
        self.images_per_second = self.window_images / max(now - self.window_start, 1e-9)
        self.window_start, self.window_images = now, 0
        if self.callbacks.on_progress:
            self.callbacks.on_progress(
                Progress(
                    epoch=epoch,
                    step=self.step,
                    total_steps=self.total_steps,
                    epochs=math.ceil(self.total_steps / self.steps_per_epoch),
                    loss=loss,
                    lr=batch.schedules["lr"],
                    images_per_second=self.images_per_second,
                    elapsed=self.elapsed,
                    stats=stats,
                    warning=warning,
                )
            )

    def _end_of_epoch(self) -> CheckpointInfo | None:
        epochs_done = self.step // self.steps_per_epoch
        info = None
        every = self.config.checkpoint_every
        if every and epochs_done % every == 0 and self.step < self.total_steps:
            info = self._checkpoint(final=False)
        if self.config.knn_every and epochs_done % self.config.knn_every == 0:
            if self.rank == 0:
                self._evaluate_knn(epochs_done)
            distributed.barrier()  # the other ranks wait for rank 0's evaluation
            self.window_start = time.perf_counter()
        return info

    def _evaluate_knn(self, epochs_done: int) -> None:
        # A memory bank's rows are this training set's features: of use only when it is the evaluation set.
        bank = self.model.knn_bank() if self.eval_data is self.data else None
        if bank is None:
            encoder = self.model.encoder_for_eval()
            result = evaluate_backbone(encoder, self.eval_data, "knn", mean=self.mean, std=self.std, device=self.device)
        else:  # the bank's rows are the training features: only the test split is embedded
            features, embed = bank
            result = evaluate_memory_bank(
                features, self.labels, embed, self.data, mean=self.mean, std=self.std, device=self.device
            )
        result.epoch = epochs_done
        self.model.train()
        if self.callbacks.on_evaluation:
            self.callbacks.on_evaluation(result)

    def _checkpoint(self, final: bool) -> CheckpointInfo:
        epoch_done, in_epoch = divmod(self.step, self.steps_per_epoch)
        name = f"epoch_{epoch_done:04d}.pt" if in_epoch == 0 else f"step_{self.step:08d}.pt"
        state = {
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "total_steps": self.total_steps,
            "steps_per_epoch": self.steps_per_epoch,
            "num_samples": self.num_samples,
            "elapsed": self.elapsed,
            "rng": {
                "augment": self.augment_rng.get_state(),
                "torch": torch.get_rng_state(),
                **({"cuda": torch.cuda.get_rng_state(self.device)} if self.device.type == "cuda" else {}),
            },
            "image_size": self.image_size,
            "feature_dim": self.model.feature_dim,
            "normalization": {"mean": self.mean, "std": self.std},
            "classes": self.classes,
            "streamed": self.stream is not None,  # evaluations bring images to image_size the standard way
        }
        path = self.out_dir / "checkpoints" / name
        if self.rank == 0:
            save_checkpoint(state, path)
            save_checkpoint(state, self.out_dir / "checkpoints" / "last.pt")
        distributed.barrier()  # the others go on once the file exists
        info = CheckpointInfo(path=path, epoch=epoch_done, step=self.step, final=final)
        if self.callbacks.on_checkpoint:
            self.callbacks.on_checkpoint(info)
        return info

    def _embed(self, module: torch.nn.Module, batch_statistics: bool = False) -> torch.Tensor:
        if batch_statistics:  # shuffled batches of the run's size, seeded, each its own BN statistics
            order = torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(self.config.seed))
            size = self.config.batch_size
        else:
            order, size = None, 1024
        if self.stream is None:
            chunks = (
                [self.images]
                if order is None
                else (self.images[order[i : i + size]] for i in range(0, len(order), size))
            )
        else:  # streamed: every training image at the evaluation transform, a chunk at a time
            paths = self.stream.paths if order is None else [self.stream.paths[i] for i in order.tolist()]
            chunks = eval_images(self.stream.reader, paths, self.image_size, self.workers, batch_size=size)
        features = torch.cat([
            extract_features(
                module,
                images,
                self.mean,
                self.std,
                self.device,
                batch_size=size if order is not None else 512,
                precision=self.config.precision,
                batch_statistics=batch_statistics,
            )
            for images in chunks
        ])  # fmt: skip
        if order is not None:
            features[order] = features.clone()  # back to index order
        return features.to(self.device)


@torch.no_grad()
def clip_each_gradient(params: list[torch.nn.Parameter], max_norm: float) -> None:
    """Scale each parameter's gradient down to norm ``max_norm`` at most: per tensor, as DINO's
    ``clip_gradients`` (arXiv 2104.14294, official code), not one global norm."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    norms = torch._foreach_norm(grads)
    torch._foreach_mul_(grads, [(max_norm / (n + 1e-6)).clamp(max=1.0) for n in norms])


class LossMeter:
    """Sums losses on the device: one sync per report, not per step."""

    def __init__(self, device: torch.device):
        self.total = torch.zeros((), device=device)
        self.count = 0
        self.last = float("nan")

    def add(self, loss: torch.Tensor) -> None:
        self.total += loss.detach()
        self.count += 1

    def mean(self, step: int, epoch: int) -> float:
        """The mean loss since the last call; a non-finite one stops training."""
        if self.count == 0:
            return self.last
        value = distributed.mean_over_ranks(self.total).item() / self.count  # every rank's share
        if not math.isfinite(value):
            raise TrainingError(
                f"loss became {value} at step {step} (epoch {epoch}); lower base_lr or use precision=fp32"
            )
        self.total.zero_()
        self.count = 0
        self.last = value
        return value
