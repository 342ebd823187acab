"""A file that is not a cssl checkpoint (text, random bytes, a truncated copy, another program's
torch file) is refused with one message, ``not a cssl checkpoint: <path>: <reason>``, wherever
the core reads a checkpoint: resuming, evaluating, exporting."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from cli.main import main as cssl
from cssl_core.errors import CheckpointError
from cssl_core.evaluation import evaluate_checkpoint
from cssl_core.train import export_backbone, load_checkpoint
from cssl_core.train.checkpoint import save_checkpoint


@pytest.fixture
def checkpoint(tmp_path):
    """A checkpoint as the loop writes it, with a few hundred kB of weights."""
    state = {
        "config": {"method": "simclr"},
        "model": {"w": torch.randn(256, 256)},
        "step": 10,
        "steps_per_epoch": 5,
        "image_size": 32,
    }
    return save_checkpoint(state, tmp_path / "last.pt")


def truncated(path, out):
    data = path.read_bytes()
    out.write_bytes(data[: len(data) // 2])
    return out


def refusal(path) -> str:
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert message.startswith(f"not a cssl checkpoint: {path}: "), message
    # The parser's own error is not chained into what the user sees.
    assert error.value.__cause__ is None and (error.value.__context__ is None or error.value.__suppress_context__)
    return message.removeprefix(f"not a cssl checkpoint: {path}: ")


def test_a_checkpoint_loads(checkpoint):
    assert load_checkpoint(checkpoint)["step"] == 10


def test_a_truncated_checkpoint(checkpoint, tmp_path):
    assert refusal(truncated(checkpoint, tmp_path / "half.pt")).startswith("the file is truncated or corrupt")


def test_a_truncated_checkpoint_of_the_legacy_torch_format(tmp_path):
    legacy = tmp_path / "legacy.pt"
    torch.save(
        {"format": "cssl-checkpoint/1", "model": torch.randn(256, 256)}, legacy, _use_new_zipfile_serialization=False
    )
    assert refusal(truncated(legacy, tmp_path / "half.pt")).startswith("the file is truncated or corrupt")


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"epochs: 100\ntemperature: 0.5\n", "not a file written by torch.save"),
        (os.urandom(4096), "not a file written by torch.save"),
        (b"", "the file is empty"),
    ],
)
def test_a_file_of_other_bytes(tmp_path, content, reason):
    path = tmp_path / "notes.pt"
    path.write_bytes(content)
    assert refusal(path) == reason


@pytest.mark.parametrize(
    "saved, reason",
    [
        (
            {"conv1.weight": torch.zeros(2)},
            "it has no format entry (a plain state_dict, or another program's checkpoint?)",
        ),
        ([1, 2, 3], "it holds a list, not a checkpoint's dict"),
        ({"format": "lightning/2", "model": {}}, "its format is 'lightning/2', expected 'cssl-checkpoint/1'"),
        ({"format": "cssl-checkpoint/1", "model": {}}, "it lacks config, step, steps_per_epoch, image_size"),
    ],
)
def test_a_torch_file_of_another_layout(tmp_path, saved, reason):
    path = tmp_path / "other.pt"
    torch.save(saved, path)
    assert refusal(path) == reason


def test_evaluate_export_and_the_cli_say_the_same(checkpoint, tmp_path, capfd):
    half = truncated(checkpoint, tmp_path / "half.pt")
    with pytest.raises(CheckpointError, match="^not a cssl checkpoint: "):
        evaluate_checkpoint(half, "knn")
    with pytest.raises(CheckpointError, match="^not a cssl checkpoint: "):
        export_backbone(half, tmp_path / "backbone.pt")
    for argv in (
        ["eval", str(half)],
        ["export", str(half), "--out", str(tmp_path / "b.pt")],
        ["pretrain", "--method", "simclr", "--resume", str(half)],
    ):
        assert cssl(argv) == 2
        captured = capfd.readouterr()
        assert (
            captured.err == f"cssl: error: not a cssl checkpoint: {half}: the file is truncated or corrupt "
            "(an interrupted write or copy?)\n"
        ), argv


class RunsCode:
    """Unpickling this calls ``Path.touch(marker)``: what a crafted checkpoint could do instead."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_checkpoint_whose_pickle_would_run_code_is_refused(tmp_path, capfd):
    marker = tmp_path / "ran"
    crafted = tmp_path / "crafted.pt"
    torch.save(
        {
            "format": "cssl-checkpoint/1",
            "config": {"method": "simclr"},
            "model": {},
            "step": 1,
            "steps_per_epoch": 1,
            "image_size": 32,
            "payload": RunsCode(marker),
        },
        crafted,
    )
    reason = refusal(crafted)
    assert reason.startswith("it holds Python objects other than tensors and plain values ("), reason
    for argv in (
        ["eval", str(crafted)],
        ["export", str(crafted), "--out", str(tmp_path / "b.pt")],
        ["pretrain", "--method", "simclr", "--resume", str(crafted)],
    ):
        assert cssl(argv) == 2
        assert "not a cssl checkpoint" in capfd.readouterr().err
    assert not marker.exists()


def test_an_older_checkpoint_with_numpy_values_converts_when_trusted(tmp_path, capfd):
    old = tmp_path / "old.pt"
    weights = torch.randn(4, 4)
    torch.save(
        {
            "format": "cssl-checkpoint/1",
            "config": {"method": "simclr"},
            "model": {"w": weights},
            "step": 3,
            "steps_per_epoch": 1,
            "image_size": 32,
            "normalization": {"mean": np.array([0.4, 0.5, 0.6]), "std": np.float32(0.25)},
        },
        old,
    )
    assert f"cssl convert-checkpoint {old} --trust --out NEW.pt" in refusal(old)
    new = tmp_path / "new.pt"
    assert cssl(["convert-checkpoint", str(old), "--out", str(new)]) == 2  # not without --trust
    assert "--trust" in capfd.readouterr().err and not new.exists()
    assert cssl(["convert-checkpoint", str(old), "--out", str(new), "--trust"]) == 0
    state = load_checkpoint(new)
    assert torch.equal(state["model"]["w"], weights) and state["step"] == 3
    assert torch.allclose(state["normalization"]["mean"], torch.tensor([0.4, 0.5, 0.6], dtype=torch.float64))
    assert state["normalization"]["std"] == 0.25 and type(state["normalization"]["std"]) is float
