"""Reading WebDataset shards by byte range: images/s read and decoded by one loader process,
from local shards, from the source folder, and from shards in an S3 bucket (moto's server).

    .venv/bin/python -m benchmarks.shard_read --images 3000 --reads 1000 --s3-reads 300

Writes ``--images`` generated 500x375 JPEGs (:func:`benchmarks.stream_memory.write_jpegs`) into a
temporary folder and shards them (``cssl data shard``, ``--shard-count`` samples per shard) to a folder and to
a bucket on a ``moto.server.ThreadedMotoServer`` in this process (S3 over HTTP on localhost; its
server threads share the CPU with the reader, as a remote store's would not). Then, as a loader
process does for a streamed batch, reads ``--reads`` samples in a seeded random order (the bytes of
one sample through the index's reader) and decodes each at its own resolution
(:func:`cssl_core.data.stream.decode_bytes`); the bytes alone are timed too. One JSON line per source.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.stream_memory import write_jpegs
from cli.main import main as cssl
from cssl_core.data import shards, stream


def measure(name: str, index, reads: int) -> dict:
    order = torch.randperm(len(index), generator=torch.Generator().manual_seed(0))[:reads].tolist()
    entries = [index.paths[i] for i in order]
    index.reader(entries[0])  # open the file or the connection
    start = time.perf_counter()
    data = [index.reader(entry) for entry in entries]
    read_seconds = time.perf_counter() - start
    start = time.perf_counter()
    for blob, entry in zip(data, entries):
        stream.decode_bytes(blob, entry)
    decode_seconds = time.perf_counter() - start
    total = read_seconds + decode_seconds
    return {
        "source": name,
        "reads": len(entries),
        "mean_bytes": round(sum(map(len, data)) / len(data)),
        "read_images_per_second": round(len(entries) / read_seconds, 1),
        "read_and_decode_images_per_second": round(len(entries) / total, 1),
    }


def start_s3() -> object:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update({
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
    })  # fmt: skip
    import fsspec

    fsspec.filesystem("s3", skip_instance_cache=True).mkdir("bench")
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--reads", type=int, default=1000, help="samples read from the folder and local shards")
    parser.add_argument("--s3-reads", type=int, default=300, help="samples read from the bucket (0: skip it)")
    parser.add_argument("--shard-count", type=int, default=1000, help="samples per shard")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as in a DataLoader worker
    with tempfile.TemporaryDirectory(prefix="cssl-shard-bench-") as tmp:
        folder, local = Path(tmp) / "images", Path(tmp) / "shards"
        cache = Path(tmp) / "cache"
        os.environ["CSSL_CACHE_DIR"] = str(cache)
        start = time.perf_counter()
        write_jpegs(folder, args.images)
        print(json.dumps({"generated": args.images, "seconds": round(time.perf_counter() - start, 1)}), flush=True)
        start = time.perf_counter()
        assert cssl(["data", "shard", str(folder), str(local), "--max-count", str(args.shard_count)]) == 0
        print(json.dumps({"sharded_locally_seconds": round(time.perf_counter() - start, 1)}), flush=True)
        print(json.dumps(measure("folder", stream.build_index(folder, cache), args.reads)), flush=True)
        print(json.dumps(measure("local shards", shards.build_index(local, cache), args.reads)), flush=True)
        if args.s3_reads:
            server = start_s3()
            try:
                start = time.perf_counter()
                assert (
                    cssl(["data", "shard", str(folder), "s3://bench/shards", "--max-count", str(args.shard_count)]) == 0
                )
                print(json.dumps({"sharded_to_s3_seconds": round(time.perf_counter() - start, 1)}), flush=True)
                index = shards.build_index("s3://bench/shards", cache)
                print(json.dumps(measure("shards on moto S3", index, args.s3_reads)), flush=True)
            finally:
                server.stop()


if __name__ == "__main__":
    main()
