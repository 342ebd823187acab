"""The collapse guard: the spread of a fixed probe's features, reported as the run goes, and a
warning the first time they have collapsed."""

import math

import torch
from tiny import tiny_heads

from cssl_core.config import build_config
from cssl_core.train import collapse, loop, pretrain
from cssl_core.train.collapse import feature_spread

TINY = {"dataset": "synthetic", "backbone": "small", "batch_size": 32, "subset": 320, "epochs": 3}


def test_spread_of_one_direction_spread_points_and_a_pair():
    torch.manual_seed(0)
    one_direction = torch.randn(1, 64).repeat(100, 1) * torch.rand(100, 1)  # lengths differ, the direction not
    spread = feature_spread(one_direction)
    assert spread["feature_std"] < 1e-6 and abs(spread["feature_cosine"] - 1) < 1e-6
    spread = feature_spread(torch.randn(4000, 64))
    assert abs(spread["feature_cosine"]) < 0.01
    assert abs(spread["feature_std"] - 1 / math.sqrt(64)) < 0.01  # SimSiam's reference line
    # Two orthogonal features: 0, not the 0.5 a mean that counted each image with itself would give.
    assert feature_spread(torch.eye(2))["feature_cosine"] == 0.0


def test_a_run_reports_the_spread_every_50_steps_and_at_each_epochs_end(tmp_path):
    seen = []
    pretrain(build_config("simclr", {**TINY, **tiny_heads("simclr")}), tmp_path, on_progress=seen.append)
    measured = [p.step for p in seen if "feature_std" in p.stats]
    assert measured == [10, 20, 30]  # 10 steps an epoch
    assert all(0 < p.stats["feature_cosine"] < collapse.COLLAPSED_COSINE for p in seen if "feature_std" in p.stats)
    assert all(p.warning is None for p in seen)

    seen.clear()
    pretrain(
        build_config("simclr", {**TINY, **tiny_heads("simclr"), "batch_size": 4, "epochs": 1}),
        tmp_path / "b",
        on_progress=seen.append,
    )
    assert [p.step for p in seen if "feature_std" in p.stats] == [50, 80]  # 80 steps an epoch


def test_a_collapsed_run_says_so_once(tmp_path, monkeypatch):
    monkeypatch.setattr(collapse, "COLLAPSED_COSINE", -1.0)  # every measurement counts as collapsed
    seen = []
    pretrain(build_config("simclr", {**TINY, **tiny_heads("simclr")}), tmp_path, on_progress=seen.append)
    warnings = [(p.step, p.warning) for p in seen if p.warning]
    assert len(warnings) == 1 and warnings[0][0] == 10
    assert "collapsed at step 10" in warnings[0][1] and "mean pairwise cosine" in warnings[0][1]


def test_measuring_leaves_training_unchanged(tmp_path, monkeypatch):
    # The probe's forward passes draw no random numbers and move no BatchNorm statistics.
    config = build_config("byol", {**TINY, **tiny_heads("byol"), "epochs": 1})
    measured = pretrain(config, tmp_path / "a")
    monkeypatch.setattr(loop, "COLLAPSE_CHECK_EVERY", 10**9)
    monkeypatch.setattr(loop.Trainer, "_report", lambda self, *a: None)
    unmeasured = pretrain(config, tmp_path / "b")
    a = torch.load(measured.checkpoint, weights_only=True)["model"]
    b = torch.load(unmeasured.checkpoint, weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_nce_posteriors_are_the_losss_h():
    from cssl_core.losses.nce import nce_posteriors

    torch.manual_seed(0)
    pos, neg, log_z, num_samples = torch.randn(8), torch.randn(8, 32), torch.tensor(3.0), 1000

    def h(logit):  # h = P / (P + K Pn), P = exp(logit) / Z, Pn = 1 / num_samples (InstDisc, Eq. 6)
        return (logit.exp() / log_z.exp()) / (logit.exp() / log_z.exp() + 32 / num_samples)

    got = nce_posteriors(pos, neg, log_z, num_samples)
    assert torch.allclose(got["positive_h"], h(pos).mean())
    assert torch.allclose(got["noise_h_sum"], h(neg).sum(dim=1).mean())


def test_instdisc_reports_its_nce_terms_and_warns_once_when_the_noise_dominates(tmp_path, monkeypatch):
    from cssl_core.methods import instdisc

    seen = []
    # The paper's NCE with its first-batch Z (small images default to the softmax, which has no Z).
    overrides = {"loss": "nce", "nce_z": "first_batch", "epochs": 2}
    config = build_config("instdisc", {**TINY, **tiny_heads("instdisc"), **overrides})
    pretrain(config, tmp_path / "a", on_progress=seen.append)
    assert all({"positive_h", "noise_h_sum", "log_z_drift"} <= p.stats.keys() for p in seen)
    assert all(p.warning is None for p in seen)  # 20 tiny steps: the noise term is still small

    monkeypatch.setattr(instdisc, "NOISE_H_SUM_WARNING", -1.0)
    seen.clear()
    pretrain(config, tmp_path / "b", on_progress=seen.append)
    warnings = [p.warning for p in seen if p.warning]
    assert len(warnings) == 1 and "noise rows' posteriors sum to" in warnings[0]


def test_cmc_with_nce_reports_both_directions_terms(tmp_path):
    seen = []
    overrides = {"loss": "nce", "negatives": "memory_bank", "epochs": 1}
    pretrain(build_config("cmc", {**TINY, **tiny_heads("cmc"), **overrides}), tmp_path, on_progress=seen.append)
    keys = {f"{key}_{side}" for key in ("positive_h", "noise_h_sum", "log_z_drift") for side in ("l", "ab")}
    assert seen and all(keys <= p.stats.keys() for p in seen)
