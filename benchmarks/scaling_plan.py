"""Bytes each GPU sends per training step on several GPUs, and the time that takes, per method:
computed from the real models and the real collectives, not measured on GPUs.

Each method's ResNet-50 model is built and one step is run on this CPU at two small per-rank
batches, with the collectives of :mod:`cssl_core.distributed` (gathers, sums, means) and the
BatchNorm statistics of :class:`~cssl_core.backbones.global_batch_norm.GlobalBatchNorm` recorded
by their payloads; a payload that grows with the batch is extrapolated linearly to the per-rank
batch of the plan. Gradients are one flat all-reduce of every trainable parameter, 4 bytes each.

A ring all-reduce of S bytes sends 2 (n-1)/n S per GPU, an all-gather of S bytes per rank
(n-1) S. The time is that over a link of the given bandwidth per direction (NVLink on H100 SXM
about 450 GB/s; 100 Gb/s Ethernet 12.5 GB/s), with no overlap with compute and no latency.

    .venv/bin/python -m benchmarks.scaling_plan [--gpus 8] [--batch-size 4096] [--image-size 224]
"""

from __future__ import annotations

import argparse
import contextlib
from collections import defaultdict

import torch

from cssl_core import distributed
from cssl_core.backbones.global_batch_norm import GlobalBatchNorm, convert_to_global_batch_norm
from cssl_core.config import build_config
from cssl_core.methods import Batch, build_method, get_method, method_names

LINKS = {"NVLink (450 GB/s)": 450e9, "100 Gb/s Ethernet": 12.5e9}
KINDS = ("gather", "all_reduce")
NUM_SAMPLES = 10_000


@contextlib.contextmanager
def recorded(payloads: dict[tuple[str, int], int]):
    """Records each collective's payload in bytes, keyed by (kind, call number) in call order."""
    calls = defaultdict(int)

    def note(kind: str, tensor: torch.Tensor) -> None:
        calls[kind] += 1
        payloads[(kind, calls[kind])] = tensor.numel() * tensor.element_size()

    def wrap(kind, original):
        def recording(tensor, *args):
            note(kind, tensor)
            return original(tensor, *args)

        return recording

    saved = {name: getattr(distributed, name) for name in ("gather", "gather_no_grad", "global_sum", "mean_over_ranks")}
    distributed.gather = wrap("gather", saved["gather"])
    distributed.gather_no_grad = wrap("gather", saved["gather_no_grad"])
    distributed.global_sum = wrap("all_reduce", saved["global_sum"])
    distributed.mean_over_ranks = wrap("all_reduce", saved["mean_over_ranks"])
    try:
        yield note
    finally:
        for name, original in saved.items():
            setattr(distributed, name, original)


def step_payloads(method: str, per_rank: int, image_size: int) -> tuple[dict[tuple[str, int], int], int]:
    """The collectives' payloads of one step at ``per_rank`` images, and the trainable parameter count."""
    torch.manual_seed(0)
    config = build_config(method, {"backbone": "resnet50", "batch_size": per_rank, "precision": "fp32"})
    # Per-sample state (memory banks) is sized by the training set, not sent: room for DeepCluster
    # v2's 3,000 clusters a head.
    model = convert_to_global_batch_norm(build_method(config, image_size, NUM_SAMPLES))
    sizes = [spec.size for spec in type(model).view_specs(config.method_config, image_size)]
    views = [torch.rand(per_rank, 3, s, s) for s in sizes]
    schedules = {name: float(values[0]) for name, values in model.schedules(10, 10).items()}
    batch = Batch(views, torch.arange(per_rank), 0, 0, {"lr": 0.1, "weight_decay": 0.0, **schedules})
    payloads: dict[tuple[str, int], int] = {}
    with recorded(payloads) as note:

        def statistics(module, inputs, output) -> None:
            channels = torch.empty(module.num_features)  # float32, as the statistics are summed
            note("all_reduce", channels)  # the mean's sum: C floats
            note("all_reduce", channels)  # the variance's

        hooks = [m.register_forward_hook(statistics) for m in model.modules() if isinstance(m, GlobalBatchNorm)]
        model.train()
        model(batch).loss.backward()
        for hook in hooks:
            hook.remove()
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return payloads, params


def plan(method: str, gpus: int, batch_size: int, image_size: int, small: int = 2) -> dict:
    per_rank = batch_size // gpus
    at_small, params = step_payloads(method, small, image_size)
    at_double, _ = step_payloads(method, 2 * small, image_size)
    sent = {kind: 0.0 for kind in KINDS}
    for key, size in at_small.items():
        # Linear in the batch: size(b) = fixed + per_image * b.
        per_image = (at_double.get(key, size) - size) / small
        payload = size + per_image * (per_rank - small)
        kind = key[0]
        sent[kind] += (gpus - 1) * payload if kind == "gather" else 2 * (gpus - 1) / gpus * payload
    gradients = 2 * (gpus - 1) / gpus * params * 4
    total = gradients + sent["gather"] + sent["all_reduce"]
    return {
        "method": method,
        "parameters": params,
        "gradients_bytes": gradients,
        "gathers_bytes": sent["gather"],
        "other_all_reduces_bytes": sent["all_reduce"],
        "total_bytes": total,
        **{link: total / bandwidth for link, bandwidth in LINKS.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4096, help="the global batch")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--methods", default=",".join(n for n in method_names() if get_method(n).distributed))
    args = parser.parse_args()
    print(
        f"per GPU and step, ResNet-50, global batch {args.batch_size} on {args.gpus} GPUs, {args.image_size} px\n"
        "| method | parameters (M) | gradients (MB) | gathers (MB) | BN + other sums (MB) | total (MB) | "
        + " | ".join(f"ms on {link}" for link in LINKS)
        + " |\n|---|---:|---:|---:|---:|---:|"
        + "---:|" * len(LINKS)
    )
    for method in args.methods.split(","):
        row = plan(method, args.gpus, args.batch_size, args.image_size)
        times = " | ".join(f"{row[link] * 1000:.2f}" for link in LINKS)
        print(
            f"| {method} | {row['parameters'] / 1e6:.1f} | {row['gradients_bytes'] / 1e6:.1f} | "
            f"{row['gathers_bytes'] / 1e6:.2f} | {row['other_all_reduces_bytes'] / 1e6:.2f} | "
            f"{row['total_bytes'] / 1e6:.1f} | {times} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
