"""The kNN benchmark's ``--method all`` summary: its markdown table, and the key by which runs
share one random-init evaluation (same network at initialisation, same normalisation)."""

import pytest
from tiny import stop_after, tiny_heads

from benchmarks.knn_budget import TABLE_COLUMNS, markdown_table, network_fingerprint
from cssl_core.config import build_config
from cssl_core.train import pretrain


def test_table_has_one_line_per_run_with_the_gain_over_its_random_init():
    rows = [
        {"method": "simclr", "batch_size": 128, "epochs": 11.823, "images_per_second": 339.4, "knn_top1": 54.47},
        {"method": "cpc", "batch_size": 32, "epochs": 2.13, "images_per_second": 71.0, "knn_top1": 35.83},
    ]
    rows[0]["random_init_knn_top1"] = 38.88
    header, rule, simclr, cpc = markdown_table(rows).splitlines()
    assert header == "| " + " | ".join(TABLE_COLUMNS) + " |" and rule.count("---") == len(TABLE_COLUMNS)
    assert simclr == "| simclr | 128 | 11.82 | 339 | 54.47 | 38.88 | +15.59 |"
    assert cpc == "| cpc | 32 | 2.13 | 71 | 35.83 |  |  |"  # random init not scored: blank, not zero


def checkpoint(tmp_path, method, steps, **overrides):
    config = build_config(
        method,
        {"dataset": "synthetic", "backbone": "small", "batch_size": 32, "epochs": 1, **tiny_heads(method), **overrides},
    )
    return pretrain(config, tmp_path / f"{method}-{steps}", should_stop=stop_after(steps)).checkpoint


@pytest.mark.parametrize("other", ["byol_gnws", "cmc"])
def test_runs_share_a_random_init_evaluation_only_on_the_same_network(tmp_path, other):
    simclr = network_fingerprint(checkpoint(tmp_path, "simclr", 1))
    # Trained further, the same network at initialisation: one evaluation serves both.
    assert network_fingerprint(checkpoint(tmp_path, "simclr", 2)) == simclr
    # GroupNorm + weight standardisation, or CMC's two half-width encoders: another random network.
    assert network_fingerprint(checkpoint(tmp_path, other, 1)) != simclr
