"""WebDataset shards: written by `cssl data shard`, read by webdataset, streamed like the folder."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import webdataset
from PIL import Image
from s3_server import s3_server
from tiny import stop_after, tiny_heads

from cli.main import main as cssl
from cssl_core.augment import ViewSpec
from cssl_core.config import build_config
from cssl_core.data import FileIndex, load_eval_dataset, open_dataset
from cssl_core.data.shards import MANIFEST, build_index
from cssl_core.data.stream import StreamBatches, stream_batches
from cssl_core.data.stream import build_index as build_folder_index
from cssl_core.errors import ConfigError, DataError
from cssl_core.train import load_checkpoint, pretrain

CLASSES = ("cat", "dog")


def write_image(path, rng, label=0):
    height, width = (int(v) for v in rng.integers(30, 120, 2))
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    pixels[..., label] //= 2
    Image.fromarray(pixels).save(path, quality=85)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A labelled tree of JPEGs and PNGs of mixed sizes: 48 train and 8 test."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for split, count in (("train", 24), ("test", 4)):
        for label, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                write_image(root / split / name / f"{i:03d}.{'png' if i % 3 == 0 else 'jpg'}", rng, label)
    return root


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CSSL_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def shards(folder, tmp_path_factory):
    dest = tmp_path_factory.mktemp("shards") / "out"
    assert cssl(["data", "shard", str(folder), str(dest), "--max-count", "10"]) == 0
    return dest


def test_webdataset_reads_the_shards_back_with_the_files_bytes_and_labels(folder, shards):
    index = build_folder_index(folder, folder.parent / "index-cache")
    names = sorted(os.listdir(shards))
    assert names == [MANIFEST, "test-000000.tar", *(f"train-{i:06d}.tar" for i in range(5))]
    for split, paths, labels in (("train", index.paths, index.labels), ("test", index.test_paths, index.test_labels)):
        urls = [str(shards / n) for n in names if n.startswith(split)]
        samples = list(webdataset.WebDataset(urls, shardshuffle=False))
        assert len(samples) == len(paths)
        for sample, path, label in zip(samples, paths, labels.tolist()):
            ext = path.rsplit(".", 1)[1]
            assert sample[ext] == (folder / path).read_bytes()  # the file itself, not re-encoded
            assert int(sample["cls"]) == label
        counts = [len(list(webdataset.WebDataset([u], shardshuffle=False))) for u in urls]
        assert max(counts) <= 10 and sum(counts) == len(paths)


def test_the_manifest_points_at_each_samples_image_bytes(folder, shards):
    manifest = json.loads((shards / MANIFEST).read_text())
    index = build_folder_index(folder, folder.parent / "index-cache")
    assert manifest["classes"] == list(CLASSES)
    train = manifest["splits"]["train"]
    assert [s["samples"] for s in train["shards"]] == [10, 10, 10, 10, 8]
    samples = train["samples"]
    for i, path in enumerate(index.paths):
        shard = train["shards"][samples["shard"][i]]["name"]
        with open(shards / shard, "rb") as f:
            f.seek(samples["offset"][i])
            assert f.read(samples["size"][i]) == (folder / path).read_bytes()
    assert samples["cls"] == index.labels.tolist()


def test_unlabelled_images_are_sharded_without_classes(tmp_path):
    rng = np.random.default_rng(1)
    for i in range(7):
        (tmp_path / "raw" / f"part{i % 2}").mkdir(parents=True, exist_ok=True)
        write_image(tmp_path / "raw" / f"part{i % 2}" / f"{i}.{'png' if i % 2 else 'jpg'}", rng)
    assert cssl(["data", "shard", str(tmp_path / "raw"), str(tmp_path / "out"), "--shard-size", "1MB"]) == 0
    assert sorted(os.listdir(tmp_path / "out")) == [MANIFEST, "train-000000.tar"]
    samples = list(webdataset.WebDataset([str(tmp_path / "out" / "train-000000.tar")], shardshuffle=False))
    assert len(samples) == 7 and all("cls" not in s for s in samples)
    index = open_dataset("webdataset", tmp_path / "out", image_size=32)
    assert index.classes == [] and index.labels.tolist() == [-1] * 7 and index.test_paths == []


def stream(index, workers, start=0):
    order = torch.randperm(len(index), generator=torch.Generator().manual_seed(1))
    specs = [ViewSpec(32), ViewSpec(16, crop_scale=(0.05, 0.4))]
    return list(stream_batches(StreamBatches(index, order, 16, specs, 7, 3, slice(0, 16)), start, workers, False))


def test_shards_stream_the_same_crops_as_the_folder(folder, shards, tmp_path):
    from_folder = stream(build_folder_index(folder, tmp_path), workers=0)
    from_shards = stream(build_index(shards, tmp_path), workers=2)
    resumed = stream(build_index(shards, tmp_path), workers=2, start=2)
    assert len(from_folder) == len(from_shards) == 3 and len(resumed) == 1
    for (idx_a, crops_a), (idx_b, crops_b) in zip(from_folder, from_shards):
        assert torch.equal(idx_a, idx_b)
        assert all(torch.equal(x, y) for x, y in zip(crops_a, crops_b))
    assert all(torch.equal(x, y) for x, y in zip(from_folder[2][1], resumed[0][1]))


def test_shards_without_a_manifest_are_indexed_from_their_tar_headers(shards, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    for name in os.listdir(shards):
        if name.endswith(".tar"):
            (foreign / name).write_bytes((shards / name).read_bytes())
    written, scanned = build_index(shards, tmp_path / "cache"), build_index(foreign, tmp_path / "cache")
    assert scanned.paths == written.paths and scanned.test_paths == written.test_paths
    assert torch.equal(scanned.labels, written.labels) and scanned.classes == ["0", "1"]
    assert len(list((tmp_path / "cache" / "index").iterdir())) == 1  # cached for the next run
    assert build_index(foreign, tmp_path / "cache").paths == written.paths


def shard_config(data, dataset="webdataset", **overrides):
    keys = {
        "dataset": dataset,
        "data": str(data),
        "data_mode": "stream",
        "image_size": 32,
        "backbone": "small",
        "batch_size": 16,
        "epochs": 2,
        "checkpoint_every": 1,
        "data_workers": 1,
    }
    return build_config("simclr", {**keys, **tiny_heads("simclr"), **overrides})


def test_training_on_shards_equals_the_folders_and_resumes_mid_epoch(tmp_path, folder, shards):
    run = shard_config(shards)  # 3 steps per epoch
    straight = pretrain(run, tmp_path / "straight")
    same = pretrain(shard_config(folder, "imagefolder"), tmp_path / "folder")
    first = pretrain(run, tmp_path / "split", should_stop=stop_after(4))
    assert first.stopped == "cancelled" and first.steps == 4
    second = pretrain(run, tmp_path / "split", resume_from=first.checkpoint)
    assert second.steps == straight.steps == same.steps == 6
    a, b, c = (load_checkpoint(r.checkpoint)["model"] for r in (straight, second, same))
    for key in a:
        assert torch.equal(a[key], b[key]) and torch.equal(a[key], c[key]), key


def test_the_evaluation_set_of_shards_is_the_folders(folder, shards):
    from_shards = load_eval_dataset("webdataset", shards, image_size=32, streamed=False, workers=0)
    from_folder = load_eval_dataset("imagefolder", folder, image_size=32, streamed=True, workers=0)
    assert torch.equal(from_shards.test.images, from_folder.test.images)
    assert torch.equal(from_shards.test.labels, from_folder.test.labels) and from_shards.classes == list(CLASSES)


def test_bad_shard_inputs_are_clear_errors(tmp_path, folder, shards, capsys):
    with pytest.raises(DataError, match="no WebDataset shards at"):
        open_dataset("webdataset", tmp_path)
    with pytest.raises(ConfigError, match="streamed, never decoded into memory"):
        open_dataset("webdataset", shards, data_mode="memory")
    with pytest.raises(DataError, match="reads local files, not s3://bucket/x"):
        open_dataset("imagefolder", "s3://bucket/x", data_mode="stream")
    assert cssl(["data", "shard", str(folder), str(shards)]) == 2
    assert "already holds shards" in capsys.readouterr().err
    assert cssl(["data", "shard", str(folder), str(tmp_path / "o"), "--shard-size", "big"]) == 2
    assert "shard size must be a number of bytes" in capsys.readouterr().err


@pytest.fixture(scope="module")
def bucket():
    """moto's S3 server in a thread, with an empty bucket; the AWS variables point at it."""
    with s3_server("lab-data") as (_, fs):
        yield fs


def test_shards_in_a_bucket_train_and_evaluate(tmp_path, folder, shards, bucket):
    url = "s3://lab-data/cifar-like"
    assert cssl(["data", "shard", str(folder), url, "--max-count", "10"]) == 0
    assert sorted(p.rsplit("/", 1)[1] for p in bucket.ls(url)) == sorted(os.listdir(shards))
    assert cssl(["data", "shard", str(folder), url + "/"]) == 2  # nothing written over them
    index = open_dataset("webdataset", url, image_size=32)
    assert isinstance(index, FileIndex) and index.paths == build_index(shards, tmp_path).paths
    from_bucket = stream(index, workers=2)
    from_disk = stream(build_index(shards, tmp_path), workers=0)
    assert all(torch.equal(x, y) for (_, a), (_, b) in zip(from_bucket, from_disk) for x, y in zip(a, b))
    out = tmp_path / "run"
    args = ["pretrain", "--method", "simclr", "--dataset", "webdataset", "--data", url, "--image-size", "32"]
    args += ["--backbone", "small", "--epochs", "1", "--batch-size", "16", "--set", "data_workers=1"]
    args += ["--evaluate", "knn", "--out", str(out)]
    assert cssl(args) == 0
    assert load_checkpoint(out / "checkpoints" / "last.pt")["streamed"]
