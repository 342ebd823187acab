"""The training loop: exact resume, time budgets, cancellation, non-finite losses, export."""

import json
import math
from types import SimpleNamespace

import pytest
import torch
import torchvision
from tiny import stop_after, tiny_heads
from torch import nn

from cli.main import main as cssl
from cssl_core.config import build_config
from cssl_core.errors import TrainingError
from cssl_core.methods import method_names
from cssl_core.train import export_backbone, load_checkpoint, loop, pretrain

# Per-method state worth covering in the exact-resume test: SwAV's queue filled and used in epoch 2.
RESUME_EXTRAS = {"swav": {"queue_length": 128, "epoch_queue_starts": 1}, "simclrv2": {"memory_size": 64}}

TINY = {"dataset": "synthetic", "backbone": "small", "batch_size": 64, "subset": 320, "checkpoint_every": 1}


def config(method="simclr", **overrides):
    return build_config(method, {**TINY, **tiny_heads(method), **overrides})


@pytest.mark.parametrize("method", method_names())
def test_resume_gives_the_same_weights_as_training_straight(tmp_path, method):
    run = config(method, epochs=2, **RESUME_EXTRAS.get(method, {}))
    straight = pretrain(run, tmp_path / "straight")
    # 5 steps per epoch: stop after one epoch, and once more in the middle of the second.
    first = pretrain(run, tmp_path / "split", should_stop=stop_after(5))
    assert first.stopped == "cancelled" and first.steps == 5
    second = pretrain(run, tmp_path / "split", resume_from=first.checkpoint, should_stop=stop_after(2))
    assert second.steps == 7
    third = pretrain(run, tmp_path / "split", resume_from=second.checkpoint)
    assert third.stopped == "completed" and third.steps == straight.steps == 10
    a = load_checkpoint(straight.checkpoint)["model"]
    b = load_checkpoint(third.checkpoint)["model"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_time_budget_fits_the_schedule(tmp_path, monkeypatch):
    # A clock that advances 50 ms per reading makes every step take exactly 50 ms of training time.
    clock = {"t": 0.0}

    def perf_counter():
        clock["t"] += 0.05
        return clock["t"]

    monkeypatch.setattr(loop, "time", SimpleNamespace(perf_counter=perf_counter))
    seen = []
    result = pretrain(config(epochs=10_000, time_budget=3.0), tmp_path, on_progress=seen.append, progress_every=1)
    assert result.stopped == "time_budget"
    assert abs(result.steps - 60) <= 1 and result.train_seconds == pytest.approx(3.0, abs=0.06)
    # The cosine was fitted to the budget: the last step runs at a small fraction of the peak.
    peak = max(p.lr for p in seen)
    assert seen[-1].lr < 0.01 * peak
    assert seen[-1].total_steps == result.steps


@pytest.mark.parametrize(
    "method, freeze", [("dino", {"freeze_last_layer": 10}), ("swav", {"freeze_prototypes_epochs": 10})]
)
def test_a_freeze_keeps_its_share_of_a_budgeted_run(tmp_path, monkeypatch, method, freeze):
    clock = {"t": 0.0}

    def perf_counter():  # every step takes 50 ms of training time, as above
        clock["t"] += 0.05
        return clock["t"]

    monkeypatch.setattr(loop, "time", SimpleNamespace(perf_counter=perf_counter))
    # 10 of 20 planned epochs (5 steps each): half of the ~60 steps the budget allows, not 50 of them.
    trainer = loop.Trainer(config(method, epochs=20, time_budget=3.0, **freeze), tmp_path, loop.Callbacks(), 10, None)
    [(params, _)] = trainer.frozen
    initial = [p.detach().clone() for p in params]
    result = trainer.run()
    [(_, until)] = trainer.frozen
    assert result.stopped == "time_budget" and abs(result.steps - 60) <= 2
    assert until == round(result.steps / 2)
    assert not all(torch.equal(a, p) for a, p in zip(initial, params))  # it trained after the freeze


def test_swavs_queue_starts_at_its_share_of_a_budgeted_run(tmp_path, monkeypatch):
    clock = {"t": 0.0}

    def perf_counter():  # every step takes 50 ms of training time, as above
        clock["t"] += 0.05
        return clock["t"]

    monkeypatch.setattr(loop, "time", SimpleNamespace(perf_counter=perf_counter))
    seen = []
    callbacks = loop.Callbacks(on_progress=lambda p: seen.append((p.step, p.stats["queue_in_use"])))
    # Epoch 10 of 20 planned (5 steps each): from step 30 of the ~60 the budget allows, not from
    # step 50; 128 rows at 64 a step are full after 2 steps, and used from the third.
    run = config("swav", epochs=20, time_budget=3.0, queue_length=128, epoch_queue_starts=10, local_crops=0)
    result = loop.Trainer(run, tmp_path, callbacks, 1, None).run()
    first_used = min(step for step, in_use in seen if in_use)
    assert result.stopped == "time_budget" and abs(result.steps - 60) <= 2
    assert abs(first_used - (round(result.steps / 2) + 3)) <= 2


def test_cancel_keeps_a_checkpoint(tmp_path):
    infos, seen = [], []
    result = pretrain(
        config(epochs=5), tmp_path, should_stop=stop_after(3), on_checkpoint=infos.append, on_progress=seen.append
    )
    assert result.stopped == "cancelled" and result.steps == 3
    # Stopped before the first report (every 10 steps): its steps are reported all the same.
    assert [p.step for p in seen] == [3] and math.isfinite(result.final_loss) and result.images_per_second > 0
    assert infos[-1].path == result.checkpoint and not infos[-1].final
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["step"] == 3


def test_non_finite_loss_stops_with_a_clear_error(tmp_path):
    bad = config(epochs=3, optimizer="sgd", base_lr=1e30, precision="fp32")
    with pytest.raises(TrainingError, match="loss became"):
        pretrain(bad, tmp_path, progress_every=1)


def test_export_loads_into_torchvision(tmp_path):
    result = pretrain(config(backbone="resnet18", epochs=1, subset=64, batch_size=32), tmp_path)
    out = export_backbone(result.checkpoint, tmp_path / "resnet18.pt")
    model = torchvision.models.resnet18()
    model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()
    model.fc = nn.Identity()
    model.load_state_dict(torch.load(out, weights_only=True))
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 512)


def test_cli_pretrain_eval_and_errors(tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        cssl(
            [
                "pretrain",
                "--method",
                "simclr",
                "--dataset",
                "synthetic",
                "--backbone",
                "small",
                "--epochs",
                "1",
                "--batch-size",
                "64",
                "--subset",
                "320",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert (out / "checkpoints" / "last.pt").is_file()
    assert json.loads((out / "config.json").read_text())["method"] == "simclr"
    capsys.readouterr()
    assert cssl(["eval", str(out / "checkpoints" / "last.pt"), "--protocol", "knn", "--json", "--set", "k=20"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["protocol"] == "knn" and result["parameters"] == {"k": 20, "temperature": 0.1}
    assert 0 <= result["top1"] <= 100 and result["top5"] >= result["top1"]

    assert cssl(["pretrain", "--method", "simclrr", "--dataset", "synthetic"]) == 2
    assert "known methods: barlow_twins" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cssl(["pretrain", "--method", "simclr", "--epoch", "3", "--bogus"])
    assert "valid options:" in capsys.readouterr().err
    assert cssl(["eval", str(tmp_path / "missing.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert cssl(["eval", str(out / "checkpoints" / "last.pt"), "--set", "k=few"]) == 2
    assert "k must be of type int" in capsys.readouterr().err

    # A service job's stored config (protocol parameters included) runs as a --config file.
    stored = {**json.loads((out / "config.json").read_text()), "epochs": 1, "knn": {"k": 5}}
    (tmp_path / "job.json").write_text(json.dumps(stored))
    assert (
        cssl(
            [
                "pretrain",
                "--method",
                "simclr",
                "--config",
                str(tmp_path / "job.json"),
                "--out",
                str(tmp_path / "again"),
                "--evaluate",
                "knn",
            ]
        )
        == 0
    )
    assert "knn: top-1" in capsys.readouterr().out
    stored["knn"] = {"k": -1}
    (tmp_path / "job.json").write_text(json.dumps(stored))
    assert cssl(["pretrain", "--method", "simclr", "--config", str(tmp_path / "job.json")]) == 2
    assert "k must be at least 1" in capsys.readouterr().err


def test_gradient_clipping_is_per_tensor_as_in_dino():
    big, small = torch.nn.Parameter(torch.zeros(4)), torch.nn.Parameter(torch.zeros(2))
    big.grad, small.grad = torch.tensor([3.0, 0.0, 0.0, 0.0]), torch.tensor([0.3, 0.4])
    loop.clip_each_gradient([big, small], 1.0)
    torch.testing.assert_close(big.grad, torch.tensor([1.0, 0.0, 0.0, 0.0]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(small.grad, torch.tensor([0.3, 0.4]))  # a global norm would shrink it too


def test_pretraining_on_unlabelled_images_evaluates_on_the_named_set(tmp_path):
    from PIL import Image

    from cssl_core.errors import DataError
    from cssl_core.evaluation import evaluate_checkpoint

    photos = tmp_path / "photos"
    generator = torch.Generator().manual_seed(0)
    for i in range(70):
        pixels = torch.randint(0, 256, (40, 48, 3), generator=generator, dtype=torch.uint8).numpy()
        (photos / f"roll{i % 3}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(photos / f"roll{i % 3}" / f"{i}.png")
    run = {**TINY, "dataset": "imagefolder", "data": str(photos), "image_size": 32, "subset": None, "batch_size": 32}
    with pytest.raises(DataError, match="no labels.*kNN during training.*eval_dataset"):
        pretrain(config(**run, knn_every=1, epochs=1), tmp_path / "refused")
    assert not (tmp_path / "refused" / "checkpoints").exists()

    seen = []
    result = pretrain(
        config(**run, knn_every=1, epochs=2, eval_dataset="synthetic"), tmp_path / "run", on_evaluation=seen.append
    )
    assert [(r.epoch, r.dataset) for r in seen] == [(1, "synthetic"), (2, "synthetic")]
    # The final evaluations default to the run's evaluation set; the pretraining images have no labels.
    assert evaluate_checkpoint(result.checkpoint, "knn", k=5).dataset == "synthetic"
    with pytest.raises(DataError, match="no labels"):
        evaluate_checkpoint(result.checkpoint, "knn", dataset="imagefolder", data=str(photos))
    no_eval = pretrain(config(**run, epochs=1), tmp_path / "plain")
    with pytest.raises(DataError, match="no labels"):
        evaluate_checkpoint(no_eval.checkpoint, "knn")


def test_embedding_with_batch_statistics_is_in_index_order_and_uses_each_batch(tmp_path):
    trainer = loop.Trainer(config("simclr"), tmp_path, loop.Callbacks(), 10, None)
    torch.manual_seed(0)
    per_image = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 8))  # no batch statistics
    # Shuffled batches, then back to index order: row i is image i's, as without batch statistics.
    torch.testing.assert_close(trainer._embed(per_image, batch_statistics=True), trainer._embed(per_image))
    with_bn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten())
    eval_mode, train_mode = trainer._embed(with_bn), trainer._embed(with_bn, batch_statistics=True)
    # Each batch normalised by its own statistics: about zero mean per channel, unlike eval mode.
    assert train_mode.view(len(train_mode), 4, -1).mean(dim=(0, 2)).abs().max() < 0.05
    assert eval_mode.view(len(eval_mode), 4, -1).mean(dim=(0, 2)).abs().max() > 0.05
