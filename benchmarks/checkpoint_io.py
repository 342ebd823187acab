"""Writing and reading a checkpoint of ResNet-50 size, to the local disk and to an S3 endpoint,
the way a run does (``torch.save`` to a local file, then one upload; a download, then
``torch.load``).

    .venv/bin/python -m benchmarks.checkpoint_io                       # moto's S3 server in this process
    AWS_ENDPOINT_URL=... .venv/bin/python -m benchmarks.checkpoint_io --bucket my-bucket   # a real one

The checkpoint holds a ResNet-50's weights and an SGD momentum buffer per parameter (as the
training loop's does; about 200 MB). Moto keeps objects in memory, so its figures are those of
the HTTP path on this machine, not of a remote store's network.
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
import torchvision

from cssl_core.train.checkpoint import load_checkpoint, save_checkpoint
from store.artifacts import ArtifactStore, download


def resnet50_checkpoint() -> dict:
    model = torchvision.models.resnet50()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    optimizer.step()  # the momentum buffers exist from the first step on
    config = {"method": "simclr", "backbone": "resnet50"}  # what load_checkpoint checks is there
    return {
        "config": config,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": 1,
        "steps_per_epoch": 1,
        "image_size": 224,
    }


def timed(action) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def start_moto() -> tuple[object, str]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://{host}:{port}",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    )
    return server, f"http://{host}:{port}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bucket", help="an existing bucket (default: moto's server, started here)")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many")
    args = parser.parse_args()
    server = None
    bucket = args.bucket
    if bucket is None:
        import fsspec

        server, _ = start_moto()
        bucket = "checkpoint-bench"
        fsspec.filesystem("s3", skip_instance_cache=True).mkdir(bucket)
    state = resnet50_checkpoint()
    with tempfile.TemporaryDirectory() as folder:
        local = Path(folder) / "run" / "checkpoints" / "last.pt"
        store = ArtifactStore(f"s3://{bucket}/bench-run", Path(folder) / "run")
        figures = {
            "save_local_s": min(timed(lambda: save_checkpoint(state, local)) for _ in range(args.repeats)),
            "load_local_s": min(timed(lambda: load_checkpoint(local)) for _ in range(args.repeats)),
            "upload_s": min(timed(lambda: store.publish(local)) for _ in range(args.repeats)),
        }
        fetched = Path(folder) / "fetched.pt"
        figures["download_s"] = min(
            timed(lambda: download(store.url("checkpoints/last.pt"), fetched)) for _ in range(args.repeats)
        )
        figures["load_downloaded_s"] = min(timed(lambda: load_checkpoint(fetched)) for _ in range(args.repeats))
        size = local.stat().st_size
    print(json.dumps({"bytes": size, **{k: round(v, 3) for k, v in figures.items()}}))
    if server is not None:
        server.stop()


if __name__ == "__main__":
    main()
