"""WebDataset tar shards: written from an image folder, streamed by byte range.

:func:`write_shards` turns an image folder (labelled or not, :mod:`.stream`'s :class:`FileIndex`)
into shards ``train-000000.tar``, ``test-000000.tar``, ... with the ``webdataset`` library's
``ShardWriter``. A sample is ``<key>.<ext>`` (the original file's bytes, not re-encoded) and, when
labelled, ``<key>.cls`` (the class index). Next to the shards, :data:`MANIFEST` lists the classes,
each split's shards and, per sample, the shard, byte offset and size of its image member.

Reading (:func:`build_index`) gives a :class:`FileIndex` whose entries are those byte ranges and
whose reader is a :class:`ShardReader`: a loader process reads sample ``i`` alone (a local file by
``os.pread``, a URL by ``fs.cat_file(path, start, end)``), so streamed shards keep the folder's
order, crops and exact resume. Shards not written here (no manifest) are indexed once by reading
their tar headers, cached under ``<cache_dir>/index/``. ``root`` is a folder or an fsspec URL
(``s3://bucket/prefix``; S3's endpoint and credentials from the ``AWS_*`` variables).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import re
import tarfile
import tempfile
from pathlib import Path

import fsspec
import torch

from cssl_core.data import imagefolder
from cssl_core.data.stream import FileIndex
from cssl_core.errors import ConfigError, DataError

log = logging.getLogger(__name__)

MANIFEST = "cssl-shards.json"
MANIFEST_FORMAT = 1
INDEX_FORMAT = 1
SPLITS = ("train", "test")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(|b|kb|mb|gb|tb)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}


def is_url(location: str | os.PathLike) -> bool:
    return "://" in str(location)


def parse_size(text: str) -> int:
    """``"1GB"``, ``"500MB"``, ``"4096"`` -> bytes (decimal units)."""
    match = _SIZE.match(text)
    if match is None:
        raise ConfigError(f"shard size must be a number of bytes with an optional unit (KB, MB, GB), got {text!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def _entry(shard: str, offset: int, size: int, name: str) -> str:
    # Tab-separated: a shard's name, its member's byte range, and the member's name (for its suffix).
    return f"{shard}\t{offset}\t{size}\t{name}"


class ShardReader:
    """The bytes of an entry ``shard\\toffset\\tsize\\tname`` of the shards at ``root``: one read
    of that range. Picklable; a URL's filesystem is made in the process that reads."""

    def __init__(self, root: Path | str):
        self.root = root if is_url(root) else Path(root)
        self._fs, self._pid, self._files = None, None, {}

    def __getstate__(self) -> dict:
        return {"root": self.root}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["root"])

    def __call__(self, entry: str) -> bytes:
        shard, offset, size, _ = entry.split("\t")
        start, size = int(offset), int(size)
        if os.getpid() != self._pid:  # a forked loader process opens its own
            self._fs, self._pid, self._files = None, os.getpid(), {}
        try:
            if isinstance(self.root, Path):
                fd = self._files.get(shard)
                if fd is None:
                    fd = self._files[shard] = os.open(self.root / shard, os.O_RDONLY)
                data = os.pread(fd, size, start)  # no shared file position between loader processes
            else:
                if self._fs is None:
                    self._fs, _ = fsspec.core.url_to_fs(self.root)
                data = self._fs.cat_file(f"{self.root.rstrip('/')}/{shard}", start=start, end=start + size)
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read {shard} bytes {start}+{size} at {self.root}: {exc}") from exc
        if len(data) != size:
            raise DataError(
                f"{self.root}/{shard} ends before byte {start + size}: the shard changed since it was indexed?"
            )
        return data


def _filesystem(root: str) -> tuple[fsspec.AbstractFileSystem, str]:
    return fsspec.core.url_to_fs(root, use_listings_cache=False)


def _listing(root: Path | str) -> dict[str, dict]:
    """Name -> details of the files directly under ``root`` (a folder or URL); {} when absent."""
    if isinstance(root, Path):
        if not root.is_dir():
            return {}
        return {
            e.name: {"size": e.stat().st_size, "mtime": e.stat().st_mtime_ns} for e in os.scandir(root) if e.is_file()
        }
    fs, path = _filesystem(root)
    try:
        entries = fs.ls(path, detail=True)
    except (FileNotFoundError, NotADirectoryError):
        return {}
    return {
        posixpath.basename(e["name"].rstrip("/")): {
            "size": e.get("size"),
            "etag": e.get("ETag") or e.get("LastModified"),
        }
        for e in entries
        if e.get("type") == "file"
    }


def locate(path: Path | str) -> Path | str:
    """The shards at ``path`` (a folder or URL holding :data:`MANIFEST` or ``*.tar`` shards)."""
    root = str(path).rstrip("/") if is_url(path) else Path(path)
    names = _listing(root)
    if MANIFEST not in names and not any(n.endswith(".tar") for n in names):
        raise DataError(
            f"no WebDataset shards at {path}: expected {MANIFEST} or *.tar shards there "
            f"(cssl data shard SRC DEST writes them from an image folder)"
        )
    return root


def has_labels(root: Path | str) -> bool:
    names = _listing(root)
    if MANIFEST in names:
        return bool(_read_text_json(root, MANIFEST)["classes"])
    return any(n.startswith("test-") and n.endswith(".tar") for n in names)


def _read_text_json(root: Path | str, name: str) -> dict:
    if isinstance(root, Path):
        return json.loads((root / name).read_text())
    fs, path = _filesystem(root)
    return json.loads(fs.cat_file(f"{path}/{name}"))


def build_index(root: Path | str, cache_dir: Path) -> FileIndex:
    """The :class:`FileIndex` of the shards at a located ``root``: from the manifest, else from
    the tar headers (cached, keyed by the shards' names, sizes and mtimes or ETags)."""
    names = _listing(root)
    if MANIFEST in names:
        try:
            return _from_manifest(root, _read_text_json(root, MANIFEST))
        except (KeyError, ValueError, TypeError) as exc:
            raise DataError(f"unreadable {MANIFEST} at {root}: {exc}; write the shards again") from exc
    shards = {n: d for n, d in sorted(names.items()) if n.endswith(".tar")}
    key = {"format": INDEX_FORMAT, "root": str(root if is_url(root) else Path(root).resolve()), "shards": shards}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]
    cached = Path(cache_dir) / "index" / f"shards-{digest}.json"
    if cached.is_file():
        try:
            return _from_manifest(root, json.loads(cached.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable shard index %s (%s); reading the tar headers again", cached, exc)
    body = _scan(root, list(shards))
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=cached.parent, suffix=".tmp", delete=False) as f:
            json.dump(body, f)
        os.replace(f.name, cached)
    except OSError as exc:
        log.warning("could not write shard index %s (%s); the next run reads the tar headers again", cached, exc)
    return _from_manifest(root, body)


def _from_manifest(root: Path | str, body: dict) -> FileIndex:
    if body["format"] != MANIFEST_FORMAT:
        raise ValueError(f"format {body['format']}, this version reads {MANIFEST_FORMAT}")
    splits = {}
    for split in SPLITS:
        part = body["splits"].get(split, {"shards": [], "samples": {}})
        samples = part["samples"]
        shard_names = [s["name"] for s in part["shards"]]
        entries = [
            _entry(shard_names[s], offset, size, name)
            for s, offset, size, name in zip(samples.get("shard", []), samples.get("offset", []),
                                             samples.get("size", []), samples.get("name", []))
        ]  # fmt: skip
        labels = samples.get("cls") or [-1] * len(entries)
        splits[split] = (entries, torch.tensor(labels, dtype=torch.int64))
    if not splits["train"][0]:
        raise DataError(f"the shards at {root} hold no training samples (train-*.tar, or shards of another name)")
    return FileIndex(root, list(body["classes"]), *splits["train"], *splits["test"], reader=ShardReader(root))


def _scan(root: Path | str, shards: list[str]) -> dict:
    """A manifest for shards not written here, from their tar headers: samples grouped by key
    (the member name up to the first dot of its base name, as WebDataset does), the image member
    read by range, ``.cls`` read for labels. ``test-*.tar`` are the test split, the rest train."""
    splits = {split: {"shards": [], "samples": {"shard": [], "offset": [], "size": [], "name": [], "cls": []}}
              for split in SPLITS}  # fmt: skip
    labelled = True
    for shard in shards:
        split = "test" if shard.startswith("test-") else "train"
        part = splits[split]
        members = _tar_members(root, shard)
        part["shards"].append({"name": shard, "samples": len(members)})
        for key, (image, label) in members.items():
            if image is None:
                raise DataError(
                    f"sample {key} in {root}/{shard} has no image member ({', '.join(imagefolder.IMAGE_EXTENSIONS)})"
                )
            labelled &= label is not None
            part["samples"]["shard"].append(len(part["shards"]) - 1)
            for field, value in zip(("name", "offset", "size"), image):
                part["samples"][field].append(value)
            part["samples"]["cls"].append(-1 if label is None else label)
    classes = []
    if labelled and splits["test"]["shards"]:
        count = 1 + max(max(p["samples"]["cls"], default=-1) for p in splits.values())
        classes = [str(c) for c in range(count)]
    else:
        for part in splits.values():
            part["samples"]["cls"] = [-1] * len(part["samples"]["cls"])
    return {"format": MANIFEST_FORMAT, "classes": classes, "splits": splits}


def _tar_members(root: Path | str, shard: str) -> dict[str, tuple[tuple[str, int, int] | None, int | None]]:
    """Key -> ((image member name, offset, size) or None, class or None) of one shard, in order."""
    opened = fsspec.open(str(root / shard) if isinstance(root, Path) else f"{root}/{shard}", "rb")
    samples: dict[str, list] = {}
    try:
        with opened as f, tarfile.open(fileobj=f, mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                folder, base = posixpath.split(member.name)
                stem, _, ext = base.partition(".")
                sample = samples.setdefault(posixpath.join(folder, stem), [None, None])
                if ("." + ext.lower()) in imagefolder.IMAGE_EXTENSIONS and sample[0] is None:
                    sample[0] = (member.name, member.offset_data, member.size)
                elif ext == "cls":
                    sample[1] = int(tar.extractfile(member).read().decode().strip())
    except (tarfile.TarError, OSError, ValueError) as exc:
        raise DataError(f"cannot read shard {root}/{shard}: {exc}") from exc
    return {key: tuple(value) for key, value in samples.items()}


def write_shards(source: Path, dest: str, *, max_size: int, max_count: int, cache_dir: Path) -> dict:
    """Shards of the image folder ``source`` at ``dest`` (a folder or an fsspec URL), each split's
    samples in the folder index's order; returns the manifest written last as ``dest/`` :data:`MANIFEST`.

    Each shard is written to a local temporary file, then moved (a folder) or uploaded (a URL) under
    its final name once complete."""
    import webdataset

    from cssl_core.data import stream

    located = imagefolder.locate(Path(source))
    index = stream.build_index(located, Path(cache_dir))
    remote = is_url(dest)
    if any(n.endswith(".tar") or n == MANIFEST for n in _listing(dest.rstrip("/") if remote else Path(dest))):
        raise ConfigError(f"{dest} already holds shards; write to an empty folder or prefix")
    if remote:
        fs, base = _filesystem(dest)
    else:
        Path(dest).mkdir(parents=True, exist_ok=True)
    labelled = bool(index.classes)
    manifest = {"format": MANIFEST_FORMAT, "classes": index.classes, "splits": {}}
    with tempfile.TemporaryDirectory(prefix="cssl-shards-", dir=None if remote else dest) as tmp:
        for split, paths, labels in (
            ("train", index.paths, index.labels),
            ("test", index.test_paths, index.test_labels),
        ):
            if not paths:
                continue
            part = {"shards": [], "samples": {"shard": [], "offset": [], "size": [], "name": []}}
            if labelled:
                part["samples"]["cls"] = []

            def finished(local: str, split=split, part=part) -> None:
                name = os.path.basename(local)
                with tarfile.open(local) as tar:
                    members = [m for m in tar if m.isfile() and not m.name.endswith(".cls")]
                for m in members:
                    part["samples"]["shard"].append(len(part["shards"]))
                    for field, value in zip(("name", "offset", "size"), (m.name, m.offset_data, m.size)):
                        part["samples"][field].append(value)
                part["shards"].append({"name": name, "samples": len(members), "bytes": os.path.getsize(local)})
                if remote:
                    fs.put_file(local, f"{base}/{name}")
                    os.unlink(local)
                else:
                    os.replace(local, Path(dest) / name)
                log.info("wrote %s (%d samples)", name, len(members))

            writer = webdataset.ShardWriter(
                os.path.join(tmp, f"{split}-%06d.tar"), maxcount=max_count, maxsize=max_size, post=finished, verbose=0
            )
            with writer:
                for i, (path, label) in enumerate(zip(paths, labels.tolist())):
                    ext = os.path.splitext(path)[1].lstrip(".").lower()
                    sample = {"__key__": f"{i:08d}", ext: index.reader(path)}
                    if labelled:
                        sample["cls"] = str(label).encode()
                        part["samples"]["cls"].append(label)
                    writer.write(sample)
            manifest["splits"][split] = part
    body = json.dumps(manifest)
    if remote:
        fs.pipe_file(f"{base}/{MANIFEST}", body.encode())
    else:
        target = Path(dest) / MANIFEST
        target.with_suffix(".tmp").write_text(body)
        os.replace(target.with_suffix(".tmp"), target)
    return manifest
