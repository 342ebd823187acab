"""Streaming an image folder: full-resolution crops in loader processes, exact resume, data_mode."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import stop_after, tiny_heads

from cli.main import main as cssl
from cssl_core.augment import ViewSpec, sample_crop_flip
from cssl_core.config import build_config
from cssl_core.data import FileIndex, ImageDataset, decoded_bytes_limit, load_eval_dataset, open_dataset
from cssl_core.data.stream import StreamBatches, batch_generator, build_index, eval_image, read_image, stream_batches
from cssl_core.errors import ConfigError
from cssl_core.train import load_checkpoint, pretrain

CLASSES = ("cat", "dog")
TRAIN_PER_CLASS, TEST_PER_CLASS = 48, 8


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A labelled tree of JPEGs of mixed sizes and aspect ratios, 96 train and 16 test."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for split, count in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        for label, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                height, width = (int(v) for v in rng.integers(40, 200, 2))
                pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
                pixels[..., label] //= 2  # something for kNN to find
                Image.fromarray(pixels).save(root / split / name / f"{i:03d}.jpg", quality=90)
    return root


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CSSL_CACHE_DIR", str(tmp_path / "cache"))


def stream_config(folder, **overrides):
    keys = {
        "dataset": "imagefolder",
        "data": str(folder),
        "data_mode": "stream",
        "image_size": 32,
        "backbone": "small",
        "batch_size": 32,
        "epochs": 2,
        "checkpoint_every": 1,
        "data_workers": 1,
    }
    return build_config("simclr", {**keys, **tiny_heads("simclr"), **overrides})


def test_streamed_run_resumes_mid_epoch_with_the_same_weights(tmp_path, folder):
    run = stream_config(folder)  # 3 steps per epoch
    straight = pretrain(run, tmp_path / "straight")
    first = pretrain(run, tmp_path / "split", should_stop=stop_after(4))  # stops at batch 1 of epoch 2
    assert first.stopped == "cancelled" and first.steps == 4
    second = pretrain(run, tmp_path / "split", resume_from=first.checkpoint)
    assert second.steps == straight.steps == 6
    a, b = load_checkpoint(straight.checkpoint), load_checkpoint(second.checkpoint)
    assert a["streamed"] and a["image_size"] == 32
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


def batches(folder, workers, start=0, rows=slice(0, 16)):
    index = build_index(folder, folder.parent / "index-cache")
    order = torch.randperm(len(index), generator=torch.Generator().manual_seed(1))
    specs = [ViewSpec(32), ViewSpec(16, crop_scale=(0.05, 0.4))]
    return list(stream_batches(StreamBatches(index, order, 16, specs, 7, 3, rows), start, workers, False))


def test_crops_depend_on_the_batch_not_on_the_workers_or_where_the_loader_starts(folder):
    alone = batches(folder, workers=0)
    shared = batches(folder, workers=2)
    resumed = batches(folder, workers=2, start=4)
    assert len(alone) == len(shared) == 6 and len(resumed) == 2
    for (idx_a, crops_a), (idx_b, crops_b) in zip(alone, shared):
        assert torch.equal(idx_a, idx_b)
        assert all(torch.equal(x, y) for x, y in zip(crops_a, crops_b))
    for (_, crops_a), (_, crops_b) in zip(alone[4:], resumed):
        assert all(torch.equal(x, y) for x, y in zip(crops_a, crops_b))
    # A rank's rows are its slice of the batch one process loads.
    (idx_half, crops_half), *_ = batches(folder, workers=0, rows=slice(8, 16))
    assert torch.equal(idx_half, alone[0][0][8:])
    assert all(torch.equal(x, y[8:]) for x, y in zip(crops_half, alone[0][1]))


def test_crop_boxes_are_drawn_at_the_images_own_resolution(tmp_path):
    # A one-pixel checkerboard: resized to the view size first, it would be flat grey.
    board = (np.indices((320, 240)).sum(axis=0) % 2 * 255).astype(np.uint8)
    (tmp_path / "board").mkdir()
    for i in range(4):
        Image.fromarray(np.stack([board] * 3, axis=-1)).save(tmp_path / "board" / f"{i}.png")
    index = build_index(tmp_path / "board", tmp_path / "cache")
    # An area of 1/75 of 320 x 240 at ratio 1 is 32 x 32 source pixels: copied, not resampled.
    spec = ViewSpec(32, crop_scale=(1 / 75, 1 / 75), crop_ratio=(1.0, 1.0), flip_p=0.0)
    order = torch.arange(4)
    _, (crops,) = StreamBatches(index, order, 4, [spec], seed=0, epoch=0, rows=slice(0, 4))[0]
    box, _ = sample_crop_flip(4, torch.tensor([[320, 240]] * 4), spec, batch_generator(0, 0, 0))
    for crop, top, left in zip(crops, box.top.long().tolist(), box.left.long().tolist()):
        assert torch.equal(crop[0], torch.from_numpy(board[top : top + 32, left : left + 32]))
    assert crops.float().std() > 100


def test_evaluation_images_are_resized_to_256_224_of_the_side_then_centre_cropped():
    # 448 x 224, pixel value = column // 2: the short side goes to 256, so 512 columns, crop from 144.
    image = (torch.arange(448) // 2).to(torch.uint8).repeat(3, 224, 1)
    out = eval_image(image, 224)
    assert out.shape == (3, 224, 224)
    # Output column 0 is resized column 144, source column 144.5 * 448 / 512 - 0.5 = 125.9: value 63.
    # (Resizing the short side to 224 alone would start the crop at source column 112: value 56.)
    assert abs(int(out[0, 100, 0]) - 63) <= 1 and abs(int(out[0, 100, 223]) - 160) <= 1


def test_auto_streams_a_folder_over_the_memory_limit(folder):
    over = (TRAIN_PER_CLASS + TEST_PER_CLASS) * 2 * 32 * 32 * 3 - 1
    with decoded_bytes_limit(over, "CSSL_MAX_DECODED_BYTES"):
        assert isinstance(open_dataset("imagefolder", folder, image_size=32), FileIndex)
    with decoded_bytes_limit(over + 1, "CSSL_MAX_DECODED_BYTES"):
        assert isinstance(open_dataset("imagefolder", folder, image_size=32), ImageDataset)
    assert isinstance(open_dataset("imagefolder", folder, image_size=32, data_mode="stream"), FileIndex)


def test_the_file_index_is_cached_and_sees_an_added_image(tmp_path, folder):
    index = build_index(folder, tmp_path / "cache")
    assert len(index) == 2 * TRAIN_PER_CLASS and len(index.test_paths) == 2 * TEST_PER_CLASS
    assert index.classes == list(CLASSES) and index.labels.tolist() == [0] * 48 + [1] * 48
    assert len(list((tmp_path / "cache" / "index").iterdir())) == 1
    extra = folder / "train" / "dog" / "zzz.jpg"
    Image.new("RGB", (50, 40)).save(extra)
    try:
        assert len(build_index(folder, tmp_path / "cache")) == 2 * TRAIN_PER_CLASS + 1
    finally:
        extra.unlink()


def test_a_streamed_runs_evaluation_set_is_in_memory_at_its_size(folder):
    data = load_eval_dataset("imagefolder", folder, image_size=32, streamed=True, workers=0)
    assert data.train.images.shape == (96, 3, 32, 32) and data.test.images.shape == (16, 3, 32, 32)
    index = build_index(folder, folder.parent / "index-cache")
    first = eval_image(read_image(folder / index.paths[0]), 32)
    assert torch.equal(data.train.images[0], first)


def test_cli_pretrains_streamed_and_evaluates(tmp_path, folder):
    out = tmp_path / "run"
    args = ["pretrain", "--method", "simclr", "--dataset", "imagefolder", "--data", str(folder)]
    args += ["--data-mode", "stream", "--image-size", "32", "--backbone", "small", "--epochs", "1"]
    args += ["--batch-size", "32", "--set", "data_workers=1", "--evaluate", "knn", "--out", str(out)]
    assert cssl(args) == 0
    assert load_checkpoint(out / "checkpoints" / "last.pt")["streamed"]


def test_a_bad_data_mode_is_a_clear_error(folder, capsys):
    with pytest.raises(ConfigError, match="data_mode must be one of auto, memory, stream, got 'fast'"):
        build_config("simclr", {"data_mode": "fast"})
    with pytest.raises(ConfigError, match="data_mode stream reads folders of images of any size"):
        build_config("simclr", {"dataset": "cifar10", "data_mode": "stream"})
    assert cssl(["pretrain", "--method", "simclr", "--dataset", "synthetic", "--data-mode", "fast"]) != 0
    assert "data_mode must be one of" in capsys.readouterr().err


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the resident memory from /proc")
@pytest.mark.parametrize("bounded", [True, False])
def test_a_streamed_run_returns_large_freed_blocks_to_the_system(bounded):
    # glibc keeps a freed 20 MiB block resident once its mmap threshold has risen past it; a
    # streamed run fixes the threshold (bound_heap), so a step's large temporaries do not pile up.
    code = """
import sys, torch
from pathlib import Path
from cssl_core.data.stream import bound_heap
def anon():
    lines = Path("/proc/self/status").read_text().splitlines()
    return next(int(line.split()[1]) for line in lines if line.startswith("RssAnon:")) // 1024
if sys.argv[1] == "1":
    assert bound_heap()
before = anon()
for _ in range(3):
    block = torch.ones(5 << 20)  # 20 MiB, written
    del block
print(anon() - before)
"""
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    done = subprocess.run(
        [sys.executable, "-c", code, str(int(bounded))], env=env, capture_output=True, text=True, check=True
    )
    kept_mib = int(done.stdout.strip())
    if bounded:
        assert kept_mib < 5
    elif kept_mib < 15:
        pytest.skip(f"this C library returns freed blocks by itself (kept {kept_mib} MiB)")
