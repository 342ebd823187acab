"""cssl_core: self-supervised pretraining in plain PyTorch.

Runs in one process on a CPU or a GPU. Nothing here imports web, database or queue code;
the service (``api/``, ``worker/``) and the CLI (``cli/``) call into this package.
"""

__version__ = "0.1.0"
