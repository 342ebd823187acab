"""DeepCluster-v2 (Caron et al., arXiv 2006.09882, appendix on DeepCluster-v2; official code
``main_deepclusterv2.py`` of facebookresearch/swav).

At every epoch start, spherical k-means clusters a memory of last epoch's L2-normalised
projections (one memory per global crop); each of several prototype heads is set to the
centroids of one clustering and kept fixed. Each step, every crop of an image predicts its
image's cluster: cross-entropy of ``z @ C_h / T`` against the stored assignment, averaged over
crops and heads. The step's embeddings of the global crops are written into the memory at the
images' indices, ready for the next epoch's k-means.

Differences from the official code: the memory holds every training image (the official
per-process memory holds the images of the last epoch, and images it lacks get no target), so
an image skipped by an epoch keeps its older embedding; and epoch 0's memory comes from one
pass over the un-augmented images in eval mode (``TrainingSet.embed``), where the official
``init_memory`` embeds each global crop of an augmented pass in train mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from cssl_core import distributed
from cssl_core.augment import ViewSpec, local_views
from cssl_core.config import MethodConfig, option
from cssl_core.errors import ConfigError
from cssl_core.losses.precision import full_precision
from cssl_core.methods.base import Batch, Method, StepOutput, TrainingSet
from cssl_core.methods.heads import L2Normalize, mlp
from cssl_core.registry import register

if TYPE_CHECKING:
    from cssl_core.config import PretrainConfig

GLOBAL_CROPS = 2  # the crops the memory stores (official ``crops_for_assign`` = [0, 1])
# Rows per matmul in k-means: bounds the (rows, K) similarity and one-hot blocks (16384 x 3000 floats = 197 MB).
_KMEANS_CHUNK = 16384


@dataclass
class DeepClusterV2Config(MethodConfig):
    # Official scripts/deepclusterv2_800ep_pretrain.sh (README: 75.2% top-1): LARS with trust
    # coefficient 0.001 (the base default), lr 4.8 at batch 4096 = 0.3 x batch/256, weight decay
    # 1e-6, 10 warmup epochs then a cosine (the official one warms up from 0.3 and ends at
    # 0.0048; ours from ~0 to 0); 2x224 global crops of scale (0.14, 1) + 6x96 local crops.
    optimizer: str = "lars"
    base_lr: float = 0.3
    weight_decay: float = 1e-6
    warmup_epochs: float = 10.0
    augmentation: str = "simclr"  # the global crops; SwAV's pipeline is SimCLR's with its own crop scale
    crop_min_scale: float | None = 0.14
    temperature: float = option(0.1, "softmax temperature of the prototype scores", gt=0)
    nmb_prototypes: tuple[int, ...] = option(
        (3000, 3000, 3000), "clusters (prototypes) of each head, one k-means per head", ge=1
    )
    local_crops: int = option(6, "local (small, low-resolution) crops per image besides the 2 global ones", ge=0)
    kmeans_iterations: int = option(10, "k-means iterations at each epoch start", ge=0)
    projector_hidden_dim: int = option(2048, "hidden width of the projection MLP", ge=1)
    projector_dim: int = option(128, "dimension of the L2-normalised embedding the memory stores", ge=1)

    # 100 clusters per head over-cluster a 10-class set tenfold, DeepCluster's best ratio
    # (arXiv 1807.05520, Fig. 3: 10,000 clusters on ImageNet's 1,000 classes), where 3,000 would
    # leave ~17 CIFAR images per cluster and make k-means on a CPU ~30x slower. Two local crops of
    # 14 px cost 0.4 of a global crop between them (without them, 48.2% kNN against 49.5% at equal
    # epochs, at the former lr 0.3). Global crops from 0.2. base_lr 0.6 and lars_eta 0.02: the
    # official batch-256 lr and solo-learn's CIFAR values, as SwAV's small-image recipe (solo-learn
    # clips the trust ratio, this LARS does not: a relative update of lr x eta = 0.006 per step at
    # batch 128, where SimCLR's lr 0.3 and eta 0.05, the values before, give 0.0075). Measured
    # (BENCHMARKS.md, 16 epochs, the 5 minutes' worth): 50.4% kNN against 49.5%.
    # Measured (benchmarks/kmeans_init.py; BENCHMARKS.md, "InstDisc and DeepCluster-v2 on small
    # images"): the first k-means has little to go on. The untrained small convnet's epoch-0 memory
    # (eval mode, fresh BN statistics) has a mean pairwise cosine of 0.978 over 10,000 CIFAR-10
    # images, so the 100 centroids nearly coincide and the cross-entropy of the memory against its own
    # clusters at T 0.1 is 4.43 of log 100 = 4.61: epoch 0 trains on near-uniform targets (the 2.8-epoch
    # run ended at 4.48). In train mode (each shuffled batch's statistics, as the official init_memory)
    # the same memory has cosine 0.33 and that loss 1.88, its clusters as close to the classes (NMI
    # 0.12 against 0.11). Filled that way (the default), 9 epochs score 45.6% kNN against 43.2% with
    # the eval-mode memory.
    small_image_recipe: ClassVar[dict[str, Any]] = {
        "batch_size": 128,
        "nmb_prototypes": (100, 100, 100),
        "local_crops": 2,
        "crop_min_scale": 0.2,
        "base_lr": 0.6,
        "lars_eta": 0.02,
    }

    def validate(self) -> None:
        super().validate()
        if not self.nmb_prototypes:
            raise ConfigError("nmb_prototypes must list one cluster count per head, got none")


@full_precision
def deepcluster_loss(
    z: torch.Tensor, prototypes: list[torch.Tensor], targets: torch.Tensor, temperature: float
) -> torch.Tensor:
    """z: (C * N, D) unit embeddings of C crops of N images, crop-major; prototypes: one (K_h, D)
    per head; targets: (H, N) long, each image's cluster in each head.

    Per head, the cross-entropy of every crop's ``z @ C_h / T`` against its image's cluster, the
    mean over the C * N rows (the official ``CrossEntropyLoss`` on all crops at once); then the
    mean over heads.
    """
    z = z.float()
    crops = z.shape[0] // targets.shape[1]
    losses = [F.cross_entropy(z @ c.float().T / temperature, t.repeat(crops)) for c, t in zip(prototypes, targets)]
    return torch.stack(losses).mean()


@torch.no_grad()
def spherical_kmeans(
    x: torch.Tensor, k: int, iterations: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """x: (N, D) unit rows -> centroids (k, D) unit rows and assignments (N,) long, as the
    official ``cluster_memory``: centroids start as k rows drawn without replacement by
    ``generator`` (CPU); each iteration assigns every row to its most similar centroid (cosine)
    and moves each centroid to its rows' normalised mean, an empty cluster keeping its centroid;
    the returned assignments come from a last assignment step against the returned centroids.
    """
    centroids = x[torch.randperm(len(x), generator=generator)[:k].to(x.device)].float()  # (k, D)
    for iteration in range(iterations + 1):
        assignments = torch.cat([(rows @ centroids.T).argmax(dim=1) for rows in x.split(_KMEANS_CHUNK)])
        if iteration == iterations:
            break
        sums, counts = x.new_zeros(k, x.shape[1]), x.new_zeros(k)
        for rows, labels in zip(x.split(_KMEANS_CHUNK), assignments.split(_KMEANS_CHUNK)):
            # A one-hot matmul rather than index_add_: atomic adds on a GPU would sum in a varying
            # order, and a resumed run must cluster bit for bit as the uninterrupted one.
            one_hot = x.new_zeros(len(labels), k).scatter_(1, labels[:, None], 1.0)  # (rows, k)
            sums += one_hot.T @ rows
            counts += one_hot.sum(dim=0)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None]
        centroids = F.normalize(centroids, dim=1)
    return centroids, assignments


@register
class DeepClusterV2(Method):
    name = "deepclusterv2"
    paper = "Unsupervised Learning of Visual Features by Contrasting Cluster Assignments (Caron et al., 2020)"
    arxiv = "2006.09882"
    config_cls = DeepClusterV2Config
    min_views = GLOBAL_CROPS
    max_views = None
    global_crops = GLOBAL_CROPS
    # Every rank's embeddings written to the memory, so every rank runs the same k-means over it.
    distributed = True

    def __init__(self, backbone: nn.Module, feature_dim: int, config: DeepClusterV2Config, num_samples: int):
        super().__init__(backbone, feature_dim, config, num_samples)
        for head, k in enumerate(config.nmb_prototypes):
            if k > num_samples:
                raise ConfigError(
                    f"nmb_prototypes: head {head} has {k} clusters but the training set has only "
                    f"{num_samples} images to cluster; lower nmb_prototypes"
                )
        self.projector = mlp(feature_dim, config.projector_hidden_dim, config.projector_dim)
        self.prototypes = nn.ModuleList(nn.Linear(config.projector_dim, k, bias=False) for k in config.nmb_prototypes)
        # Set by k-means only: the official scripts freeze them for 300,000 iterations, longer than any run.
        self.prototypes.requires_grad_(False)
        self.register_buffer("memory", torch.zeros(GLOBAL_CROPS, num_samples, config.projector_dim))  # (2, N, D)
        self.register_buffer("memory_filled", torch.zeros((), dtype=torch.bool))
        # Before the first k-means every image is in cluster 0 of every head.
        self.register_buffer("assignments", torch.zeros(len(config.nmb_prototypes), num_samples, dtype=torch.long))
        # Drawn from the run's seeded global RNG; a buffer, so a resumed run keeps it.
        self.register_buffer("kmeans_seed", torch.randint(2**31, ()))

    @classmethod
    def view_specs(cls, config: DeepClusterV2Config, image_size: int) -> list[ViewSpec]:
        return cls.preset_specs(config, image_size) + local_views(image_size, config.local_crops)

    @classmethod
    def check_config(cls, config: PretrainConfig, image_size: int) -> None:
        mc = config.method_config
        if config.subset is not None and max(mc.nmb_prototypes) > config.subset:
            raise ConfigError(
                f"nmb_prototypes: {max(mc.nmb_prototypes)} clusters but subset has only "
                f"{config.subset} images; lower nmb_prototypes"
            )
        super().check_config(config, image_size)

    def embedding_network(self) -> nn.Module:
        """Images (N, 3, H, W) -> unit embeddings (N, projector_dim): what the memory stores."""
        return nn.Sequential(self.backbone, self.projector, L2Normalize())

    def kmeans_generator(self, epoch: int, head: int) -> torch.Generator:
        """The generator of ``head``'s initial centroids at ``epoch``: a function of the run's seed,
        the epoch and the head only, so a resumed run clusters exactly as an uninterrupted one."""
        return torch.Generator().manual_seed(int(self.kmeans_seed) * 1_000_003 + epoch * 1_009 + head)

    @torch.no_grad()
    def on_epoch_start(self, epoch: int, training_set: TrainingSet) -> None:
        if not self.memory_filled:
            # In train mode over shuffled batches, as the official init_memory (the network is in
            # train mode there): an untrained network's eval-mode embeddings nearly coincide.
            embedded = training_set.embed(self.embedding_network(), batch_statistics=True)
            self.memory.copy_(embedded.expand_as(self.memory))
            self.memory_filled.fill_(True)
        for head, k in enumerate(self.config.nmb_prototypes):
            # Heads take the global crops' memories in turn (official: j = (j + 1) % len(crops_for_assign)).
            memory = self.memory[head % GLOBAL_CROPS]
            centroids, assignments = spherical_kmeans(
                memory, k, self.config.kmeans_iterations, self.kmeans_generator(epoch, head)
            )
            self.prototypes[head].weight.copy_(centroids)
            self.assignments[head].copy_(assignments)

    def forward(self, batch: Batch) -> StepOutput:
        views = batch.views
        n = views[0].shape[0]
        # One backbone pass per resolution (as the official code), so BN statistics do not mix crop sizes.
        groups = [views[:GLOBAL_CROPS], views[GLOBAL_CROPS:]]
        features = torch.cat([self.backbone(torch.cat(g)) for g in groups if g])  # (C * N, feature_dim)
        z = F.normalize(self.projector(features).float(), dim=1)  # (C * N, D), crop-major
        with torch.no_grad():  # this step's embeddings, from before its update, as the official code stores
            # Every rank's, so that each rank's memory, and the k-means run on it, are one process's.
            stored = distributed.gather_no_grad(
                z[: GLOBAL_CROPS * n].detach().view(GLOBAL_CROPS, n, -1).transpose(0, 1)
            )  # (world * n, 2, D)
            self.memory[:, distributed.gather_no_grad(batch.indices)] = stored.transpose(0, 1)
        targets = self.assignments[:, batch.indices]  # (H, N)
        loss = deepcluster_loss(z, [p.weight for p in self.prototypes], targets, self.config.temperature)
        return StepOutput(loss=loss)
