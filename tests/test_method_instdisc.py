"""Instance Discrimination against its defining mechanisms: the positive is the image's own
memory-bank row, the noise rows are uniform draws from the bank (no gradient into it), Z is
estimated once from the first batch and kept across a resume (the paper's NCE) or re-estimated
every step, the softmax variant is the cross-entropy over the same rows, the bank moves only at
the batch's rows by the momentum rule, the per-epoch kNN runs on the bank, and a short run of the
small-image recipe does not collapse where the first-batch Z does."""

import math

import pytest
import torch
import torch.nn.functional as F
from tiny import linear_backbone, mean_pairwise_cosine, tiny_heads, train_on

from cssl_core.config import build_config
from cssl_core.data import ImageDataset, load_dataset
from cssl_core.errors import ConfigError
from cssl_core.evaluation.features import extract_features
from cssl_core.evaluation.knn import knn_scores
from cssl_core.losses import nce_loss, nce_softmax_loss
from cssl_core.methods import Batch, build_method
from cssl_core.methods.instdisc import InstDisc
from cssl_core.methods.memory_bank import MemoryBank
from cssl_core.train import load_checkpoint, pretrain

TINY_HEADS = tiny_heads("instdisc")
PAPER_NCE = {"loss": "nce", "nce_z": "first_batch"}  # the paper's loss; the small-image recipe's is the softmax


def make(num_samples=64, seed=0, **overrides):
    torch.manual_seed(seed)
    config = build_config("instdisc", {"dataset": "synthetic", "backbone": "small", **TINY_HEADS, **overrides})
    return build_method(config, 32, num_samples)


def batch_for(indices, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Batch(
        views=[torch.randn(len(indices), 3, 32, 32, generator=g)],
        indices=indices,
        step=0,
        epoch=0,
        schedules={"lr": 0.1, "weight_decay": 0.0},
    )


def features_of(model, batch):
    """The step's unit features, recomputed (train-mode BN: the batch's own statistics, as in the step)."""
    with torch.no_grad():
        return F.normalize(model.head(model.backbone(batch.views[0])), dim=1)


def test_loss_contrasts_each_image_with_its_own_bank_row_against_uniform_noise_rows():
    model = make(**PAPER_NCE)
    bank = model.bank.features.clone()
    indices = torch.tensor([5, 60, 12, 33, 0, 47, 21, 8])
    batch = batch_for(indices)
    torch.manual_seed(7)
    loss = model(batch).loss
    f = model.embedding_network()(batch.views[0])  # (N, D), with gradient
    t, k = model.config.temperature, model.config.num_negatives
    torch.manual_seed(7)  # the same draw, from the global RNG as the step's
    noise = bank[torch.randint(0, 64, (len(indices), k))]  # (N, K, D)
    neg = torch.einsum("nd,nkd->nk", f, noise) / t

    def reference(positive_rows):
        pos = (f * positive_rows).sum(1) / t
        # Z from this first batch: mean(exp(all N (1 + K) logits)) * num_samples.
        z = torch.cat([pos[:, None], neg], 1).detach().double().exp().mean() * 64
        return nce_loss(pos, neg, math.log(z), 64)

    expected = reference(bank[indices])
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    # Another image's row as the positive (a swapped index) is a different loss.
    assert not torch.allclose(reference(bank[indices.roll(1)]), loss, rtol=1e-3)
    # Gradients reach the backbone and the head, never the bank.
    loss.backward()
    assert not model.bank.features.requires_grad and model.bank.features.grad is None
    assert model.head.weight.grad is not None and model.head.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.backbone.parameters() if p.requires_grad)


def test_bank_rows_change_only_at_the_batch_indices_by_the_momentum_rule():
    model = make(bank_momentum=0.3)
    before = model.bank.features.clone()
    indices = torch.tensor([3, 17, 40, 41, 9, 63, 0, 22])
    batch = batch_for(indices)
    model(batch)
    f = features_of(model, batch)
    torch.testing.assert_close(model.bank.features[indices], F.normalize(0.3 * before[indices] + 0.7 * f, dim=1))
    untouched = torch.ones(64, dtype=torch.bool)
    untouched[indices] = False
    assert torch.equal(model.bank.features[untouched], before[untouched])
    torch.testing.assert_close(model.bank.features.norm(dim=1), torch.ones(64))


def test_z_is_estimated_from_the_first_batch_only_and_survives_a_resume():
    model = make(**PAPER_NCE)
    assert not model.z_estimated
    model(batch_for(torch.arange(8)))
    log_z = model.log_z.clone()
    assert model.z_estimated and torch.isfinite(log_z)
    model(batch_for(torch.arange(8, 16), seed=1))
    assert torch.equal(model.log_z, log_z)
    # A resumed model (other weights and bank before loading) keeps the stored Z instead of estimating anew.
    resumed = make(seed=1, **PAPER_NCE)
    fresh = make(seed=1, **PAPER_NCE)
    resumed.load_state_dict(model.state_dict())
    resumed(batch_for(torch.arange(16, 24), seed=2))
    fresh(batch_for(torch.arange(16, 24), seed=2))
    assert torch.equal(resumed.log_z, log_z)
    assert not torch.allclose(fresh.log_z, log_z)  # estimating again would have given another Z


def test_every_step_z_is_each_batchs_own_estimate_and_softmax_is_the_cross_entropy_over_1_plus_k():
    indices = torch.tensor([5, 60, 12, 33, 0, 47, 21, 8])
    every_step, softmax = make(loss="nce", nce_z="every_step"), make(loss="softmax")
    bank = every_step.bank.features.clone()
    for step in range(2):  # the second batch's Z is its own, not the first's
        batch = batch_for(indices + step, seed=step)
        losses = []
        for model in (every_step, softmax):
            torch.manual_seed(7)  # the same noise rows for both
            losses.append(model(batch).loss)
        t, k = every_step.config.temperature, every_step.config.num_negatives
        torch.manual_seed(7)
        noise = bank[torch.randint(0, 64, (len(indices), k))]  # (N, K, D), the step's draw
        logits = []
        for model in (every_step, softmax):
            f = features_of(model, batch)
            logits.append(((f * bank[indices + step]).sum(1) / t, torch.einsum("nd,nkd->nk", f, noise) / t))
        (pos, neg), (pos_s, neg_s) = logits
        z = torch.cat([pos[:, None], neg], 1).double().exp().mean() * 64
        torch.testing.assert_close(every_step.log_z, torch.tensor(math.log(z), dtype=torch.float32))
        torch.testing.assert_close(losses[0], nce_loss(pos, neg, math.log(z), 64), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(losses[1], nce_softmax_loss(pos_s, neg_s), rtol=1e-5, atol=1e-6)
        bank = every_step.bank.features.clone()


@pytest.mark.parametrize(
    "overrides, collapses",
    [({}, False), ({"loss": "nce"}, False), (PAPER_NCE, True)],
    ids=["small-image recipe", "nce, Z every step", "nce, first-batch Z"],
)
def test_a_short_run_collapses_only_with_the_first_batch_z(overrides, collapses):
    # 256 images of 48 values on a one-layer ReLU network, whose features start aligned as a new
    # convnet's do. Eight epochs (64 steps): with Z fixed while the bank was random, the noise rows'
    # posteriors grow as the bank fills (their sum ~110 per image at the end) and their term pushes
    # every feature the same way; the bank's rows end with a mean cosine of 0.96. The softmax (0.03)
    # and the per-step Z (0.09) keep them apart.
    torch.manual_seed(0)
    config = build_config("instdisc", {"dataset": "synthetic", "num_negatives": 256, "embedding_dim": 32, **overrides})
    model = InstDisc(linear_backbone(48), 64, config.method_config, 256)
    images = torch.randn(256, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    train_on(model, images, epochs=8)
    assert (mean_pairwise_cosine(model.bank.features) > 0.5) == collapses


def test_noise_rows_are_uniform_draws_from_the_bank_on_the_global_rng():
    torch.manual_seed(0)
    bank = MemoryBank(8, 4)
    torch.testing.assert_close(bank.features.norm(dim=1), torch.ones(8))
    torch.manual_seed(3)
    rows = bank.negatives(500, 16)
    assert rows.shape == (500, 16, 4)
    drawn = (rows.reshape(-1, 4) @ bank.features.T).argmax(1)  # which bank row each draw is
    torch.testing.assert_close(rows.reshape(-1, 4), bank.features[drawn])
    counts = torch.bincount(drawn, minlength=8).float()
    assert (counts - 1000).abs().max() < 150  # 8,000 draws over 8 rows: about 1,000 each
    torch.manual_seed(3)
    assert torch.equal(bank.negatives(500, 16), rows)


def test_one_view_per_image_from_the_preset():
    paper = build_config("instdisc", {"dataset": "synthetic", "recipe": "paper"})
    mc = paper.method_config
    assert (mc.temperature, mc.embedding_dim, mc.num_negatives, mc.bank_momentum) == (0.07, 128, 4096, 0.5)
    assert (mc.base_lr, mc.weight_decay, mc.warmup_epochs, paper.batch_size) == (0.03, 5e-4, 0.0, 256)
    assert (mc.loss, mc.nce_z) == ("nce", "first_batch")  # the paper's NCE, Z from the first batch
    specs = InstDisc.view_specs(mc, 32)
    assert len(specs) == 1 and specs[0].crop_scale == (0.2, 1.0) and specs[0].hue == 0.4
    small = build_config("instdisc", {"dataset": "synthetic"})
    assert small.batch_size == 128 and small.method_config.temperature == 0.1
    assert (small.method_config.loss, small.method_config.nce_z) == ("softmax", "every_step")


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"temperature": 0}, "temperature"),
        ({"num_negatives": 0}, "num_negatives"),
        ({"embedding_dim": 0}, "embedding_dim"),
        ({"bank_momentum": 1.0}, "bank_momentum"),
    ],
)
def test_config_rejects_what_cannot_train(overrides, key):
    with pytest.raises(ConfigError, match=key):
        build_config("instdisc", {"dataset": "synthetic", **overrides})


def test_per_epoch_knn_runs_on_the_memory_bank_without_the_unlabelled_rows(tmp_path):
    synthetic = load_dataset("synthetic")
    unlabelled = synthetic.train.subset(range(128, 192))
    unlabelled.labels.fill_(-1)
    data = ImageDataset("synthetic", synthetic.classes, synthetic.train.subset(range(128)), synthetic.test, unlabelled)
    config = build_config(
        "instdisc",
        {"dataset": "synthetic", "backbone": "small", "batch_size": 64, "epochs": 1, "knn_every": 1, **TINY_HEADS},
    )
    results = []
    run = pretrain(config, tmp_path, dataset=data, on_evaluation=results.append)
    (result,) = results
    assert result.parameters["features"] == "memory_bank" and result.epoch == 1
    assert result.num_train == 128 and result.num_test == len(synthetic.test.labels)

    # The same kNN by hand: the trained bank's labelled rows (index order: train, then unlabelled)
    # against the test images embedded by backbone + head.
    state = load_checkpoint(run.checkpoint)
    model = build_method(config, 32, 192)
    model.load_state_dict(state["model"])
    norm = state["normalization"]
    test = extract_features(
        model.embedding_network(), synthetic.test.images, norm["mean"], norm["std"], torch.device("cpu")
    )
    scores = knn_scores(model.bank.features[:128], synthetic.train.labels[:128], test, 10, 200, 0.1)
    top1 = (scores.argmax(1) == synthetic.test.labels).float().mean().item() * 100
    assert result.top1 == pytest.approx(top1)
