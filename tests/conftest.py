import os
from pathlib import Path

import pytest


def shared_data_dir() -> Path:
    """``$CSSL_SHARED_DATA``, else ``../shared/data`` next to the repository."""
    env = os.environ.get("CSSL_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def cifar10_archive() -> Path:
    """The real CIFAR-10 JPEG archive (60,000 images); skips when it is not there."""
    folder = shared_data_dir()
    path = folder if folder.is_file() else folder / "cifar10-jpeg.tar.gz"
    if not path.is_file():
        pytest.skip(f"CIFAR-10 not found at ../shared/data ({path}); set CSSL_SHARED_DATA to its folder")
    return path


@pytest.fixture(scope="session")
def cifar10_dataset(cifar10_archive, tmp_path_factory):
    """CIFAR-10 loaded once per test session (about 10 s of JPEG decoding) into a temporary cache."""
    from cssl_core.data import load_dataset

    return load_dataset("cifar10", cifar10_archive, cache_dir=tmp_path_factory.mktemp("cssl-cache"))
