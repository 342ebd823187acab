"""Streaming an image folder: full-resolution crops in loader processes or on the training
device, exact resume, data_mode."""

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
from cssl_core.augment import ViewGenerator, ViewSpec, sample_crop_flip
from cssl_core.config import build_config
from cssl_core.data import FileIndex, ImageDataset, decoded_bytes_limit, load_eval_dataset, open_dataset, shards
from cssl_core.data import stream as stream_module
from cssl_core.data.stream import (
    StreamBatches,
    StreamedImages,
    batch_generator,
    build_index,
    decode_batch,
    decode_bytes,
    decode_place,
    encode_batch,
    eval_image,
    jpeg_components,
    read_image,
    stream_batches,
)
from cssl_core.errors import ConfigError, DataError
from cssl_core.evaluation import evaluate_checkpoint, extract_features
from cssl_core.train import load_checkpoint, pretrain
from cssl_core.train.checkpoint import build_encoder_from_checkpoint

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


SPECS = (ViewSpec(32), ViewSpec(16, crop_scale=(0.05, 0.4)))
CPU = torch.device("cpu")


def batches(folder, workers, start=0, rows=slice(0, 16), decode_device=None, index=None):
    index = index or build_index(folder, folder.parent / "index-cache")
    order = torch.randperm(len(index), generator=torch.Generator().manual_seed(1))
    dataset = StreamBatches(index, order, 16, SPECS, 7, 3, rows, decode_device)
    return list(stream_batches(dataset, start, workers, False))


def assert_same_batches(expected, found):
    assert len(expected) == len(found)
    for (idx_a, crops_a), (idx_b, crops_b) in zip(expected, found):
        assert torch.equal(idx_a, idx_b)
        assert all(torch.equal(x, y) for x, y in zip(crops_a, crops_b))


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


def smooth_jpeg(path, rng, size, mode="RGB"):
    """Coarse random colours resized smoothly, plus a little noise: photograph-like, so that two
    JPEG decoders differ by a few levels only."""
    coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    image = np.asarray(Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC), dtype=np.int16)
    pixels = np.clip(image + rng.integers(-6, 7, image.shape), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).convert(mode).save(path, quality=90)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """An unlabelled folder of 32 images of mixed sizes: 29 RGB JPEGs, a grey JPEG, a CMYK JPEG
    (which nvjpeg cannot read) and a PNG."""
    root = tmp_path_factory.mktemp("mixed")
    rng = np.random.default_rng(1)
    for i in range(29):
        smooth_jpeg(root / f"{i:03d}.jpg", rng, tuple(int(v) for v in rng.integers(40, 160, 2)))
    smooth_jpeg(root / "grey.jpg", rng, (120, 90), mode="L")
    smooth_jpeg(root / "cmyk.jpg", rng, (90, 120), mode="CMYK")
    Image.fromarray(rng.integers(0, 256, (70, 110, 3), dtype=np.uint8)).save(root / "image.png")
    return root


@pytest.fixture(scope="module")
def mixed_shards(mixed, tmp_path_factory):
    dest = tmp_path_factory.mktemp("mixed-shards") / "out"
    shards.write_shards(mixed, str(dest), max_size=10**9, max_count=10, cache_dir=mixed.parent / "index-cache")
    return dest


def test_decoding_in_the_training_process_makes_the_loaders_crops_bit_for_bit(folder):
    # decode_on device with a CPU device: the loader passes the files' bytes, this process decodes and crops.
    in_loader = batches(folder, workers=0)
    assert_same_batches(in_loader, batches(folder, workers=2, decode_device=CPU))
    assert_same_batches(in_loader[4:], batches(folder, workers=0, start=4, decode_device=CPU))
    half = batches(folder, workers=0, rows=slice(8, 16), decode_device=CPU)
    assert_same_batches(batches(folder, workers=0, rows=slice(8, 16)), half)


@pytest.mark.parametrize("source", ["folder", "shards"])
def test_a_png_and_a_cmyk_jpeg_are_decoded_in_the_loader_the_other_jpegs_in_training(
    mixed, mixed_shards, source, tmp_path
):
    if source == "folder":
        index = build_index(mixed, tmp_path / "cache")
    else:
        index = shards.build_index(mixed_shards, tmp_path / "cache")
        assert all(entry.count("\t") == 3 for entry in index.paths)  # byte ranges of the shards
    assert len(index) == 32
    assert_same_batches(batches(mixed, 0, index=index), batches(mixed, 1, decode_device=CPU, index=index))
    dataset = StreamBatches(index, torch.arange(32), 16, SPECS, 7, 3, slice(0, 16), CPU)
    encoded = [dataset[k][1] for k in range(2)]
    in_loader = [name for e in encoded for name, n in zip(e.names, e.lengths.tolist()) if n == 0]
    # The shards name their members by key: the PNG by its suffix, the CMYK JPEG by its bytes.
    assert sorted((name.rsplit(".", 1)[1], jpeg_components(index.reader(name))) for name in in_loader) == [
        ("jpg", 4),
        ("png", None),
    ]
    assert sum(len(e.decoded) for e in encoded) == 2 and sum(int((e.lengths > 0).sum()) for e in encoded) == 30


def test_jpeg_components_are_read_from_the_frame_header(mixed):
    found = {p.name: jpeg_components(p.read_bytes()) for p in mixed.iterdir()}
    assert found["grey.jpg"] == 1 and found["cmyk.jpg"] == 4 and found["000.jpg"] == 3
    assert found["image.png"] is None and jpeg_components(b"\xff\xd8\xff\xe0\x00") is None


def test_a_jpeg_the_devices_decoder_refuses_is_decoded_alone_by_the_loaders_decoder(mixed, monkeypatch):
    names = ["000.jpg", "001.jpg", "002.jpg"]
    files = [(mixed / name).read_bytes() for name in names]
    real = stream_module.decode_jpeg

    def refuses_001(data, **kwargs):  # as nvjpeg refuses a file (and with it the whole batch)
        chunks = data if isinstance(data, list) else [data]
        if any(chunk.numpy().tobytes() == files[1] for chunk in chunks):
            raise RuntimeError("Error while decoding JPEG images")
        return real(data, **kwargs)

    monkeypatch.setattr(stream_module, "decode_jpeg", refuses_001)
    images = decode_batch(encode_batch(0, names, files), CPU)
    for image, data, name in zip(images, files, names):
        assert torch.equal(image, decode_bytes(data, name))


def test_decode_on_auto_decodes_on_a_gpu_and_in_the_loader_on_a_cpu():
    assert decode_place("auto", torch.device("cuda", 0)) == "device"
    assert decode_place("auto", CPU) == "loader"
    assert decode_place("loader", torch.device("cuda")) == "loader" and decode_place("device", CPU) == "device"
    with pytest.raises(ConfigError, match="decode_on must be one of auto, loader, device, got 'gpu'"):
        build_config("simclr", {"decode_on": "gpu"})


def test_decoding_on_the_device_resumes_mid_epoch_with_the_loaders_weights(tmp_path, folder, monkeypatch):
    decoded = []
    monkeypatch.setattr(stream_module, "decode_batch", lambda *args: decoded.append(1) or decode_batch(*args))
    in_loader = pretrain(stream_config(folder, decode_on="loader"), tmp_path / "loader")  # 3 steps per epoch
    assert not decoded
    run = stream_config(folder, decode_on="device")
    first = pretrain(run, tmp_path / "split", should_stop=stop_after(4))  # stops at batch 1 of epoch 2
    assert first.stopped == "cancelled" and first.steps == 4
    second = pretrain(run, tmp_path / "split", resume_from=first.checkpoint)
    assert second.steps == in_loader.steps == 6 and len(decoded) == 6  # a batch each step, in training
    a, b = load_checkpoint(in_loader.checkpoint), load_checkpoint(second.checkpoint)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_crops_decoded_by_nvjpeg_are_within_a_few_levels_of_the_cpus(mixed):
    on_cpu = batches(mixed, workers=1, decode_device=CPU)
    on_gpu = batches(mixed, workers=1, decode_device=torch.device("cuda"))
    views = ViewGenerator(SPECS, mean=(0.5,) * 3, std=(0.25,) * 3)
    for (idx_a, crops_a), (idx_b, crops_b) in zip(on_cpu, on_gpu):
        assert torch.equal(idx_a, idx_b)
        for a, b in zip(crops_a, crops_b):
            assert b.device.type == "cuda" and b.shape == a.shape
            # nvjpeg's IDCT and chroma upsampling differ from libjpeg-turbo's by a few levels;
            # another crop box or flip would differ by tens.
            assert (b.cpu().float() - a.float()).abs().mean() < 2.0
        cpu_views = views.finish(crops_a, torch.Generator().manual_seed(0))
        gpu_views = views.finish(crops_b, torch.Generator().manual_seed(0))
        for a, b in zip(cpu_views, gpu_views):
            assert (b.cpu() - a).abs().mean() < 0.05  # normalised units: 2 levels are 0.03


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


def test_an_evaluation_set_over_the_memory_limit_is_read_streamed_with_the_same_features(tmp_path, folder):
    checkpoint = pretrain(stream_config(folder, epochs=1), tmp_path / "run").checkpoint
    in_memory = load_eval_dataset("imagefolder", folder, image_size=32, streamed=True, workers=0)
    over = (TRAIN_PER_CLASS + TEST_PER_CLASS) * 2 * 32 * 32 * 3 - 1
    with decoded_bytes_limit(over, "CSSL_MAX_DECODED_BYTES"):
        lazy = load_eval_dataset("imagefolder", folder, image_size=32, streamed=True, workers=1)
        assert isinstance(lazy.train.images, StreamedImages) and lazy.image_size == 32
        assert torch.equal(lazy.train.labels, in_memory.train.labels)
        # Every other image, as a probe's label fraction picks them: the same rows, in order.
        picked = torch.arange(len(lazy.train)) % 2 == 1
        encoder = build_encoder_from_checkpoint(load_checkpoint(checkpoint))
        features = [
            extract_features(encoder, data.train.images[picked], [0.5] * 3, [0.25] * 3, torch.device("cpu"))
            for data in (lazy, in_memory)
        ]
        assert len(features[0]) == TRAIN_PER_CLASS and torch.equal(*features)
        # kNN reads them batch by batch; a protocol that trains on the images needs them decoded.
        knn = evaluate_checkpoint(checkpoint, "knn", k=5)
        with pytest.raises(DataError, match="more than the 344,063 bytes allowed"):
            evaluate_checkpoint(checkpoint, "finetune", epochs=1)
    assert (knn.top1, knn.num_train, knn.num_test) == (evaluate_checkpoint(checkpoint, "knn", k=5).top1, 96, 16)


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
