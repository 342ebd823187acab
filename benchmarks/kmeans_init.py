"""What DeepCluster-v2's first k-means sees: the untrained network's memory of a class-balanced
CIFAR-10 subset, embedded in eval mode (fresh BatchNorm statistics, as ``TrainingSet.embed``) and
in train mode (each batch's statistics, as the official ``init_memory``), then clustered as at
epoch 0. Prints one JSON line per mode and cluster count: the memory's mean pairwise cosine, the
cluster sizes, the clusters' agreement with the classes (NMI), and the loss of the memory against
its own clusters at the method's temperature (log K: uniform targets, no signal).

    .venv/bin/python -m benchmarks.kmeans_init --clusters 100 10
"""

from __future__ import annotations

import argparse
import json
import os

import torch
import torch.nn.functional as F

from benchmarks.knn_budget import DEFAULT_DATA
from cssl_core.config import build_config
from cssl_core.data import load_dataset
from cssl_core.methods import build_method
from cssl_core.methods.deepclusterv2 import spherical_kmeans
from cssl_core.train.loop import channel_stats


def nmi(a: torch.Tensor, b: torch.Tensor) -> float:
    """Normalised mutual information (arithmetic mean of the entropies) of two labellings (N,)."""
    joint = torch.zeros(int(a.max()) + 1, int(b.max()) + 1, dtype=torch.float64)
    joint.index_put_((a, b), torch.ones(len(a), dtype=torch.float64), accumulate=True)
    p = joint / len(a)
    pa, pb = p.sum(1, keepdim=True), p.sum(0, keepdim=True)
    mi = (p[p > 0] * (p[p > 0] / (pa * pb)[p > 0]).log()).sum()
    entropy = sum(-(q[q > 0] * q[q > 0].log()).sum() for q in (pa, pb))
    return float(2 * mi / entropy)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("CSSL_CIFAR10", str(DEFAULT_DATA)))
    parser.add_argument("--per-class", type=int, default=1000)
    parser.add_argument("--clusters", type=int, nargs="+", default=[100])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    data = load_dataset("cifar10", args.data)
    labels = data.train.labels
    index = torch.cat([torch.nonzero(labels == c).flatten()[: args.per_class] for c in range(10)])
    images, labels = data.train.images[index], labels[index]
    mean, std = channel_stats(images)
    x = (images.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(args.seed))]  # batches of mixed classes
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(args.seed))]
    torch.manual_seed(args.seed)
    config = build_config("deepclusterv2", {"dataset": "cifar10", "backbone": "small", "subset": len(x)})
    network = build_method(config, 32, len(x)).embedding_network()
    for train_mode in (False, True):
        network.train(train_mode)
        with torch.no_grad():
            memory = torch.cat([network(batch) for batch in x.split(config.batch_size)])
        n = len(memory)
        cosine = ((memory @ memory.T).sum().item() - n) / (n * (n - 1))
        for k in args.clusters:
            centroids, assignments = spherical_kmeans(
                memory, k, config.method_config.kmeans_iterations, torch.Generator().manual_seed(1)
            )
            loss = F.cross_entropy(memory @ centroids.T / config.method_config.temperature, assignments)
            sizes = torch.bincount(assignments, minlength=k)
            row = {
                "embedding": "train mode" if train_mode else "eval mode",
                "clusters": k,
                "mean_cosine": round(cosine, 3),
                "non_empty": int((sizes > 0).sum()),
                "largest": int(sizes.max()),
                "nmi_with_classes": round(nmi(assignments, labels), 3),
                "loss": round(loss.item(), 2),
                "log_k": round(torch.log(torch.tensor(float(k))).item(), 2),
            }
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
