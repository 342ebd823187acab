"""Image-folder trees, on disk or inside a tar archive, labelled or not.

Labelled (torchvision's ``ImageFolder``, one tree per split)::

    train/<class>/<image>     e.g. train/cat/0001.jpg
    test/<class>/<image>

Unlabelled, for pretraining only: a folder (or archive) without ``train/`` whose images sit
at any depth, or a ``.txt`` file listing images one per line, relative to the file's folder
(they must lie inside it). Its images form the ``unlabeled`` split; kNN and the other
protocols then need a labelled evaluation set.

Class names are the ``train/`` folder names in sorted order. Any format Pillow reads
is accepted; files whose names start with ``.`` and non-image files are skipped. Links
inside the tree (to files or folders) are refused rather than followed, so that a tree
reads only its own files. Every
image is converted to RGB, its short side resized to ``image_size`` and centre-cropped
to a square. Archives (``.tar``, ``.tar.gz``, ``.tgz``, ...) are read in memory with
``tarfile``; nothing is extracted to disk.
"""

from __future__ import annotations

import errno
import io
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cssl_core.data.budget import check_decoded_bytes
from cssl_core.data.cache import DecodedDataset, SplitArrays
from cssl_core.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff")
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
SPLITS = ("train", "test")
LAYOUT = "train/<class>/<image> and test/<class>/<image>"


def is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def is_image_list(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() == ".txt"


def find_tree(path: Path) -> Path | None:
    """The folder holding ``train/``, the archive, the list of images, or the folder of
    unlabelled images that ``path`` points at; else None.

    Accepts the tree itself, a folder holding exactly one such tree, an archive, a folder
    holding exactly one archive (and nothing else), a ``.txt`` list, or a folder with images
    at any depth.
    """
    if path.is_file():
        return path if is_archive(path) or is_image_list(path) else None
    if not path.is_dir():
        return None
    if (path / "train").is_dir():
        return path
    children = [c for c in path.iterdir() if not c.name.startswith(".")]
    trees = [c for c in children if c.is_dir() and (c / "train").is_dir()]
    if len(trees) == 1:
        return trees[0]
    archives = [c for c in children if c.is_file() and is_archive(c)]
    if not trees and len(archives) == 1 and len(children) == 1:
        return archives[0]
    if not trees and _has_images(path):
        return path
    return None


def _has_images(root: Path) -> bool:
    for _parent, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        if any(_is_image(n) for n in names):
            return True
    return False


def has_labels(tree: Path) -> bool:
    """Whether a located tree (:func:`locate`) is the labelled layout, read from its names only."""
    if is_image_list(tree):
        return False
    if tree.is_dir():
        return (tree / "train").is_dir()
    try:
        with tarfile.open(tree) as tar:
            names = [_member_path(name, tree) for name in tar.getnames()]
    except (tarfile.TarError, OSError, EOFError):
        return True  # decoding will say what is wrong with it
    return _archive_root(names, tree) is not None


def locate(path: Path) -> Path:
    tree = find_tree(path)
    if tree is None:
        raise DataError(
            f"no images at {path}: expected {path}/train/<class>/<image> and {path}/test/<class>/<image> "
            f"(labelled), a folder of images at any depth (unlabelled, for pretraining), a .tar.gz of "
            f"either, or a .txt file listing images"
        )
    return tree


def decode(source: Path, image_size: int) -> DecodedDataset:
    """Decode a tree, an archive of one or a list of images; images come out
    ``(N, 3, image_size, image_size)``."""
    if is_image_list(source):
        folder = source.parent
        read = lambda rel: _read_no_links(folder / rel)  # noqa: E731
        return _decode_unlabelled(_read_list(source), read, image_size, f"{folder}/")
    if source.is_file():
        files, dirs, root = _read_archive(source)
        if root is None:
            return _decode_unlabelled(sorted(files), files.pop, image_size, where=f"{source}:")
        return _decode_tree(list(files), dirs, files.pop, image_size, where=f"{source}:{root}")
    if not (source / "train").is_dir():
        if (source / "test").is_dir():
            raise DataError(f"{source} has test/ but no train/: a labelled image folder needs {LAYOUT}")
        files = sorted(f for f in _walk_all(source) if _is_image(f))
        return _decode_unlabelled(files, lambda rel: _read_no_links(source / rel), image_size, where=f"{source}/")
    files, dirs = _walk(source)
    return _decode_tree(files, dirs, lambda rel: _read_no_links(source / rel), image_size, where=f"{source}/")


def _walk_all(root: Path) -> list[str]:
    """Every file under ``root`` (hidden ones and links refused or skipped as in :func:`_walk`)."""
    files = []
    for parent, subdirs, names in os.walk(root):
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        rel_parent = Path(parent).relative_to(root).as_posix()
        for name in subdirs + names:
            if not name.startswith(".") and os.path.islink(os.path.join(parent, name)):
                raise _link_error(Path(parent, name))
        files.extend(n if rel_parent == "." else f"{rel_parent}/{n}" for n in names)
    return files


def _read_list(listing: Path) -> list[str]:
    """The images a ``.txt`` file names, one per line (blank lines and ``#`` comments skipped),
    as paths relative to its folder; one that leaves the folder is refused."""
    names = []
    for number, line in enumerate(listing.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = [p for p in line.replace("\\", "/").split("/") if p not in ("", ".")]
        if line.startswith(("/", "\\")) or ".." in parts:
            raise DataError(f"{listing}:{number}: {line!r} leaves the list's folder; name images in {listing.parent}")
        if not _is_image(line):
            raise DataError(f"{listing}:{number}: {line!r} is not an image file ({', '.join(IMAGE_EXTENSIONS)})")
        names.append("/".join(parts))
    if not names:
        raise DataError(f"{listing} names no images: write one image path per line, relative to its folder")
    return names


def _decode_unlabelled(files: list[str], read: Callable[[str], bytes], image_size: int, where: str) -> DecodedDataset:
    if not files:
        raise DataError(f"no images in {where}")
    check_decoded_bytes(len(files), image_size, where)
    empty = SplitArrays(np.empty((0, 3, image_size, image_size), np.uint8), np.empty(0, np.int64))
    images = _decode_items([(f, -1) for f in files], read, image_size, where)
    return DecodedDataset(classes=[], train=empty, test=empty, unlabeled=images)


def fit_square(image: Image.Image, size: int) -> Image.Image:
    """Resize the short side to ``size``, then centre-crop to ``size`` x ``size``."""
    w, h = image.size
    if (w, h) == (size, size):
        return image
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return image.crop((left, top, left + size, top + size))


def resize_arrays(images: np.ndarray, size: int, chunk: int = 2048) -> np.ndarray:
    """Bilinear (antialiased) resize of square uint8 images ``(N, 3, H, H)`` to ``(N, 3, size, size)``."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = np.empty((len(images), images.shape[1], size, size), dtype=np.uint8)
    for start in range(0, len(images), chunk):
        batch = torch.from_numpy(np.ascontiguousarray(images[start : start + chunk])).float()
        batch = F.interpolate(batch, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out[start : start + chunk] = batch.round_().clamp_(0, 255).to(torch.uint8).numpy()
    return out


def _walk(root: Path) -> tuple[list[str], set[str]]:
    files, dirs = [], set()
    for split in SPLITS:
        if (root / split).is_symlink():
            raise _link_error(root / split)
        for parent, subdirs, names in os.walk(root / split):
            rel_parent = Path(parent).relative_to(root).as_posix()
            for name in subdirs + names:
                if not name.startswith(".") and os.path.islink(os.path.join(parent, name)):
                    raise _link_error(Path(parent, name))
            dirs.update(f"{rel_parent}/{d}" for d in subdirs)
            files.extend(f"{rel_parent}/{n}" for n in names)
    return files, dirs


def _link_error(path: Path) -> DataError:
    return DataError(
        f"{path} is a link; links inside an image folder are not followed: put the files themselves in the folder"
    )


def _read_no_links(path: Path) -> bytes:
    """The file's bytes; a link put in its place after the walk is refused, not followed."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _link_error(path) from None
        raise
    with os.fdopen(fd, "rb") as f:
        return f.read()


def _read_archive(archive: Path) -> tuple[dict[str, bytes], set[str], str | None]:
    """Image bytes by path relative to the tree's root, the folders seen, and that root (None:
    no labelled tree; the paths are the archive's own)."""
    entries: dict[str, bytes] = {}
    dirs: set[str] = set()
    try:
        with tarfile.open(archive) as tar:
            for member in tar:
                name = _member_path(member.name, archive)
                if member.isdir():
                    dirs.add(name)
                elif member.isfile() and _is_image(name):
                    entries[name] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"cannot read archive {archive}: {exc}; check that the file is a complete tar archive") from exc
    root = _archive_root(list(entries) + list(dirs), archive)
    if root:
        entries = {k[len(root) :]: v for k, v in entries.items() if k.startswith(root)}
        dirs = {d[len(root) :] for d in dirs if d.startswith(root)}
    return entries, dirs, root


def _member_path(name: str, archive: Path) -> str:
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
        raise DataError(f"archive {archive} has a member that escapes its folder: {name!r}; refusing to read it")
    return "/".join(parts)


def _archive_root(names: list[str], archive: Path) -> str | None:
    """'' when ``train/`` sits at the top of the archive, ``'<folder>/'`` when it sits in one
    folder, None when there is no ``train/`` (unlabelled images)."""
    tops = {n.split("/", 1)[0] for n in names}
    if tops & set(SPLITS):
        return ""
    if len(tops) == 1:
        (top,) = tops
        if any(n.startswith(f"{top}/train/") for n in names):
            return f"{top}/"
    return None


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not any(p.startswith(".") for p in name.split("/"))


def _decode_tree(
    files: list[str], dirs: set[str], read: Callable[[str], bytes], image_size: int, where: str
) -> DecodedDataset:
    classes, items = split_items(files, dirs, where)
    check_decoded_bytes(sum(map(len, items.values())), image_size, where)
    splits = {split: _decode_items(items[split], read, image_size, where) for split in SPLITS}
    return DecodedDataset(classes=classes, train=splits["train"], test=splits["test"])


def split_items(files: list[str], dirs: set[str], where: str) -> tuple[list[str], dict[str, list[tuple[str, int]]]]:
    """The class names of a labelled tree's files and folders, and each split's images as
    ``(path, label)`` in class order, then name order; a tree out of :data:`LAYOUT` is refused."""
    by_split: dict[str, dict[str, list[str]]] = {split: {} for split in SPLITS}
    for d in dirs:
        parts = d.split("/")
        if len(parts) == 2 and parts[0] in by_split and not parts[1].startswith("."):
            by_split[parts[0]].setdefault(parts[1], [])
    for f in files:
        parts = f.split("/")
        if len(parts) >= 3 and parts[0] in by_split and _is_image(f):
            by_split[parts[0]].setdefault(parts[1], []).append(f)

    for split in SPLITS:
        if not by_split[split]:
            raise DataError(f"no {split}/<class>/<image> files in {where}: an image folder needs {LAYOUT}")
        for cls, images in by_split[split].items():
            if not images:
                raise DataError(f"class folder {where}{split}/{cls} holds no images; add images or remove the folder")
    classes = sorted(by_split["train"])
    unknown = sorted(set(by_split["test"]) - set(classes))
    if unknown:
        raise DataError(f"{where}test/ has classes missing from train/: {', '.join(unknown)}")

    items = {
        split: [(f, label) for label, cls in enumerate(classes) for f in sorted(by_split[split].get(cls, []))]
        for split in SPLITS
    }
    return classes, items


def _decode_items(items: list[tuple[str, int]], read: Callable[[str], bytes], size: int, where: str) -> SplitArrays:
    images = np.empty((len(items), size, size, 3), dtype=np.uint8)  # HWC as Pillow gives it
    for i, (rel, _) in enumerate(items):
        images[i] = _decode_image(read, rel, size, f"{where}{rel}")
    labels = np.array([label for _, label in items], dtype=np.int64)
    return SplitArrays(np.ascontiguousarray(images.transpose(0, 3, 1, 2)), labels)


def _decode_image(read: Callable[[str], bytes], rel: str, size: int, name: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(read(rel))) as image:
            if min(image.size) >= 2 * size:
                image.draft("RGB", (size, size))  # JPEG: decode at a reduced scale, much faster
            image.load()
            rgb = image if image.mode == "RGB" else image.convert("RGB")
            return np.asarray(fit_square(rgb, size))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot decode image {name}: {exc}; replace or remove the file") from exc
