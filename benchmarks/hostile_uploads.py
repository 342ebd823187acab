"""How long the unpacking of hostile upload archives runs before it is refused, on this machine's
disk: a small archive of a great many empty folders (refused at ``CSSL_MAX_UPLOAD_FOLDERS``), and
a gzip stream that goes on after the tar's end marker (refused once the inflated bytes pass four
times ``CSSL_MAX_UPLOAD_BYTES``). Calls ``store.data_roots.unpack_upload`` directly, in a
temporary folder: no database, no API. Prints one JSON line per case.

    .venv/bin/python -m benchmarks.hostile_uploads --folders 200000 --trailing-mib 1024 --max-upload-mib 64
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
import tempfile
import time
import zlib

from store import data_roots
from store.settings import Settings


def empty_folders(count: int) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for i in range(count):
            info = tarfile.TarInfo(f"d{i}")
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        info = tarfile.TarInfo("d0/x.png")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    return out.getvalue()


def trailing_zeros(mib: int) -> bytes:
    """A one-file tar, then ``mib`` MiB of zeros, in one gzip stream."""
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w") as archive:
        info = tarfile.TarInfo("train/a/0.png")
        info.size = 1
        archive.addfile(info, io.BytesIO(b"x"))
    deflate = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: a gzip header and trailer
    parts = [deflate.compress(tar.getvalue())]
    zeros = bytes(1 << 20)
    parts += [deflate.compress(zeros) for _ in range(mib)]
    return b"".join(parts) + deflate.flush()


def refuse(settings: Settings, name: str, body: bytes) -> dict:
    archive = settings.uploads_folder / data_roots.INCOMING / f"{name}.tar.gz"
    archive.parent.mkdir(parents=True, exist_ok=True)
    archive.write_bytes(body)
    limit = settings.max_upload_bytes * data_roots.UNPACKED_RATIO
    started = time.perf_counter()
    try:
        data_roots.unpack_upload(settings, name, archive, max_bytes=limit, refusal=data_roots.too_large_unpacked(limit))
        outcome = "accepted"
    except (data_roots.ArchiveTooLarge, data_roots.BadArchive) as exc:
        outcome = str(exc).split(";")[0]
    return {
        "case": name,
        "archive_bytes": len(body),
        "seconds": round(time.perf_counter() - started, 2),
        "outcome": outcome,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folders", type=int, default=200_000)
    parser.add_argument("--trailing-mib", type=int, default=1024)
    parser.add_argument("--max-upload-mib", type=int, default=64, help="CSSL_MAX_UPLOAD_BYTES, in MiB")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as state:
        settings = Settings.from_env(
            {
                "CSSL_STATE_DIR": state,
                "CSSL_MAX_UPLOAD_BYTES": str(args.max_upload_mib << 20),
                "CSSL_UPLOAD_MIN_FREE_BYTES": "0",
            }
        )
        print(
            json.dumps(
                {
                    **refuse(settings, "folders", empty_folders(args.folders)),
                    "max_upload_folders": settings.max_upload_folders,
                }
            )
        )
        print(
            json.dumps(
                {
                    **refuse(settings, "trailing", trailing_zeros(args.trailing_mib)),
                    "inflated_limit_bytes": settings.max_upload_bytes * data_roots.UNPACKED_RATIO,
                }
            )
        )


if __name__ == "__main__":
    main()
