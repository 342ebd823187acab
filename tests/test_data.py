import io
import os
import pickle
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cssl_core.data import (
    ImageDataset,
    ImageSplit,
    class_balanced_subset,
    dataset_names,
    decoded_bytes_limit,
    describe_datasets,
    imagefolder,
    load_dataset,
)
from cssl_core.data import cifar as cifar_module
from cssl_core.errors import ConfigError, DataError

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    """Every load in this file caches under tmp, never in ~/.cache."""
    path = tmp_path / "cache"
    monkeypatch.setenv("CSSL_CACHE_DIR", str(path))
    return path


def write_pickle(path: Path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


@pytest.fixture
def cifar10_batches(tmp_path):
    """A cifar-10-batches-py folder: 5 x 4 train images, 6 test images, bytes keys as in the original."""
    root = tmp_path / "cifar10" / "cifar-10-batches-py"
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batches = {}
    for name, n in [*((f"data_batch_{i}", 4) for i in range(1, 6)), ("test_batch", 6)]:
        batches[name] = {
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"labels": list(rng.integers(0, 10, n)),
        }
        write_pickle(root / name, batches[name])
    write_pickle(root / "batches.meta", {b"label_names": [c.encode() for c in CIFAR10_CLASSES]})
    return root, batches


def save_image(path: Path, colour, size=(40, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, tuple(colour)).save(path)


COLOURS = {"cat": (200, 30, 30), "dog": (30, 200, 30), "emu": (30, 30, 200)}


@pytest.fixture
def image_tree(tmp_path):
    """train/{cat,dog,emu}/ with 3, 2, 2 images of one colour each; test/ with one per class."""
    root = tmp_path / "tree"
    for cls, n in [("cat", 3), ("dog", 2), ("emu", 2)]:
        for i in range(n):
            save_image(root / "train" / cls / f"{i}.png", COLOURS[cls])
        save_image(root / "test" / cls / "0.jpg", COLOURS[cls], size=(24, 50))
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    (root / "train" / "cat" / ".hidden.png").write_bytes(b"AppleDouble junk")
    return root


def make_tar(path: Path, tree: Path, prefix: str = "") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        tar.add(tree, arcname=prefix or ".")
    return path


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def png_bytes(colour=(1, 2, 3), size=(8, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_registry_lists_every_dataset():
    assert dataset_names() == ["cifar10", "cifar100", "stl10", "imagefolder", "webdataset", "digits", "synthetic"]
    described = {d["name"]: d for d in describe_datasets()}
    assert set(described) == set(dataset_names())
    for d in described.values():
        assert set(d) == {"name", "description", "needs_path", "image_size", "resizable"}
    assert described["cifar10"]["needs_path"] and not described["digits"]["needs_path"]
    assert [name for name, d in described.items() if d["resizable"]] == ["imagefolder", "webdataset"]
    assert described["stl10"]["image_size"] == 96 and described["imagefolder"]["image_size"] == 64


def test_unknown_name_lists_known_names():
    with pytest.raises(
        ConfigError, match="known datasets: cifar10, cifar100, stl10, imagefolder, webdataset, digits, synthetic"
    ):
        load_dataset("imagenet")


def test_cifar10_batches_folder_and_its_parent(cifar10_batches):
    root, batches = cifar10_batches
    for path in (root, root.parent):
        data = load_dataset("cifar10", path)
        assert data.classes == CIFAR10_CLASSES
        assert data.train.images.shape == (20, 3, 32, 32) and data.train.images.dtype == torch.uint8
        assert data.test.images.shape == (6, 3, 32, 32) and data.test.labels.dtype == torch.int64
        assert data.image_size == 32 and data.unlabeled is None
    # Row-major channel planes: pixel (c, y, x) of image i is byte c*1024 + y*32 + x.
    raw = batches["data_batch_2"][b"data"]
    assert data.train.images[4, 2, 5, 7] == raw[0, 2 * 1024 + 5 * 32 + 7]
    assert data.train.labels[:4].tolist() == list(batches["data_batch_1"][b"labels"])
    assert data.test.images[5].flatten().tolist() == batches["test_batch"][b"data"][5].tolist()


def test_cifar10_image_size_resizes(cifar10_batches):
    data = load_dataset("cifar10", cifar10_batches[0], image_size=16)
    assert data.train.images.shape == (20, 3, 16, 16) and data.image_size == 16


def test_cifar10_missing_file(cifar10_batches):
    (cifar10_batches[0] / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3"):
        load_dataset("cifar10", cifar10_batches[0])


def test_cifar_pickle_cannot_run_code(cifar10_batches, tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    write_pickle(cifar10_batches[0] / "batches.meta", {b"label_names": Evil()})
    with pytest.raises(DataError, match="batches.meta"):
        load_dataset("cifar10", cifar10_batches[0])
    assert not (tmp_path / "pwned").exists()


def test_cifar100(tmp_path):
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    rng = np.random.default_rng(1)
    names = sorted(f"class_{i:03d}" for i in range(100))
    for split, n in [("train", 12), ("test", 5)]:
        write_pickle(root / split, {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                                    b"fine_labels": list(range(n)), b"coarse_labels": [0] * n})  # fmt: skip
    write_pickle(root / "meta", {b"fine_label_names": [c.encode() for c in names], b"coarse_label_names": []})
    data = load_dataset("cifar100", tmp_path)
    assert data.classes == names
    assert len(data.train) == 12 and len(data.test) == 5
    assert data.test.labels.tolist() == [0, 1, 2, 3, 4]


def test_cifar10_from_image_folder_tar_and_folder_holding_the_tar(image_tree, tmp_path):
    data = load_dataset("cifar10", image_tree)
    assert data.classes == ["cat", "dog", "emu"]
    assert data.image_size == 32
    archive_dir = tmp_path / "shared"
    archive_dir.mkdir()
    archive = make_tar(archive_dir / "tree.tar.gz", image_tree)
    for path in (archive, archive_dir):
        from_tar = load_dataset("cifar10", path)
        assert from_tar.classes == data.classes
        assert torch.equal(from_tar.train.images, data.train.images)
        assert torch.equal(from_tar.test.labels, data.test.labels)


def test_cifar10_missing_path_says_what_to_put_where(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", missing)
    message = str(err.value)
    assert str(missing) in message and "no such file or folder" in message
    assert "cifar-10-batches-py/data_batch_1" in message and ".tar.gz" in message and "download=True" in message


def test_no_path_no_download(tmp_path):
    with pytest.raises(DataError, match="needs a path.*download=True"):
        load_dataset("cifar10")
    with pytest.raises(ConfigError, match="cannot be downloaded"):
        load_dataset("imagefolder", tmp_path, download=True)


def test_imagefolder_tree(image_tree):
    data = load_dataset("imagefolder", image_tree, image_size=16)
    assert data.classes == ["cat", "dog", "emu"]
    assert data.train.images.shape == (7, 3, 16, 16) and data.train.images.is_contiguous()
    assert data.train.labels.tolist() == [0, 0, 0, 1, 1, 2, 2]
    assert data.test.labels.tolist() == [0, 1, 2]
    # One colour per class survives resize and centre crop (JPEG test images: approximately).
    for split in (data.train, data.test):
        for image, label in zip(split.images, split.labels):
            expected = torch.tensor(COLOURS[data.classes[label]], dtype=torch.float32)
            assert (image.float().mean((1, 2)) - expected).abs().max() < 4


def test_imagefolder_default_size_and_parent_folder(image_tree):
    data = load_dataset("imagefolder", image_tree.parent)
    assert data.image_size == 64 and data.train.images.shape == (7, 3, 64, 64)


def test_fit_square_centre_crops_the_long_side():
    image = Image.new("RGB", (30, 10), (0, 0, 0))
    image.paste((255, 255, 255), (10, 0, 20, 10))  # a white middle third
    out = np.asarray(imagefolder.fit_square(image, 10))
    assert out.shape == (10, 10, 3) and out.min() > 200


def test_tar_with_top_folder(image_tree, tmp_path):
    archive = make_tar(tmp_path / "wrapped.tgz", image_tree, prefix="my-data")
    data = load_dataset("imagefolder", archive, image_size=8)
    assert data.classes == ["cat", "dog", "emu"] and len(data.train) == 7 and len(data.test) == 3


def test_tar_member_escaping_its_folder_is_refused(tmp_path):
    for evil in ("../evil.jpg", "train/cat/../../../evil.jpg", "/etc/evil.jpg"):
        archive = tmp_path / "evil.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            add_member(tar, "train/cat/0.png", png_bytes())
            add_member(tar, evil, png_bytes())
        with pytest.raises(DataError, match="escapes its folder") as err:
            load_dataset("imagefolder", archive)
        assert evil in str(err.value)


def test_corrupt_image_is_named(image_tree, tmp_path):
    (image_tree / "train" / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match=r"train/dog/broken\.png"):
        load_dataset("imagefolder", image_tree)
    archive = make_tar(tmp_path / "broken.tar.gz", image_tree)
    with pytest.raises(DataError, match=r"broken\.tar\.gz:train/dog/broken\.png"):
        load_dataset("imagefolder", archive)


def test_empty_class_folder_is_named(image_tree, tmp_path):
    (image_tree / "train" / "fox").mkdir()
    with pytest.raises(DataError, match=r"train/fox holds no images"):
        load_dataset("imagefolder", image_tree)
    with pytest.raises(DataError, match=r"train/fox holds no images"):
        load_dataset("imagefolder", make_tar(tmp_path / "empty.tar.gz", image_tree))


def test_missing_test_folder_explains_layout(image_tree):
    for image in (image_tree / "test").rglob("*.*"):
        image.unlink()
    for folder in sorted((image_tree / "test").rglob("*"), reverse=True):
        folder.rmdir()
    (image_tree / "test").rmdir()
    with pytest.raises(
        DataError, match=r"no test/<class>/<image> files .*train/<class>/<image> and test/<class>/<image>"
    ):
        load_dataset("imagefolder", image_tree)


@pytest.mark.parametrize("link", ["file", "class folder", "split folder"])
def test_links_inside_an_image_folder_are_refused_not_followed(image_tree, tmp_path, link):
    outside = tmp_path / "outside"
    save_image(outside / "secret.png", (1, 2, 3))
    if link == "file":
        (image_tree / "test" / "cat" / "1.png").symlink_to(outside / "secret.png")
        name = "test/cat/1.png"
    elif link == "class folder":
        (image_tree / "test" / "dog" / "more").symlink_to(outside, target_is_directory=True)
        name = "test/dog/more"
    else:
        os.rename(image_tree / "test", outside / "test")
        (image_tree / "test").symlink_to(outside / "test", target_is_directory=True)
        name = "test"
    with pytest.raises(DataError, match=rf"{image_tree}/{name} is a link; links inside an image folder are not "):
        load_dataset("imagefolder", image_tree, image_size=8)


def test_a_file_swapped_for_a_link_after_the_walk_is_not_read(image_tree, tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(png_bytes())
    victim = image_tree / "train" / "dog" / "0.png"
    victim.unlink()
    victim.symlink_to(secret)
    with pytest.raises(DataError, match="is a link"):
        imagefolder._read_no_links(victim)


def test_a_data_set_over_the_decoded_bytes_limit_is_refused_before_decoding(image_tree, monkeypatch):
    # 10 images of 16 x 16 x 3 = 7,680 bytes decoded: under a limit of that, over one byte less.
    with decoded_bytes_limit(10 * 16 * 16 * 3, "CSSL_MAX_DECODED_BYTES"):
        assert len(load_dataset("imagefolder", image_tree, image_size=16).train) == 7
    decoded = []
    monkeypatch.setattr(imagefolder, "_decode_image", lambda *args: decoded.append(args))
    with decoded_bytes_limit(10 * 16 * 16 * 3 - 1, "CSSL_MAX_DECODED_BYTES"), pytest.raises(DataError) as error:
        load_dataset("imagefolder", image_tree, image_size=17)
    assert str(error.value) == (
        f"{image_tree}/: 10 images of 17x17 take 8,670 bytes decoded in memory, more than the 7,679 bytes allowed "
        "(CSSL_MAX_DECODED_BYTES); use fewer images or a smaller image size, or raise CSSL_MAX_DECODED_BYTES"
    )
    assert decoded == []  # refused before the first image was read
    # A cached copy is held in memory all the same.
    with decoded_bytes_limit(1000, "CSSL_MAX_DECODED_BYTES"), pytest.raises(DataError, match="the decoded images take"):
        load_dataset("imagefolder", image_tree, image_size=16)
    with decoded_bytes_limit(None):
        assert len(load_dataset("imagefolder", image_tree, image_size=16).test) == 3


def test_cifar_counts_its_images_against_the_limit(cifar10_batches):
    root, _ = cifar10_batches  # 26 images
    limit = decoded_bytes_limit(26 * 64 * 64 * 3 - 1, "CSSL_MAX_DECODED_BYTES")
    with limit, pytest.raises(DataError, match="26 images of 64x64"):
        load_dataset("cifar10", root, image_size=64)


def test_not_an_image_folder(tmp_path):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(DataError, match="no images at .*a folder of images at any depth"):
        load_dataset("imagefolder", tmp_path / "stuff")
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(b"not a tar")
    with pytest.raises(DataError, match="cannot read archive .*garbage.tar.gz"):
        load_dataset("imagefolder", garbage)


def test_stl10_binary(tmp_path):
    root = tmp_path / "stl10_binary"
    root.mkdir()
    rng = np.random.default_rng(2)
    images = {split: rng.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8) for split, n in
              [("train", 3), ("test", 2), ("unlabeled", 4)]}  # fmt: skip
    for split, array in images.items():
        # The file stores each channel column by column: axes (N, C, W, H).
        (root / f"{split}_X.bin").write_bytes(array.transpose(0, 1, 3, 2).tobytes())
    (root / "train_y.bin").write_bytes(bytes([1, 10, 4]))
    (root / "test_y.bin").write_bytes(bytes([2, 3]))
    names = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
    (root / "class_names.txt").write_text("\n".join(names) + "\n")

    data = load_dataset("stl10", tmp_path)
    assert data.classes == names and data.image_size == 96
    assert torch.equal(data.train.images, torch.from_numpy(images["train"]))
    assert torch.equal(data.unlabeled.images, torch.from_numpy(images["unlabeled"]))
    assert data.train.labels.tolist() == [0, 9, 3] and data.test.labels.tolist() == [1, 2]
    assert data.unlabeled.labels.tolist() == [-1] * 4
    pretrain = data.pretrain_split()
    assert len(pretrain) == 7 and pretrain.labels.tolist() == [0, 9, 3, -1, -1, -1, -1]

    small = load_dataset("stl10", root, image_size=32)
    assert small.train.images.shape == (3, 3, 32, 32) and small.unlabeled.images.shape == (4, 3, 32, 32)
    # All three splits count against a decoded-bytes limit: 9 images.
    limit = decoded_bytes_limit(9 * 48 * 48 * 3 - 1, "CSSL_MAX_DECODED_BYTES")
    with limit, pytest.raises(DataError, match="9 images of 48x48"):
        load_dataset("stl10", root, image_size=48)


def test_second_load_reuses_the_cache(image_tree, cache_dir, monkeypatch):
    first = load_dataset("imagefolder", image_tree, image_size=16)
    entries = list((cache_dir / "data").iterdir())
    assert len(entries) == 1 and entries[0].suffix == ".npz"  # no temporary files left behind

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(imagefolder, "_decode_image", no_decoding)
    second = load_dataset("imagefolder", image_tree, image_size=16)
    assert second.classes == first.classes
    assert torch.equal(second.train.images, first.train.images)
    assert torch.equal(second.test.labels, first.test.labels)

    # Another image size, or a changed file, is another cache entry.
    with pytest.raises(AssertionError, match="decoded again"):
        load_dataset("imagefolder", image_tree, image_size=8)
    save_image(image_tree / "train" / "dog" / "new.png", COLOURS["dog"])
    with pytest.raises(AssertionError, match="decoded again"):
        load_dataset("imagefolder", image_tree, image_size=16)


def test_damaged_cache_is_decoded_again(cifar10_batches, tmp_path, monkeypatch):
    cache = tmp_path / "elsewhere"
    first = load_dataset("cifar10", cifar10_batches[0], cache_dir=cache)
    (entry,) = (cache / "data").iterdir()
    entry.write_bytes(entry.read_bytes()[:1000])
    calls = []
    real = cifar_module._unpickle
    monkeypatch.setattr(cifar_module, "_unpickle", lambda path: calls.append(path) or real(path))
    again = load_dataset("cifar10", cifar10_batches[0], cache_dir=cache)
    assert calls and torch.equal(again.train.images, first.train.images)


def test_digits():
    data = load_dataset("digits")
    assert data.classes == [str(d) for d in range(10)]
    assert data.train.images.shape == (1497, 3, 32, 32) and data.test.images.shape == (300, 3, 32, 32)
    assert data.train.images.dtype == torch.uint8 and data.train.labels.dtype == torch.int64
    assert data.train.images.max() == 255 and data.train.images.min() == 0
    assert torch.equal(data.train.images[:, 0], data.train.images[:, 2])  # grey in three channels
    assert all(29 <= c <= 31 for c in torch.bincount(data.test.labels).tolist())  # stratified
    again = load_dataset("digits")
    assert torch.equal(again.test.images, data.test.images)


def test_synthetic_is_fast_deterministic_and_learnable():
    start = time.perf_counter()
    data = load_dataset("synthetic")
    assert time.perf_counter() - start < 0.5
    assert len(data.classes) == 10 and data.image_size == 32
    assert data.train.images.shape == (500, 3, 32, 32) and data.test.images.shape == (200, 3, 32, 32)
    assert data.train.images.dtype == torch.uint8 and data.train.labels.dtype == torch.int64
    assert torch.bincount(data.train.labels).tolist() == [50] * 10
    assert torch.equal(load_dataset("synthetic").train.images, data.train.images)
    assert not torch.equal(data.train.images[:200], data.test.images)
    # Nearest class mean on raw pixels is far above chance (10%).
    train = data.train.images.flatten(1).float()
    means = torch.stack([train[data.train.labels == c].mean(0) for c in range(10)])
    predicted = torch.cdist(data.test.images.flatten(1).float(), means).argmin(1)
    assert (predicted == data.test.labels).float().mean() > 0.5
    assert load_dataset("synthetic", image_size=48).train.images.shape == (500, 3, 48, 48)


def make_split(labels) -> ImageSplit:
    labels = torch.as_tensor(labels, dtype=torch.int64)
    images = torch.arange(len(labels), dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, 2, 2).contiguous()
    return ImageSplit(images, labels)


def test_split_subset_and_validation():
    split = make_split([0, 1, 2, 0, 1])
    sub = split.subset([4, 0])
    assert sub.labels.tolist() == [1, 0] and sub.images[:, 0, 0, 0].tolist() == [4, 0]
    assert len(split.subset(torch.tensor([True, False, True, False, False]))) == 2
    with pytest.raises(ValueError, match="uint8"):
        ImageSplit(torch.zeros(2, 3, 4, 4), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="labels"):
        ImageSplit(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64))


def test_pretrain_split_without_unlabeled_is_train():
    split = make_split([0, 1])
    data = ImageDataset("x", ["a", "b"], split, split)
    assert data.pretrain_split() is split


def test_class_balanced_subset():
    split = make_split(torch.arange(250) % 10)  # images hold their index, so at most 256
    sub = class_balanced_subset(split, 105, seed=3)
    counts = torch.bincount(sub.labels, minlength=10).tolist()
    assert len(sub) == 105 and sorted(counts) == [10] * 5 + [11] * 5
    again = class_balanced_subset(split, 105, seed=3)
    assert torch.equal(again.images, sub.images)
    other = class_balanced_subset(split, 105, seed=4)
    assert not torch.equal(other.images, sub.images)
    index = sub.images[:, 0, 0, 0]
    assert torch.equal(index, index.sort().values)  # original order kept


def test_class_balanced_subset_short_class_and_too_many():
    split = make_split([0] * 50 + [1] * 3)
    sub = class_balanced_subset(split, 20, seed=0)
    assert torch.bincount(sub.labels).tolist() == [17, 3]
    assert len(class_balanced_subset(split, 53, seed=0)) == 53
    with pytest.raises(DataError, match="54 images"):
        class_balanced_subset(split, 54, seed=0)
    with pytest.raises(ConfigError):
        class_balanced_subset(split, 0, seed=0)


def test_real_cifar10(cifar10_dataset):
    data = cifar10_dataset
    assert data.classes == CIFAR10_CLASSES
    assert data.train.images.shape == (50_000, 3, 32, 32) and data.test.images.shape == (10_000, 3, 32, 32)
    assert torch.bincount(data.train.labels).tolist() == [5000] * 10
    assert torch.bincount(data.test.labels).tolist() == [1000] * 10
    means = data.train.images.float().mean((0, 2, 3)) / 255
    torch.testing.assert_close(means, torch.tensor([0.491, 0.482, 0.447]), atol=0.003, rtol=0)


def test_image_size_sets_the_side_of_a_folders_images_and_its_recipe(image_tree, tmp_path):
    from tiny import tiny_heads

    from cssl_core.config import build_config
    from cssl_core.evaluation import evaluate_checkpoint
    from cssl_core.train import load_checkpoint, pretrain

    assert build_config("simclr", {"dataset": "imagefolder", "image_size": 96}).recipe == "paper"
    assert build_config("simclr", {"dataset": "imagefolder", "image_size": 48}).recipe == "small_images"
    assert build_config("simclr", {"dataset": "cifar10", "image_size": 32}).image_size == 32
    with pytest.raises(ConfigError, match="cifar10 images are 32 px; image_size 224 applies to .*imagefolder"):
        build_config("simclr", {"dataset": "cifar10", "image_size": 224})
    with pytest.raises(ConfigError, match=r"image_size must be in \[8, 1024\], got 4"):
        build_config("simclr", {"dataset": "imagefolder", "image_size": 4})

    overrides = {"dataset": "imagefolder", "data": str(image_tree), "image_size": 40, "backbone": "small"}
    config = build_config("simclr", {**overrides, **tiny_heads("simclr"), "batch_size": 2, "epochs": 1})
    result = pretrain(config, tmp_path / "run")
    state = load_checkpoint(result.checkpoint)
    assert state["image_size"] == 40 and state["config"]["image_size"] == 40
    assert evaluate_checkpoint(result.checkpoint, "knn", k=3).num_test == 3  # at the checkpoint's 40 px


@pytest.fixture
def unlabelled_tree(tmp_path):
    """Five images of a lab's own, at several depths, with no classes and no test split."""
    root = tmp_path / "photos"
    for i, rel in enumerate(["a.png", "2024/b.jpg", "2024/june/c.png", "2025/x/y/z/d.png", "e.webp"]):
        save_image(root / rel, (40 * i, 10, 10))
    (root / "README.txt").write_text("not an image")
    (root / ".cache" / "thumb.png").parent.mkdir()
    (root / ".cache" / "thumb.png").write_bytes(png_bytes())  # hidden: skipped
    return root


def test_a_folder_of_unlabelled_images_at_any_depth_is_a_pretraining_set(unlabelled_tree, tmp_path):
    data = load_dataset("imagefolder", unlabelled_tree, image_size=16)
    assert data.classes == [] and not data.labelled
    assert len(data.train) == 0 and len(data.test) == 0 and data.image_size == 16
    assert data.unlabeled.images.shape == (5, 3, 16, 16) and data.unlabeled.labels.tolist() == [-1] * 5
    # Sorted by path: 2024/b.jpg, 2024/june/c.png, 2025/x/y/z/d.png, a.png, e.webp.
    reds = data.pretrain_split().images.float().mean((2, 3))[:, 0].round().tolist()
    assert reds == [40, 80, 120, 0, 160]
    archive = make_tar(tmp_path / "photos.tar.gz", unlabelled_tree, prefix="photos")
    assert torch.equal(load_dataset("imagefolder", archive, image_size=16).unlabeled.images, data.unlabeled.images)
    with pytest.raises(DataError, match="has no labels.*eval_dataset"):
        data.require_labels("the knn protocol")


def test_a_list_of_images_is_a_pretraining_set(unlabelled_tree):
    listing = unlabelled_tree / "chosen.txt"
    listing.write_text("# the good ones\n2024/june/c.png\n\na.png\n")
    data = load_dataset("imagefolder", listing, image_size=8)
    assert len(data.unlabeled) == 2 and data.unlabeled.images.float().mean((2, 3))[:, 0].round().tolist() == [80, 0]
    for bad, message in [
        ("../elsewhere.png", "leaves the list's folder"),
        ("/etc/x.png", "leaves"),
        ("notes.md", "not an image"),
    ]:
        listing.write_text(bad + "\n")
        with pytest.raises(DataError, match=message):
            load_dataset("imagefolder", listing, image_size=8)
    listing.write_text("# nothing\n")
    with pytest.raises(DataError, match="names no images"):
        load_dataset("imagefolder", listing, image_size=8)


def test_which_layouts_have_labels(image_tree, unlabelled_tree, tmp_path):
    from cssl_core.data import dataset_has_labels, locate_dataset

    labelled_tar = make_tar(tmp_path / "l.tar.gz", image_tree, prefix="data")
    unlabelled_tar = make_tar(tmp_path / "u.tar.gz", unlabelled_tree)
    (unlabelled_tree / "list.txt").write_text("a.png\n")
    cases = [(image_tree, True), (labelled_tar, True), (unlabelled_tree, False), (unlabelled_tar, False),
             (unlabelled_tree / "list.txt", False)]  # fmt: skip
    for path, labelled in cases:
        assert dataset_has_labels("imagefolder", locate_dataset("imagefolder", path)) is labelled, path
    # A labelled tree missing its train/ folder is an error, not a folder of unlabelled images.
    for image in (image_tree / "train").rglob("*.*"):
        image.unlink()
    for folder in sorted((image_tree / "train").rglob("*"), reverse=True):
        folder.rmdir()
    (image_tree / "train").rmdir()
    with pytest.raises(DataError, match="has test/ but no train/"):
        load_dataset("imagefolder", image_tree)
