"""moto's S3 server (``moto[server]``, a dev extra) in a thread of the test process: a real S3
HTTP endpoint on a free port, with the standard AWS variables pointing at it while it runs, so
that the code under test and the processes a test starts reach it as they would reach S3."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

import pytest


@contextmanager
def s3_server(bucket: str) -> Iterator[tuple[dict[str, str], object]]:
    """``(env, fs)``: the AWS variables (also set in ``os.environ`` until the end) and an s3fs
    file system without listing caches, on a server holding the empty ``bucket``."""
    server_module = pytest.importorskip(
        "moto.server", reason="needs moto's S3 server: pip install 'moto[server]' (the dev extra)"
    )
    pytest.importorskip("s3fs", reason="needs s3fs (a runtime dependency)")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per S3 request otherwise
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        import fsspec

        fs = fsspec.filesystem("s3", use_listings_cache=False, skip_instance_cache=True)
        fs.mkdir(bucket)
        yield env, fs
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        server.stop()
